//! The abuse loop for real, as root: a client namespace talks HTTPS to the
//! gateway in its own namespace with the XDP program attached. A client that
//! trips the WAF past the threshold cannot open a TCP connection any more
//! (dropped at XDP, counted as `drop_blocked`) while other clients and the
//! allowlisted address connect; the block lifts when its TTL ends, a second
//! offence gets a doubled TTL, and `gateway explain` shows the evidence.
//!
//! The trust rules: a forged-source flood blocks nobody (the flooder stays rate
//! limited in XDP); an IPv6 offender is dropped by its rate-limit prefix; a
//! client behind a trusted proxy is refused at L7 while the proxy and its
//! other clients are served; an untrusted client's forwarding headers charge
//! nobody else.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway::{
    config::{AbuseSection, Config, LimitConfig, LimitKey, RouteConfig, XdpSection},
    xdp::RateLimit,
};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, render},
    gateway::{Daemon, Gateway},
    http::{Client, json},
    net::{GATEWAY_V4, GATEWAY_V6, NetNs, Topology, ip, udp_from},
    require_root,
    upstream::Upstream,
};
use http::{Request, Response, StatusCode};
use socket2::{Domain, Protocol, Socket, Type};

const BAD: &str = "198.18.0.20";
const GOOD: &str = "198.18.0.21";
const ALLOWED: &str = "198.18.0.22";
const PORT: u16 = 8443;
/// A port nobody listens on: flood datagrams only have to cross XDP.
const DISCARD: u16 = 9;
const XSS: &str = "/search?q=%3Cscript%3Ealert(1)%3C/script%3E";

/// The gateway's HTTPS listener in `source`'s address family.
fn listen_for(source: &str) -> SocketAddr {
    let gateway = if source.contains(':') {
        GATEWAY_V6
    } else {
        GATEWAY_V4
    };
    SocketAddr::new(gateway.parse().expect("address"), PORT)
}

fn listen() -> SocketAddr {
    listen_for(GATEWAY_V4)
}

/// Whether a TCP handshake from `source` to the gateway completes in `timeout`.
fn connects(ns: &NetNs, source: &str, timeout: Duration) -> bool {
    let dest = listen_for(source);
    let source: IpAddr = source.parse().expect("address");
    ns.run(move || {
        let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
            .expect("TCP socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|err| panic!("binding {source}: {err}"));
        socket.connect_timeout(&dest.into(), timeout).is_ok()
    })
}

/// `GET path` with `headers`.
fn get(path: &str, headers: &[(&str, &str)]) -> Request<Bytes> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Bytes::new()).expect("request")
}

/// Sends `requests` in order over one keep-alive HTTPS client from `source`
/// (the namespace's first address when `None`), in a thread inside the
/// namespace so the client's sockets belong to it.
fn send_from(
    ns: &NetNs,
    ca_pem: String,
    source: Option<&str>,
    requests: Vec<Request<Bytes>>,
) -> Vec<Response<Bytes>> {
    let local: Option<IpAddr> = source.map(|s| s.parse().expect("address"));
    let dest = listen_for(source.unwrap_or(GATEWAY_V4));
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut builder = Client::builder(&ca_pem, EDGE_NAME);
            if let Some(local) = local {
                builder = builder.local_address(local);
            }
            let client = builder.build();
            let mut responses = Vec::new();
            for (i, request) in requests.into_iter().enumerate() {
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.send(dest, request))
                        .await
                        .unwrap_or_else(|_| panic!("request {i} from {local:?} timed out"))
                        .unwrap_or_else(|err| panic!("request {i} from {local:?}: {err}"));
                responses.push(response);
            }
            responses
        })
    })
}

/// Each response's status and error code (`None` for a fleet answer).
fn outcomes(responses: &[Response<Bytes>]) -> Vec<(u16, Option<String>)> {
    responses
        .iter()
        .map(|response| {
            let code = (response.status() != StatusCode::OK)
                .then(|| json(response)["error"].as_str().map(str::to_owned))
                .flatten();
            (response.status().as_u16(), code)
        })
        .collect()
}

/// `count` datagrams from `source` to the gateway, `interval` apart; how long
/// it took. The client namespace holds `source`, so for the kernel a datagram
/// from it is exactly what a host forging that source sends.
fn flood(ns: &NetNs, source: &str, count: u32, interval: Duration) -> Duration {
    let dest = SocketAddr::new(listen_for(source).ip(), DISCARD);
    let socket = udp_from(ns, source, dest);
    let start = Instant::now();
    for i in 0..count {
        if let Some(wait) = (start + interval * i).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // ICMP port unreachable answers make some sends fail; the packet left.
        let _ = socket.send(&[0x5a; 100]);
    }
    start.elapsed()
}

/// The daemon's JSON log lines that satisfy `pick`.
fn log_lines(daemon: &Daemon, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    daemon
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line| pick(line))
        .collect()
}

/// How many rate events the daemon logged for `source`.
fn rate_events(daemon: &Daemon, source: &str) -> usize {
    log_lines(daemon, |line| {
        line["event"] == "rate_limit_exceeded" && line["source"] == source
    })
    .len()
}

/// Waits until the admin endpoint's `/readyz` says 200 (the upstream passed a
/// health check: on a busy machine the first one can time out).
fn wait_until_ready(ns: &NetNs, admin: SocketAddr) {
    let ready = ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let status = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))
                .and_then(|mut stream| {
                    use std::io::{Read as _, Write as _};
                    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                    stream.write_all(
                        b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut text = String::new();
                    stream.read_to_string(&mut text)?;
                    Ok(text)
                });
            if status.is_ok_and(|text| text.starts_with("HTTP/1.1 200")) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    });
    assert!(ready, "the gateway did not become ready within 15 s");
}

/// Whether the blocklist holds an entry covering exactly `cidr`.
fn on_blocklist(gateway: &Gateway, cidr: &str) -> bool {
    let entries = gateway.json(&["blocklist", "list"]);
    entries
        .as_array()
        .expect("entries")
        .iter()
        .any(|entry| entry["cidr"] == cidr)
}

/// `n` WAF-tripping requests from the client namespace's first address, each
/// answered 403.
fn trip_waf(ns: &NetNs, ca_pem: String, n: usize) {
    send_n(ns, ca_pem, n, XSS, |_| StatusCode::FORBIDDEN);
}

/// `n` requests for `path` from the client namespace's first address,
/// the i-th answered `expected(i)`.
fn send_n(ns: &NetNs, ca_pem: String, n: usize, path: &str, expected: fn(usize) -> StatusCode) {
    let responses = send_from(ns, ca_pem, None, (0..n).map(|_| get(path, &[])).collect());
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response.status(), expected(i), "request {i}");
    }
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
        let stamp = line["timestamp"].as_str().expect("timestamp");
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
        .find(|line| line["http.response.status_code"] == 403)
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
        Self::build(sources, |config| route(&mut config.routes[0]))
    }

    /// The gateway listens on both families; `configure` changes the rest.
    fn build(sources: &[&str], configure: impl FnOnce(&mut Config)) -> Self {
        require_root();
        let topology = Topology::new(sources);
        let fleet = Fleet::new(0);
        let server = fleet.fleet_ca.issue_server(&[FLEET_NAME]);
        let upstream = Upstream::builder("up-0", &server, fleet.fleet_ca.cert_pem())
            .netns(&topology.gateway)
            .start();
        let mut config = fleet.config();
        config.listeners[0].address = listen();
        let mut v6 = config.listeners[0].clone();
        v6.name = "public6".to_owned();
        v6.address = listen_for(GATEWAY_V6);
        config.listeners.push(v6);
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
        configure(&mut config);
        let daemon = gateway.spawn_daemon(&render(&config));
        topology.wait_until_settled();
        wait_until_ready(&topology.gateway, fleet.admin);
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

    /// Asserts that one `GET /` from `source` is served by the fleet.
    fn served(&self, source: &str) {
        let responses = send_from(
            &self.topology.client,
            self.ca(),
            Some(source),
            vec![get("/", &[])],
        );
        assert_eq!(outcomes(&responses), [(200, None)], "{source} is served");
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
    // The kernel entry goes in before the provenance is written (durably):
    // the audit line follows the write.
    daemon.wait_for_log("\"offence\":2", Duration::from_secs(3));
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
        route.limits = vec![per_client(2)];
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

/// An L7 limit of `requests` an hour per client address.
fn per_client(requests: u32) -> LimitConfig {
    LimitConfig {
        name: "per-client".to_owned(),
        key: LimitKey::Client,
        requests,
        per: Duration::from_secs(3600),
        burst: None,
    }
}

/// XDP rate limits low enough for a test's flood: 200 packets/s, bursts of 20.
fn rate_limited(config: &mut Config) {
    config.xdp.rate_limit = RateLimit {
        pps: 200,
        burst: 20,
        ..RateLimit::default()
    };
}

const INNOCENT: &str = "198.18.0.11";
const FLOODER: &str = "198.18.0.12";

#[test]
fn a_forged_source_flood_blocks_nobody_and_the_flooder_stays_rate_limited() {
    // Threshold 10 and xdp_rate_exceeded weighing 5: two rate events blocked
    // the innocent address before the trust rule.
    let rig = Rig::build(&[INNOCENT, FLOODER], rate_limited);
    let Rig {
        topology,
        gateway,
        daemon,
        ..
    } = &rig;
    // The innocent client is a real one: it completed handshakes recently.
    rig.served(INNOCENT);
    let (rate_dropped_before, _) = gateway.stat("drop_rate_limit");

    // 3 s at 2,000 packets/s with the innocent's source address, then the
    // flooder's own address.
    let forged = flood(
        &topology.client,
        INNOCENT,
        6_000,
        Duration::from_micros(500),
    );
    let own = flood(&topology.client, FLOODER, 3_000, Duration::from_micros(500));
    thread::sleep(Duration::from_millis(1_500));
    let forged_events = rate_events(daemon, INNOCENT);
    let flooder_events = rate_events(daemon, FLOODER);
    println!(
        "forged flood {forged:?}: {forged_events} rate events for {INNOCENT}; \
         own flood {own:?}: {flooder_events} for {FLOODER}"
    );
    assert!(
        forged_events >= 2,
        "the forged flood produced the events that used to block: {forged_events}"
    );

    // The innocent client keeps being served over HTTPS.
    let started = Instant::now();
    let after = send_from(
        &topology.client,
        rig.ca(),
        Some(INNOCENT),
        (0..5).map(|_| get("/", &[])).collect(),
    );
    println!(
        "after the flood: {INNOCENT} served 5 of 5 in {:?}",
        started.elapsed()
    );
    assert!(outcomes(&after).iter().all(|o| *o == (200, None)));
    assert!(
        !on_blocklist(gateway, INNOCENT),
        "the forged address is not blocked"
    );
    let stderr = gateway.fails(&["explain", INNOCENT]);
    assert!(stderr.contains("never blocked"), "{stderr}");
    assert!(
        log_lines(daemon, |line| line["event"] == "abuse_block").is_empty(),
        "packet-level evidence alone blocked someone:\n{}",
        daemon.log()
    );

    // The real flooder is still rate limited in XDP, the kernel's job.
    let (rate_dropped, _) = gateway.stat("drop_rate_limit");
    let show = gateway.json(&["ratelimit", "show", "--top", "10"]);
    let flooder = show["sources"]
        .as_array()
        .and_then(|sources| sources.iter().find(|s| s["source"] == FLOODER))
        .unwrap_or_else(|| panic!("{FLOODER} in ratelimit show: {show}"));
    let dropped = flooder["dropped"].as_u64().expect("dropped");
    println!(
        "{FLOODER}: {} passed, {dropped} dropped by the XDP rate limit; drop_rate_limit +{}",
        flooder["passed"],
        rate_dropped - rate_dropped_before
    );
    assert!(
        dropped > 2_000,
        "most of 3,000 flood packets dropped: {flooder}"
    );
    assert!(flooder_events >= 1);
}

const FLOOD6: &str = "2001:2::10";
const NEIGHBOUR6: &str = "2001:2::11";
const OTHER6: &str = "2001:2:0:1::10";

#[test]
fn an_ipv6_offender_is_dropped_by_its_prefix_while_another_prefix_is_served() {
    let rig = Rig::build(&[FLOOD6, NEIGHBOUR6, OTHER6], rate_limited);
    let Rig {
        topology,
        gateway,
        daemon,
        ..
    } = &rig;
    // The gateway reaches the second /64 on the same link.
    ip(&[
        "-n",
        &topology.gateway.name,
        "-6",
        "route",
        "add",
        "2001:2:0:1::/64",
        "dev",
        &topology.gw_iface,
    ]);
    rig.served(FLOOD6);

    // A flood (rate event for the /64-masked key), then one WAF block: the
    // packet evidence corroborates the L7 evidence (5 + 5 = threshold 10).
    flood(&topology.client, FLOOD6, 2_000, Duration::from_micros(500));
    daemon.wait_for_log("\"source\":\"2001:2::\"", Duration::from_secs(5));
    let (cidr_drops_before, _) = gateway.stat("drop_cidr");
    let tripped = send_from(
        &topology.client,
        rig.ca(),
        Some(FLOOD6),
        vec![get(XSS, &[])],
    );
    assert_eq!(outcomes(&tripped), [(403, Some("waf_blocked".to_owned()))]);
    let blocked_after = until_connects(&topology.client, FLOOD6, false, Duration::from_secs(2));
    println!("403 → {FLOOD6} refused at XDP within {blocked_after:?}");

    assert!(
        !connects(&topology.client, NEIGHBOUR6, Duration::from_millis(500)),
        "another address of the same /64 is dropped too"
    );
    assert!(
        connects(&topology.client, OTHER6, Duration::from_secs(2)),
        "another /64 connects"
    );
    rig.served(OTHER6);
    let (cidr_drops, _) = gateway.stat("drop_cidr");
    println!("drop_cidr +{}", cidr_drops - cidr_drops_before);
    assert!(cidr_drops > cidr_drops_before, "dropped by the CIDR entry");
    assert!(on_blocklist(gateway, "2001:2::/64"));

    for inside in [FLOOD6, "2001:2::abcd"] {
        let explained = gateway.json(&["explain", inside]);
        let block = &explained["blocks"][0];
        assert_eq!(block["cidr"], "2001:2::/64", "{explained}");
        let history = &block["history"][0];
        assert_eq!(history["signals"]["waf_block"], 1, "{explained}");
        assert!(
            history["signals"]["xdp_rate_exceeded"].as_u64() >= Some(1),
            "the rate event is shown as evidence: {explained}"
        );
        assert_eq!(history["kernel"], true);
        assert!(
            explained["kernel"]["entries"][0]["cidr"] == "2001:2::/64",
            "{explained}"
        );
    }
    let text = gateway.ok(&["explain", "2001:2::abcd"]);
    println!("{text}");
    assert!(text.contains("xdp_rate_exceeded="), "{text}");
    assert!(
        gateway
            .fails(&["explain", OTHER6])
            .contains("never blocked")
    );
}

const PROXY: &str = "198.18.0.30";
const BEHIND_BAD: &str = "198.18.1.50";
const BEHIND_GOOD: &str = "198.18.1.51";

#[test]
fn a_client_behind_a_trusted_proxy_is_refused_at_l7_while_the_proxy_and_others_are_served() {
    let rig = Rig::build(&[PROXY], |config| {
        config.proxy.trusted_proxies = vec![PROXY.parse().expect("cidr")];
    });
    let Rig {
        topology,
        gateway,
        daemon,
        ..
    } = &rig;
    // The test is the proxy: what the client wrote (.99) and what the proxy
    // appended (the address it saw).
    let chain = format!("198.18.1.99, {BEHIND_BAD}");
    let trips = send_from(
        &topology.client,
        rig.ca(),
        Some(PROXY),
        (0..2)
            .map(|_| get(XSS, &[("x-forwarded-for", &chain)]))
            .collect(),
    );
    assert!(
        outcomes(&trips).iter().all(|o| o.0 == 403),
        "{:?}",
        outcomes(&trips)
    );
    daemon.wait_for_log("\"event\":\"abuse_block\"", Duration::from_secs(3));

    let forwarded = format!("for={BEHIND_BAD};proto=https");
    let responses = send_from(
        &topology.client,
        rig.ca(),
        Some(PROXY),
        vec![
            get("/", &[("x-forwarded-for", BEHIND_BAD)]),
            // Refused before the WAF looks at it.
            get(XSS, &[("x-forwarded-for", BEHIND_BAD)]),
            get("/", &[("forwarded", &forwarded)]),
            get("/", &[("x-forwarded-for", BEHIND_GOOD)]),
            get("/", &[]),
        ],
    );
    let blocked = (403, Some("blocked".to_owned()));
    assert_eq!(
        outcomes(&responses),
        [
            blocked.clone(),
            blocked.clone(),
            blocked,
            (200, None),
            (200, None)
        ],
        "the blocked client refused, its neighbour behind the proxy and the proxy served"
    );
    assert!(responses[0].headers().contains_key("retry-after"));
    assert!(
        connects(&topology.client, PROXY, Duration::from_secs(2)),
        "the proxy is never dropped"
    );

    let refusals = log_lines(daemon, |line| line["error.type"] == "blocked");
    assert_eq!(refusals.len(), 3, "{}", daemon.log());
    let line = &refusals[0];
    assert_eq!(line["client.address"], BEHIND_BAD, "{line}");
    assert_eq!(line["network.peer.address"], PROXY, "{line}");
    assert!(
        line["error.message"]
            .as_str()
            .is_some_and(|e| e.contains("waf_block=2")),
        "the refusal is logged with its evidence: {line}"
    );
    let served = log_lines(daemon, |line| {
        line["http.response.status_code"] == 200 && line["client.address"] == BEHIND_GOOD
    });
    assert_eq!(served.len(), 1, "the other client is logged as itself");

    let explained = gateway.json(&["explain", BEHIND_BAD]);
    let history = &explained["blocks"][0]["history"][0];
    assert_eq!(history["signals"]["waf_block"], 2, "{explained}");
    assert_eq!(history["last"]["forwarded_by"], PROXY, "{explained}");
    let text = gateway.ok(&["explain", BEHIND_BAD]);
    println!("{text}");
    assert!(
        text.contains("enforced") && text.contains(&format!("via={PROXY}")),
        "{text}"
    );
    assert!(gateway.fails(&["explain", PROXY]).contains("never blocked"));
    assert!(
        gateway
            .fails(&["explain", "198.18.1.99"])
            .contains("never blocked")
    );
}

const ATTACKER: &str = "198.18.0.40";
const VICTIM: &str = "198.18.0.41";

#[test]
fn an_untrusted_clients_forwarding_headers_charge_nobody_else() {
    let rig = Rig::build(&[ATTACKER, VICTIM], |config| {
        config.proxy.trusted_proxies = vec![PROXY.parse().expect("cidr")];
        config.routes[0].limits = vec![per_client(3)];
    });
    let Rig {
        topology,
        gateway,
        daemon,
        ..
    } = &rig;
    let forwarded = format!("for={VICTIM}");
    let spoofed = [
        ("x-forwarded-for", VICTIM),
        ("forwarded", forwarded.as_str()),
        ("x-real-ip", VICTIM),
    ];
    // The attacker spends its own budget (3, then 429), not the victim's ...
    let spent = send_from(
        &topology.client,
        rig.ca(),
        Some(ATTACKER),
        (0..4).map(|_| get("/", &spoofed)).collect(),
    );
    assert_eq!(
        outcomes(&spent).iter().map(|o| o.0).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    let victim = send_from(
        &topology.client,
        rig.ca(),
        Some(VICTIM),
        (0..2).map(|_| get("/", &[])).collect(),
    );
    assert!(
        outcomes(&victim).iter().all(|o| *o == (200, None)),
        "the victim's budget is untouched: {:?}",
        outcomes(&victim)
    );
    // ... and its own misbehaviour blocks itself: 1 + 9 answers of 429 reach 10.
    let refused = send_from(
        &topology.client,
        rig.ca(),
        Some(ATTACKER),
        (0..9).map(|_| get(XSS, &spoofed)).collect(),
    );
    assert!(outcomes(&refused).iter().all(|o| o.0 == 429));
    until_connects(&topology.client, ATTACKER, false, Duration::from_secs(2));
    assert!(connects(&topology.client, VICTIM, Duration::from_secs(2)));
    rig.served(VICTIM);
    assert!(
        gateway
            .fails(&["explain", VICTIM])
            .contains("never blocked")
    );
    assert!(!on_blocklist(gateway, VICTIM));
    let explained = gateway.json(&["explain", ATTACKER]);
    let history = &explained["blocks"][0]["history"][0];
    assert_eq!(history["signals"]["rate_limited"], 10, "{explained}");
    assert!(history["last"].get("forwarded_by").is_none(), "{explained}");
    let attacker_lines = log_lines(daemon, |line| line["client.address"] == ATTACKER);
    assert_eq!(
        attacker_lines.len(),
        13,
        "every request logged as the attacker's"
    );
    assert!(
        log_lines(daemon, |line| line["client.address"] == VICTIM).len() == 3,
        "only the victim's own requests are logged as the victim's"
    );
}
