//! End to end, as root: a client namespace with several IPv4 and IPv6 sources talks
//! to TCP and UDP services in a gateway namespace whose veth has the real XDP program
//! attached by the real `gateway` binary, driven by CLI processes and the daemon.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, TCP_SYN},
    gateway::{Daemon, Gateway},
    net::{GATEWAY_V4, GATEWAY_V6, Topology, UdpCounter, start_tcp_echo, tcp_reachable, udp_from},
    raw::{SynReport, send_syns},
};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const GOOD_V4: &str = "198.18.0.10";
const BAD_V4: &str = "198.18.0.11";
const FLOOD_V4: &str = "198.18.0.12";
const POLITE_V4: &str = "198.18.0.13";
const GOOD_V6: &str = "2001:2::10";
const BAD_V6: &str = "2001:2::11";
const CLIENTS: [&str; 6] = [GOOD_V4, BAD_V4, FLOOD_V4, POLITE_V4, GOOD_V6, BAD_V6];
/// Bytes on the wire of one test datagram: Ethernet 14 + IPv4 20 + UDP 8 + payload.
const PAYLOAD: usize = 100;
const V4_FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

fn dest(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("valid"), port)
}

fn server_for(source: &str, port: u16) -> SocketAddr {
    if source.contains(':') {
        dest(GATEWAY_V6, port)
    } else {
        dest(GATEWAY_V4, port)
    }
}

/// A topology with services running and the program attached by `gateway xdp attach`.
struct Rig {
    topology: Topology,
    gateway: Gateway,
    udp: UdpCounter,
}

impl Rig {
    fn new() -> Self {
        let topology = Topology::new(&CLIENTS);
        start_tcp_echo(&topology.gateway, TCP_PORT);
        let udp = UdpCounter::start(&topology.gateway, UDP_PORT);
        let gateway = Gateway::new(&topology.gateway);
        Self {
            topology,
            gateway,
            udp,
        }
    }

    fn attach(&self) {
        self.gateway
            .ok(&["xdp", "attach", "--iface", &self.topology.gw_iface]);
        self.topology.wait_until_settled();
    }

    /// Starts `gateway run` with `config` and waits for the network to settle after
    /// the attach.
    fn spawn_daemon(&self, config: &str) -> Daemon {
        let daemon = self.gateway.spawn_daemon(config);
        self.topology.wait_until_settled();
        daemon
    }

    fn reachable(&self, source: &str) -> bool {
        tcp_reachable(
            &self.topology.client,
            source,
            server_for(source, TCP_PORT),
            Duration::from_millis(700),
        )
    }

    /// Sends `count` datagrams from `source`, `interval` apart.
    fn send_udp(&self, source: &str, count: u64, interval: Duration) -> Duration {
        let socket = udp_from(&self.topology.client, source, server_for(source, UDP_PORT));
        let payload = [0x5a; PAYLOAD];
        let start = Instant::now();
        for i in 0..count {
            let due = start + interval * u32::try_from(i).expect("small count");
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            socket.send(&payload).expect("sending UDP");
        }
        start.elapsed()
    }

    /// Waits until the server stops receiving (in-flight datagrams have landed).
    fn settle(&self) {
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn blocklisted_sources_cannot_connect_and_cli_changes_apply_at_once() {
    let rig = Rig::new();
    rig.attach();
    for source in CLIENTS {
        assert!(
            rig.reachable(source),
            "{source} should reach the TCP service before any block"
        );
    }
    rig.gateway
        .ok(&["blocklist", "add", BAD_V4, BAD_V6, "--reason", "scanner"]);
    assert!(
        !rig.reachable(BAD_V4),
        "a blocked IPv4 source must not connect"
    );
    assert!(
        !rig.reachable(BAD_V6),
        "a blocked IPv6 source must not connect"
    );
    assert!(
        rig.reachable(GOOD_V4) && rig.reachable(GOOD_V6),
        "other sources keep working"
    );

    rig.send_udp(BAD_V4, 20, Duration::ZERO);
    rig.send_udp(GOOD_V4, 20, Duration::ZERO);
    rig.settle();
    assert_eq!(
        rig.udp.count(BAD_V4),
        0,
        "no UDP from the blocked source arrives"
    );
    assert_eq!(
        rig.udp.count(GOOD_V4),
        20,
        "all UDP from the good source arrives"
    );

    let listed = rig.gateway.json(&["blocklist", "list"]);
    let entry = listed
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["cidr"] == BAD_V4))
        .unwrap_or_else(|| panic!("{BAD_V4} missing from {listed}"));
    assert_eq!(entry["reason"], "scanner");
    assert!(
        entry["hits"].as_u64().expect("hits") >= 20,
        "the block counts its drops: {entry}"
    );

    rig.gateway.ok(&["blocklist", "remove", BAD_V4]);
    assert!(
        rig.reachable(BAD_V4),
        "removing the block lets the source in at once"
    );
    assert!(!rig.reachable(BAD_V6), "the other block stays");

    rig.gateway.ok(&["blocklist", "add", "198.18.0.0/24"]);
    assert!(
        !rig.reachable(GOOD_V4),
        "a CIDR block covers the whole range"
    );
    assert!(rig.reachable(GOOD_V6), "and nothing outside it");
    rig.gateway.ok(&["allowlist", "add", GOOD_V4]);
    assert!(
        rig.reachable(GOOD_V4),
        "the allowlist wins over a CIDR block"
    );
    rig.gateway.ok(&["blocklist", "flush"]);
    assert!(rig.reachable(BAD_V6), "flush lifts every block");
}

/// The allowlist wins over CIDR blocks whatever the prefix lengths, taking a prefix
/// off a list hands its sources to the rules around it, and a rule's expiry hands
/// over to the live rules around it with no daemon running: through the CLI, with
/// real connections.
#[test]
fn nested_cidr_rules_keep_the_allowlist_first_through_the_cli() {
    let rig = Rig::new();
    rig.attach();
    rig.gateway
        .ok(&["blocklist", "add", "198.18.0.0/16", "2001:2::/48"]);
    assert!(!rig.reachable(GOOD_V4) && !rig.reachable(GOOD_V6));
    // An allow inside the block, and a block inside that allow.
    rig.gateway
        .ok(&["allowlist", "add", "198.18.0.0/24", "2001:2::/64"]);
    rig.gateway
        .ok(&["blocklist", "add", "198.18.0.8/30", "2001:2::/120"]);
    for source in CLIENTS {
        assert!(rig.reachable(source), "{source}: the allowlist wins");
    }
    // Off the allowlist: the blocks inside and around it drop again.
    rig.gateway
        .ok(&["allowlist", "remove", "198.18.0.0/24", "2001:2::/64"]);
    for source in CLIENTS {
        assert!(!rig.reachable(source), "{source}: blocked again");
    }
    rig.gateway.ok(&["blocklist", "remove", "198.18.0.0/16"]);
    assert!(!rig.reachable(GOOD_V4), "the /30 inside still drops");
    assert!(rig.reachable(POLITE_V4), "outside the /30 nothing drops");

    // A shorter allow that expires, around a longer permanent block: the block
    // takes over when the allow ends, before any sweep.
    rig.gateway
        .ok(&["allowlist", "add", "198.18.0.0/28", "--ttl", "2s"]);
    assert!(rig.reachable(GOOD_V4), "allowlisted for now");
    thread::sleep(Duration::from_millis(2500));
    assert!(!rig.reachable(GOOD_V4), "the block outlives the allow");
    assert!(rig.reachable(POLITE_V4));
}

/// A way of framing a raw SYN.
type Framing = fn(Frame) -> Frame;

/// Sources that only raw frames use (no socket, so no stack answers for them).
const RAW_V4: &str = "198.18.0.30";
const RAW_V6: &str = "2001:2::30";

impl Rig {
    /// Sends `count` TCP SYNs to the echo service from `source`, each from its own
    /// port and framed by `frame`, as raw frames out of the client veth.
    fn raw_syns(&self, source: &str, count: u16, frame: Framing) -> SynReport {
        // Every SYN gets a port never used before: the stack retransmits its SYN-ACKs
        // to earlier ones for a while, and they must not count as answers.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);
        let (gateway_mac, client_mac) = self.topology.macs();
        let src: IpAddr = source.parse().expect("valid");
        let syns = (0..count)
            .map(|_| {
                let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
                let syn = Frame::tcp(src, TCP_SYN)
                    .macs(gateway_mac, client_mac)
                    .src_port(port)
                    .payload(0);
                (port, frame(syn).build().bytes)
            })
            .collect();
        send_syns(
            &self.topology.client,
            &self.topology.client_iface,
            syns,
            Duration::from_millis(600),
        )
    }
}

/// The gateway's stack strips any number of priority tags (VLAN ID 0) and delivers
/// the packet inside; a blocked or CIDR-blocked source that wraps its SYNs in them
/// must still get no answer, IPv4 and IPv6.
#[test]
fn priority_tagged_syns_from_blocked_sources_get_no_answer() {
    let rig = Rig::new();
    rig.attach();
    rig.topology.neighbours_on_gateway(&[RAW_V4, RAW_V6]);
    let framings: [(&str, Framing); 4] = [
        ("untagged", |frame| frame),
        ("3 priority tags", |frame| {
            frame.priority_tags(ETH_P_8021Q, 3)
        }),
        ("802.1ad + 802.1Q priority tags", |frame| {
            frame
                .priority_tag(ETH_P_8021AD)
                .priority_tags(ETH_P_8021Q, 4)
        }),
        ("8 priority tags", |frame| {
            frame.priority_tags(ETH_P_8021AD, 8)
        }),
    ];
    for source in [RAW_V4, RAW_V6] {
        for (name, framing) in framings {
            assert_eq!(
                rig.raw_syns(source, 4, framing).answered,
                4,
                "{source}, {name}: before any block the stack answers every SYN"
            );
        }
    }
    rig.gateway
        .ok(&["blocklist", "add", RAW_V4, RAW_V6, "--reason", "tagged"]);
    for source in [RAW_V4, RAW_V6] {
        for (name, framing) in framings {
            assert_eq!(
                rig.raw_syns(source, 4, framing).answered,
                0,
                "{source}, {name}: a blocked source gets no answer"
            );
        }
    }
    rig.gateway.ok(&["blocklist", "flush"]);
    rig.gateway
        .ok(&["blocklist", "add", "198.18.0.16/28", "2001:2::30/124"]);
    for source in [RAW_V4, RAW_V6] {
        for (name, framing) in framings {
            assert_eq!(
                rig.raw_syns(source, 4, framing).answered,
                0,
                "{source}, {name}: a CIDR-blocked source gets no answer"
            );
        }
    }
}

/// Under a SYN limit of 1/s, SYNs behind priority tags or IPv6 extension headers
/// draw no more SYN-ACKs than plain ones: they are charged to the same bucket.
#[test]
fn syns_behind_tags_and_extension_headers_are_syn_rate_limited() {
    let rig = Rig::new();
    rig.attach();
    rig.topology.neighbours_on_gateway(&[RAW_V4, RAW_V6]);
    rig.gateway.ok(&[
        "ratelimit",
        "set",
        "--pps",
        "0",
        "--burst",
        "0",
        "--syn-pps",
        "1",
        "--syn-burst",
        "1",
    ]);
    let framings: [(&str, &str, Framing); 6] = [
        (RAW_V4, "3 priority tags", |frame| {
            frame.priority_tags(ETH_P_8021Q, 3)
        }),
        (RAW_V6, "3 priority tags", |frame| {
            frame.priority_tags(ETH_P_8021Q, 3)
        }),
        (RAW_V6, "Hop-by-Hop", |frame| frame.ext(Ext::HopByHop)),
        (RAW_V6, "Destination Options", |frame| {
            frame.ext(Ext::DestOpts)
        }),
        (RAW_V6, "Routing", |frame| frame.ext(Ext::Routing)),
        (RAW_V6, "atomic Fragment", |frame| {
            frame.ext(Ext::Fragment {
                offset: 0,
                more: false,
            })
        }),
    ];
    for (source, name, framing) in framings {
        // Each round starts with a fresh bucket.
        rig.gateway.ok(&["ratelimit", "flush"]);
        let report = rig.raw_syns(source, 10, framing);
        // One SYN of burst, plus one per second the sending took.
        let allowed = 1 + usize::try_from(report.sending.as_secs()).expect("small") + 1;
        assert!(
            report.answered <= allowed,
            "{source}, {name}: {} of 10 SYNs answered under a 1/s SYN limit",
            report.answered
        );
        assert!(
            report.answered >= 1,
            "{source}, {name}: the first SYN is within the burst and answered"
        );
    }
}

#[test]
fn stats_count_exactly_what_was_sent() {
    let rig = Rig::new();
    rig.attach();
    rig.gateway.ok(&["blocklist", "add", BAD_V4]);
    let (packets_before, bytes_before) = rig.gateway.stat("drop_blocked");
    rig.send_udp(BAD_V4, 50, Duration::ZERO);
    rig.settle();
    let (packets, bytes) = rig.gateway.stat("drop_blocked");
    assert_eq!(
        packets - packets_before,
        50,
        "one drop_blocked per datagram sent"
    );
    assert_eq!(
        bytes - bytes_before,
        50 * V4_FRAME,
        "bytes are counted from the Ethernet header"
    );
    assert_eq!(rig.udp.count(BAD_V4), 0);

    let status = rig.gateway.json(&["xdp", "status"]);
    assert_eq!(
        status["attachment"]["interface"],
        rig.topology.gw_iface.as_str()
    );
    let blocklist = status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == "BLOCKLIST4"))
        .expect("BLOCKLIST4 in status");
    assert_eq!(blocklist["entries"], 1);
    assert!(blocklist["capacity"].as_u64().expect("capacity") >= 100_000);
}

#[test]
fn xdp_status_shows_the_mode_the_kernel_runs() {
    let rig = Rig::new();
    // veth has a native XDP hook, so `auto` runs natively there.
    rig.attach();
    let status = rig.gateway.json(&["xdp", "status"]);
    assert_eq!(status["kernel_mode"], "native", "{status}");
    assert_eq!(status["attachment"]["mode"], "auto", "{status}");
    let text = rig.gateway.ok(&["xdp", "status"]);
    assert!(
        text.contains("mode         native (requested auto)"),
        "{text}"
    );
    rig.gateway.ok(&["xdp", "detach"]);
    // Asked for generic, the kernel says generic — read from the kernel, so the
    // same answer as `ip link` gives (`xdpgeneric`).
    rig.gateway.ok(&[
        "xdp",
        "attach",
        "--iface",
        &rig.topology.gw_iface,
        "--mode",
        "skb",
    ]);
    let status = rig.gateway.json(&["xdp", "status"]);
    assert_eq!(status["kernel_mode"], "generic", "{status}");
    let ip = std::process::Command::new("nsenter")
        .arg(format!("--net={}", rig.topology.gateway.path()))
        .args(["ip", "-d", "link", "show", "dev", &rig.topology.gw_iface])
        .output()
        .expect("ip link");
    assert!(
        String::from_utf8_lossy(&ip.stdout).contains("xdpgeneric"),
        "{}",
        String::from_utf8_lossy(&ip.stdout)
    );
}

#[test]
fn a_flooding_source_gets_about_its_limit_and_a_polite_one_loses_nothing() {
    let rig = Rig::new();
    let pps = 200;
    let burst = 20;
    let daemon = rig.spawn_daemon(&format!(
        "[xdp]\ninterface = \"{}\"\n[xdp.rate_limit]\npps = {pps}\nburst = {burst}\n",
        rig.topology.gw_iface
    ));
    let flood_count = 4_000; // ten times the limit for two seconds
    let polite_count = 200; // half the limit for two seconds
    let polite = {
        let socket = udp_from(
            &rig.topology.client,
            POLITE_V4,
            server_for(POLITE_V4, UDP_PORT),
        );
        thread::spawn(move || {
            let start = Instant::now();
            for i in 0..polite_count {
                let due = start + Duration::from_millis(10) * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                socket.send(&[0x5a; PAYLOAD]).expect("sending UDP");
            }
        })
    };
    let elapsed = rig.send_udp(FLOOD_V4, flood_count, Duration::from_micros(500));
    polite.join().expect("polite sender");
    rig.settle();

    let expected = burst as f64 + pps as f64 * elapsed.as_secs_f64();
    let got = rig.udp.count(FLOOD_V4) as f64;
    assert!(
        (got - expected).abs() <= 0.15 * expected,
        "the flooding source should get about {expected:.0} datagrams through in {elapsed:?}, got {got}"
    );
    assert_eq!(
        rig.udp.count(POLITE_V4),
        u64::from(polite_count),
        "the polite source loses nothing"
    );

    let show = rig.gateway.json(&["ratelimit", "show", "--top", "10"]);
    assert_eq!(show["limit"]["pps"], pps);
    let sources = show["sources"].as_array().expect("sources");
    assert_eq!(sources[0]["source"], FLOOD_V4, "sorted by drops: {show}");
    let passed = sources[0]["passed"].as_u64().expect("passed");
    let dropped = sources[0]["dropped"].as_u64().expect("dropped");
    assert_eq!(
        passed + dropped,
        flood_count,
        "every flood packet is accounted for"
    );
    assert_eq!(
        passed as f64, got,
        "what passed XDP is what the service received"
    );

    daemon.wait_for_log("rate_limit_exceeded", Duration::from_secs(5));
    let log = daemon.log();
    assert!(
        log.contains(FLOOD_V4),
        "the event names the flooding source:\n{log}"
    );
    assert!(
        !log.contains(POLITE_V4),
        "no event for the polite source:\n{log}"
    );
    daemon.stop();
}

#[test]
fn ttl_expiry_unblocks() {
    let rig = Rig::new();
    rig.attach();
    rig.gateway.ok(&["blocklist", "add", BAD_V4, "--ttl", "2s"]);
    assert!(!rig.reachable(BAD_V4), "blocked while the TTL runs");
    thread::sleep(Duration::from_millis(2_300));
    assert!(
        rig.reachable(BAD_V4),
        "the block lifts when its TTL expires"
    );
    let listed = rig.gateway.json(&["blocklist", "list"]);
    assert_eq!(
        listed,
        serde_json::json!([]),
        "an expired block is not listed"
    );
}

#[test]
fn blocks_survive_daemon_restarts_and_reboots_without_a_gap() {
    let rig = Rig::new();
    let config = format!("[xdp]\ninterface = \"{}\"\n", rig.topology.gw_iface);
    let daemon = rig.spawn_daemon(&config);
    rig.gateway.ok(&[
        "blocklist",
        "add",
        BAD_V4,
        "--ttl",
        "10m",
        "--reason",
        "abuse",
    ]);
    let expires_at = |gateway: &Gateway| {
        gateway.json(&["blocklist", "list"])[0]["expires_at"]
            .as_u64()
            .expect("the block has an expiry")
    };
    let first_expiry = expires_at(&rig.gateway);

    // A sender keeps hammering from the blocked source across the restart.
    let socket = udp_from(&rig.topology.client, BAD_V4, server_for(BAD_V4, UDP_PORT));
    let sender = thread::spawn(move || {
        let mut sent = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            socket.send(&[0x5a; PAYLOAD]).expect("sending UDP");
            sent += 1;
            thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    thread::sleep(Duration::from_millis(500));
    daemon.stop();
    let (dropped_while_down, _) = rig.gateway.stat("drop_blocked");
    thread::sleep(Duration::from_millis(500));
    assert!(
        rig.gateway.stat("drop_blocked").0 > dropped_while_down,
        "XDP keeps dropping with no daemon"
    );
    let daemon = rig.spawn_daemon(&config);
    assert!(
        daemon.log().contains("adopted the pinned XDP program"),
        "{}",
        daemon.log()
    );
    let sent = sender.join().expect("sender");
    rig.settle();
    assert_eq!(
        rig.udp.count(BAD_V4),
        0,
        "not one packet got through during the restart"
    );
    assert_eq!(
        rig.gateway.stat("drop_blocked").0,
        sent,
        "every packet was dropped and counted"
    );
    assert_eq!(
        expires_at(&rig.gateway),
        first_expiry,
        "the block kept its expiry"
    );
    let second = rig.gateway.output(&[
        "run",
        "--config",
        rig.gateway
            .state_dir
            .path()
            .join("gateway.toml")
            .to_str()
            .expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains("another gateway daemon (pid"),
        "a second daemon on the same state must refuse to start: {err}"
    );
    daemon.stop();

    // A reboot wipes bpffs: detaching removes the maps the same way. The next start
    // restores the block from the state file with its remaining TTL.
    rig.gateway.ok(&["xdp", "detach"]);
    assert!(
        rig.reachable(BAD_V4),
        "with nothing attached the source gets through"
    );
    let daemon = rig.spawn_daemon(&config);
    assert!(
        daemon.log().contains("attached the XDP program"),
        "{}",
        daemon.log()
    );
    assert!(!rig.reachable(BAD_V4), "the restored block drops again");
    let restored_expiry = expires_at(&rig.gateway);
    assert_eq!(
        restored_expiry, first_expiry,
        "the restored block keeps its remaining TTL"
    );
    daemon.stop();
}

#[test]
fn a_recreated_interface_is_protected_again() {
    let rig = Rig::new();
    let config = format!("[xdp]\ninterface = \"{}\"\n", rig.topology.gw_iface);
    let daemon = rig.spawn_daemon(&config);
    rig.gateway.ok(&["blocklist", "add", BAD_V4]);
    daemon.stop();
    // The pinned link now points at an interface that no longer exists.
    rig.topology.recreate_link();
    rig.topology.wait_until_settled();
    assert!(
        rig.reachable(BAD_V4),
        "the new interface starts unprotected"
    );
    let daemon = rig.spawn_daemon(&config);
    assert!(daemon.log().contains("attaching again"), "{}", daemon.log());
    assert!(
        !rig.reachable(BAD_V4),
        "the block, kept in the maps, drops again"
    );
    assert!(rig.reachable(GOOD_V4), "and only the blocked source");
    daemon.stop();
}

#[test]
fn bad_input_and_bad_state_get_clear_errors() {
    let rig = Rig::new();
    let err = rig.gateway.fails(&["blocklist", "list"]);
    assert!(
        err.contains("nothing attached") && err.contains("gateway xdp attach"),
        "{err}"
    );
    let err = rig
        .gateway
        .fails(&["xdp", "attach", "--iface", "no-such-if0"]);
    assert!(
        err.contains("no network interface named 'no-such-if0'"),
        "{err}"
    );
    rig.attach();
    let err = rig.gateway.fails(&["blocklist", "add", "198.18.0.300"]);
    assert!(
        err.contains("'198.18.0.300' is not an IP address or CIDR"),
        "{err}"
    );
    let err = rig.gateway.fails(&["blocklist", "add", "198.18.0.7/24"]);
    assert!(err.contains("did you mean 198.18.0.0/24"), "{err}");
    let err = rig
        .gateway
        .fails(&["blocklist", "add", GOOD_V4, "--ttl", "soon"]);
    assert!(err.contains("'soon' is not a duration"), "{err}");
    // Removing what is not there succeeds, like adding what is: idempotent,
    // with a note (and `not_found` in JSON).
    let output = rig.gateway.output(&["blocklist", "remove", "198.18.0.99"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(
        err.contains("not on the blocklist (nothing to remove): 198.18.0.99"),
        "{err}"
    );
    let removed = rig.gateway.json(&["blocklist", "remove", "198.18.0.99"]);
    assert_eq!(removed["not_found"][0], "198.18.0.99", "{removed}");
    let err = rig
        .gateway
        .fails(&["ratelimit", "set", "--pps", "100", "--burst", "0"]);
    assert!(err.contains("burst: must be at least 1"), "{err}");
    let err = rig
        .gateway
        .fails(&["xdp", "attach", "--iface", &rig.topology.gw_iface]);
    assert!(err.contains("already attached"), "{err}");

    // Another program (a second gateway with its own pin dir) cannot take the interface.
    let other = Gateway::new(&rig.topology.gateway);
    let err = other.fails(&["xdp", "attach", "--iface", &rig.topology.gw_iface]);
    assert!(
        err.contains("already has another XDP program attached"),
        "{err}"
    );

    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(gateway_tests::gateway::binary())
        .args(["stats"])
        .env("GATEWAY_PIN_DIR", &rig.gateway.pin_dir)
        .output()
        .expect("running setpriv (util-linux)");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(77) && err.contains("needs CAP_BPF"),
        "{err}"
    );

    let bad_config = rig.gateway.state_dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        "[xdp]\ninterface = \"\"\n[xdp.rate_limit]\npps = 5\n",
    )
    .expect("write");
    let output = rig
        .gateway
        .output(&["run", "--config", bad_config.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "bad config exits 64: {err}");
    assert!(
        err.contains("xdp.interface") && err.contains("xdp.rate_limit.burst"),
        "{err}"
    );
}
