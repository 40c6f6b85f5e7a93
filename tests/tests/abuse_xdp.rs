//! The abuse loop for real, as root: a client namespace talks HTTPS to the
//! gateway in its own namespace with the XDP program attached. A client that
//! trips the WAF past the threshold cannot open a TCP connection any more
//! (dropped at XDP, counted as `drop_blocked`) while other clients and the
//! allowlisted address connect; the block lifts when its TTL ends, a second
//! offence gets a doubled TTL, and `gateway explain` shows the evidence.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway::config::{AbuseSection, LimitConfig, LimitKey, RouteConfig, XdpSection};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, render},
    gateway::{Daemon, Gateway},
    http::Client,
    net::{GATEWAY_V4, NetNs, Topology},
    require_root,
    upstream::Upstream,
};
use http::{Request, StatusCode};
use socket2::{Domain, Protocol, Socket, Type};

const BAD: &str = "198.18.0.20";
const GOOD: &str = "198.18.0.21";
const ALLOWED: &str = "198.18.0.22";
const PORT: u16 = 8443;

fn listen() -> SocketAddr {
    SocketAddr::new(GATEWAY_V4.parse().expect("address"), PORT)
}

/// Whether a TCP handshake from `source` to the gateway completes in `timeout`.
fn connects(ns: &NetNs, source: &str, timeout: Duration) -> bool {
    let source: IpAddr = source.parse().expect("address");
    ns.run(move || {
        let socket =
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("TCP socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|err| panic!("binding {source}: {err}"));
        socket.connect_timeout(&listen().into(), timeout).is_ok()
    })
}

/// `n` WAF-tripping requests from the client namespace's first address, each
/// answered 403.
fn trip_waf(ns: &NetNs, ca_pem: String, n: usize) {
    send_n(
        ns,
        ca_pem,
        n,
        "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
        |_| StatusCode::FORBIDDEN,
    );
}

/// `n` requests for `path` from the client namespace's first address,
/// the i-th answered `expected(i)`; run in a thread inside the namespace so
/// the client's sockets belong to it.
fn send_n(
    ns: &NetNs,
    ca_pem: String,
    n: usize,
    path: &'static str,
    expected: fn(usize) -> StatusCode,
) {
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let client = Client::builder(&ca_pem, EDGE_NAME).build();
            for i in 0..n {
                let request = Request::get(path).body(Bytes::new()).expect("request");
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.send(listen(), request))
                        .await
                        .unwrap_or_else(|_| panic!("request {i} timed out"))
                        .unwrap_or_else(|err| panic!("request {i}: {err}"));
                assert_eq!(response.status(), expected(i), "request {i}");
            }
        });
    });
}

/// Polls until `connects` returns `want`, at most `limit`; returns how long it took.
fn until_connects(ns: &NetNs, source: &str, want: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if connects(ns, source, Duration::from_millis(300)) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{source}: connecting did not become {want} within {limit:?}"
        );
    }
}

/// When the daemon logged the last 403 before the block and the block's
/// audit event (the block is in the kernel map before that line is written).
fn loop_timestamps(log: &str) -> (Duration, Duration) {
    let at = |line: &serde_json::Value| {
        // Access lines carry `timestamp` (tracing), audit lines `time`.
        let stamp = line["timestamp"]
            .as_str()
            .or_else(|| line["time"].as_str())
            .expect("timestamp");
        let time = stamp
            .split('T')
            .nth(1)
            .expect("RFC 3339")
            .trim_end_matches('Z');
        let seconds: f64 = time
            .split(':')
            .map(|part| part.parse::<f64>().expect("number"))
            .fold(0.0, |acc, part| acc * 60.0 + part);
        Duration::from_secs_f64(seconds)
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let block = lines
        .iter()
        .position(|line| line["event"] == "abuse_block")
        .expect("an abuse_block event");
    let request = lines[..block]
        .iter()
        .rev()
        .find(|line| line["status"] == 403)
        .expect("a 403 before the block");
    (at(request), at(&lines[block]))
}

/// The gateway (XDP attached, abuse loop on with a 3 s first block) in front
/// of one upstream, all in the gateway namespace; `route` shapes route `all`.
/// Fields drop in order: the daemon first, the namespaces last.
struct Rig {
    daemon: Daemon,
    gateway: Gateway,
    _upstream: Upstream,
    fleet: Fleet,
    topology: Topology,
}

impl Rig {
    fn new(route: impl FnOnce(&mut RouteConfig)) -> Self {
        Self::with_sources(&[BAD, GOOD, ALLOWED], route)
    }

    /// The first of `sources` is the address the HTTP client's connections get.
    fn with_sources(sources: &[&str], route: impl FnOnce(&mut RouteConfig)) -> Self {
        require_root();
        let topology = Topology::new(sources);
        let fleet = Fleet::new(0);
        let server = fleet.fleet_ca.issue_server(&[FLEET_NAME]);
        let upstream = Upstream::builder("up-0", &server, fleet.fleet_ca.cert_pem())
            .netns(&topology.gateway)
            .start();
        let mut config = fleet.config();
        config.listeners[0].address = listen();
        config.upstreams.get_mut("fleet").expect("pool").endpoints =
            vec![upstream.addr().to_string()];
        config.xdp = XdpSection {
            enabled: true,
            interface: topology.gw_iface.clone(),
            allowlist: vec![ALLOWED.parse().expect("cidr")],
            ..XdpSection::default()
        };
        // The bare TCP probes below never finish a TLS handshake; they are not
        // what this test is about.
        let weights = gateway::config::abuse::Weights {
            tls_handshake_failure: 0,
            ..Default::default()
        };
        config.abuse = AbuseSection {
            enabled: true,
            weights,
            threshold: 10,
            block_ttl: Duration::from_secs(3),
            max_block_ttl: Duration::from_secs(60),
            ..AbuseSection::default()
        };
        let gateway = Gateway::new(&topology.gateway);
        route(&mut config.routes[0]);
        let daemon = gateway.spawn_daemon(&render(&config));
        topology.wait_until_settled();
        Self {
            daemon,
            gateway,
            _upstream: upstream,
            fleet,
            topology,
        }
    }

    fn ca(&self) -> String {
        self.fleet.edge_ca.cert_pem().to_owned()
    }
}

#[test]
fn waf_offender_is_dropped_at_xdp_and_explained() {
    let rig = Rig::new(|_| {});
    let Rig {
        topology,
        gateway,
        daemon,
        ..
    } = &rig;
    for source in [BAD, GOOD, ALLOWED] {
        assert!(
            connects(&topology.client, source, Duration::from_secs(2)),
            "{source} connects before any offence"
        );
    }

    // Two WAF blocks (weight 5) reach the threshold of 10.
    let (dropped_before, _) = gateway.stat("drop_blocked");
    trip_waf(&topology.client, rig.ca(), 2);
    // Within a second of the threshold-crossing 403 the offender's SYNs are
    // dropped (a connection attempt made in the first milliseconds may still
    // race the daemon).
    let blocked_after = until_connects(&topology.client, BAD, false, Duration::from_secs(1));
    println!("threshold-crossing response → a connection attempt failed within {blocked_after:?}");
    let (request_at, block_at) = loop_timestamps(&daemon.log());
    println!(
        "daemon log: threshold-crossing request logged → block applied and audited: {:?}",
        block_at.saturating_sub(request_at)
    );
    assert!(
        gateway.stat("drop_blocked").0 > dropped_before,
        "the SYNs were dropped as blocked"
    );
    assert!(
        connects(&topology.client, GOOD, Duration::from_secs(2)),
        "another client is unaffected"
    );
    assert!(
        connects(&topology.client, ALLOWED, Duration::from_secs(2)),
        "the allowlisted address is unaffected"
    );

    let explained = gateway.json(&["explain", BAD]);
    let block = &explained["blocks"][0]["history"][0];
    assert_eq!(block["first"]["rule"], "xss-001", "{explained}");
    assert_eq!(block["signals"]["waf_block"], 2, "{explained}");
    assert_eq!(block["offence"], 1);
    assert_eq!(block["ttl_secs"], 3);
    assert_eq!(block["kernel"], true);
    let hits = explained["kernel"]["entries"][0]["hits"]
        .as_u64()
        .unwrap_or_default();
    assert!(hits > 0, "the kernel counted the dropped SYNs: {explained}");
    let text = gateway.ok(&["explain", BAD]);
    println!("{text}");
    assert!(
        text.contains("rule=xss-001") && text.contains("dropped"),
        "{text}"
    );

    // The TTL ends, the address is back; a second offence blocks for twice as long.
    until_connects(&topology.client, BAD, true, Duration::from_secs(6));
    daemon.wait_for_log("abuse_unblock", Duration::from_secs(3));
    trip_waf(&topology.client, rig.ca(), 2);
    until_connects(&topology.client, BAD, false, Duration::from_secs(3));
    let explained = gateway.json(&["explain", BAD]);
    let second = &explained["blocks"][0]["history"][1];
    assert_eq!(second["offence"], 2, "{explained}");
    assert_eq!(second["ttl_secs"], 6, "{explained}");
    assert_eq!(
        explained["blocks"][0]["history"][0]["unblock_reason"],
        "expired"
    );
}

#[test]
fn rate_limited_client_is_dropped_at_xdp() {
    let rig = Rig::new(|route| {
        route.limits = vec![LimitConfig {
            name: "per-client".to_owned(),
            key: LimitKey::Client,
            requests: 2,
            per: Duration::from_secs(3600),
            burst: None,
        }];
    });
    let Rig {
        topology, gateway, ..
    } = &rig;
    // 2 pass, then 10 answers of 429 (weight 1 each) reach the threshold of 10.
    send_n(&topology.client, rig.ca(), 12, "/", |i| {
        if i < 2 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        }
    });
    // The client that kept hitting the limit is dropped within a second.
    until_connects(&topology.client, BAD, false, Duration::from_secs(1));
    assert!(
        connects(&topology.client, GOOD, Duration::from_secs(2)),
        "another client is unaffected"
    );
    let explained = gateway.json(&["explain", BAD]);
    let block = &explained["blocks"][0]["history"][0];
    assert_eq!(block["signals"]["rate_limited"], 10, "{explained}");
    assert_eq!(block["last"]["code"], "rate_limited", "{explained}");
    assert_eq!(block["kernel"], true);
}

#[test]
fn allowlisted_address_is_never_blocked() {
    // ALLOWED first: the HTTP client's connections come from it.
    let rig = Rig::with_sources(&[ALLOWED, BAD, GOOD], |_| {});
    let Rig {
        topology, gateway, ..
    } = &rig;
    trip_waf(&topology.client, rig.ca(), 10);
    assert!(
        connects(&topology.client, ALLOWED, Duration::from_secs(2)),
        "ten WAF blocks from an allowlisted address block nothing"
    );
    let stderr = gateway.fails(&["explain", ALLOWED]);
    assert!(stderr.contains("never blocked"), "{stderr}");
}
