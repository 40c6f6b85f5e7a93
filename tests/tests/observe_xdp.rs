//! Operations with the kernel plane, as root: the daemon attaches the real XDP
//! program to a veth in its own namespace, a client namespace sends from a
//! blocked source, and the admin endpoint (on the gateway namespace's
//! loopback) must show exactly what the per-CPU counters say; CLI map changes
//! land in the audit log with the user id.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use gateway_tests::{
    gateway::Gateway,
    net::{GATEWAY_V4, NetNs, Topology, UdpCounter, udp_from},
};

const UDP_PORT: u16 = 7101;
const BLOCKED: &str = "198.18.0.21";
const ADMIN: &str = "127.0.0.1:9090";

/// `GET path` on the admin listener inside `ns`: (status, body).
fn admin_get(ns: &NetNs, path: &'static str) -> (u16, String) {
    ns.run(move || {
        let admin: SocketAddr = ADMIN.parse().expect("admin address");
        let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
            .expect("connecting to the admin listener in the gateway namespace");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("sending the admin request");
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .expect("reading the admin response");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status code");
        (status, body.to_owned())
    })
}

/// The value of `name{…label="value"…}` in a Prometheus text body.
fn sample(body: &str, name: &str, label: &str) -> Option<f64> {
    body.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn metrics_show_the_xdp_counters_and_cli_changes_are_audited() {
    gateway_tests::require_root();
    let topology = Topology::new(&[BLOCKED]);
    let udp = UdpCounter::start(&topology.gateway, UDP_PORT);
    let gateway = Gateway::new(&topology.gateway);
    let daemon = gateway.spawn_daemon(&format!("[xdp]\ninterface = \"{}\"\n", topology.gw_iface));
    topology.wait_until_settled();
    assert_eq!(
        admin_get(&topology.gateway, "/readyz").0,
        200,
        "XDP attached: ready"
    );

    gateway.ok(&["blocklist", "add", BLOCKED, "--reason", "test"]);
    let audit = std::fs::read_to_string(gateway.state_dir.path().join("audit.log"))
        .expect("the CLI wrote its audit log");
    let line: serde_json::Value = serde_json::from_str(
        audit
            .lines()
            .find(|l| l.contains("list_add"))
            .unwrap_or_else(|| panic!("no list_add in {audit}")),
    )
    .expect("audit lines are JSON");
    assert_eq!(line["list"], "blocklist", "{line}");
    assert_eq!(line["entries"], BLOCKED, "{line}");
    assert_eq!(line["uid"], 0, "{line}");
    assert!(line["timestamp"].is_string(), "{line}");

    let socket = udp_from(
        &topology.client,
        BLOCKED,
        SocketAddr::new(GATEWAY_V4.parse().expect("ip"), UDP_PORT),
    );
    const SENT: u64 = 50;
    for _ in 0..SENT {
        socket.send(&[0x5a; 100]).expect("sending UDP");
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(udp.count(BLOCKED), 0, "the blocked source got through");

    let (status, body) = admin_get(&topology.gateway, "/metrics");
    assert_eq!(status, 200, "{body}");
    let dropped = sample(
        &body,
        "gateway_xdp_packets_total",
        "reason=\"drop_blocked\"",
    );
    assert_eq!(dropped, Some(SENT as f64), "{body}");
    assert_eq!(
        dropped,
        Some(gateway.stat("drop_blocked").0 as f64),
        "/metrics and `gateway stats` agree"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("gateway_xdp_packets_total{") && l.contains("verdict=\"drop\"")),
        "{body}"
    );
    assert_eq!(
        sample(&body, "gateway_xdp_map_entries", "map=\"BLOCKLIST4\""),
        Some(1.0),
        "{body}"
    );

    let (status, top) = admin_get(&topology.gateway, "/xdp/top");
    assert_eq!(status, 200, "{top}");
    let top: serde_json::Value = serde_json::from_str(&top).expect("/xdp/top is JSON");
    assert_eq!(top["blocks"][0]["cidr"], BLOCKED, "{top}");
    assert_eq!(top["sources"][0]["source"], BLOCKED, "{top}");
    assert_eq!(top["sources"][0]["verdict"], "blocked", "{top}");
    assert_eq!(top["sources"][0]["dropped"], SENT, "{top}");
    daemon.stop();
}
