use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    tracker::{Observation, PRUNE_EVERY, Proven, Tracker},
    *,
};

fn config() -> AbuseSection {
    AbuseSection {
        enabled: true,
        window: Duration::from_secs(10),
        threshold: 10,
        block_ttl: Duration::from_secs(60),
        max_block_ttl: Duration::from_secs(200),
        ..AbuseSection::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// One L7 signal of `client` (keyed as the loop keys it, IPv6 by /64).
fn record(
    tracker: &mut Tracker,
    config: &AbuseSection,
    client: IpAddr,
    weight: u32,
    evidence: Evidence,
    now: Instant,
) -> Option<BlockRequest> {
    let observation = Observation {
        key: key_of(client, 64),
        host: client,
        weight,
        packet: false,
        evidence,
    };
    tracker.record(config, &[], observation, now)
}

fn waf(rule: &str) -> Evidence {
    Evidence {
        rule: Some(rule.to_owned()),
        route: Some("api".to_owned()),
        ..Evidence::new(Signal::WafBlock)
    }
}

#[test]
fn threshold_blocks_with_provenance() {
    let config = config();
    let mut tracker = Tracker::default();
    let now = Instant::now();
    let client = ip("198.18.0.7");
    assert!(record(&mut tracker, &config, client, 5, waf("sqli-001"), now).is_none());
    let block = record(
        &mut tracker,
        &config,
        client,
        5,
        waf("xss-001"),
        now + Duration::from_secs(1),
    )
    .expect("second WAF block reaches the threshold");
    assert_eq!(block.cidr, Cidr::host(client));
    assert_eq!(block.ttl, Duration::from_secs(60));
    let provenance = &block.provenance;
    assert_eq!(provenance.offence, 1);
    assert_eq!(provenance.score, 10);
    assert_eq!(provenance.signals.get("waf_block"), Some(&2));
    assert_eq!(provenance.first.rule.as_deref(), Some("sqli-001"));
    assert_eq!(provenance.last.rule.as_deref(), Some("xss-001"));
}

#[test]
fn old_signals_leave_the_window() {
    let config = config();
    let mut tracker = Tracker::default();
    let now = Instant::now();
    let client = ip("198.18.0.7");
    for second in 0..30 {
        // 5 every 10 s never adds up to 10 within one 10 s window.
        let at = now + Duration::from_secs(second * 10);
        assert!(
            record(&mut tracker, &config, client, 5, waf("r"), at).is_none(),
            "second {second}"
        );
    }
}

#[test]
fn repeat_offenders_get_doubling_capped_ttls() {
    let config = config();
    let mut tracker = Tracker::default();
    let client = ip("2001:2::7");
    let mut now = Instant::now();
    let mut ttls = Vec::new();
    for _ in 0..4 {
        let block =
            record(&mut tracker, &config, client, 10, waf("r"), now).expect("each burst blocks");
        // While blocked, more signals neither block again nor escalate.
        assert!(
            record(
                &mut tracker,
                &config,
                client,
                10,
                waf("r"),
                now + Duration::from_secs(1)
            )
            .is_none()
        );
        ttls.push(block.ttl.as_secs());
        now += block.ttl + Duration::from_secs(1);
    }
    assert_eq!(ttls, [60, 120, 200, 200]);
}

#[test]
fn escalation_forgets_after_offence_memory() {
    let config = AbuseSection {
        offence_memory: Duration::from_secs(100),
        ..config()
    };
    let mut tracker = Tracker::default();
    let client = ip("198.18.0.9");
    let now = Instant::now();
    record(&mut tracker, &config, client, 10, waf("r"), now).expect("block");
    let later = now + Duration::from_secs(1000);
    let block = record(&mut tracker, &config, client, 10, waf("r"), later).expect("block");
    assert_eq!(block.provenance.offence, 1);
    assert_eq!(block.ttl, Duration::from_secs(60));
}

#[test]
fn many_offenders_of_one_prefix_block_the_prefix() {
    let config = AbuseSection {
        aggregate_after: 3,
        ..config()
    };
    let mut tracker = Tracker::default();
    let now = Instant::now();
    let first = record(&mut tracker, &config, ip("198.18.5.1"), 10, waf("r"), now).expect("block");
    assert_eq!(first.cidr.to_string(), "198.18.5.1");
    record(&mut tracker, &config, ip("198.18.5.2"), 10, waf("r"), now).expect("block");
    let third = record(&mut tracker, &config, ip("198.18.5.3"), 10, waf("r"), now).expect("block");
    assert_eq!(third.cidr.to_string(), "198.18.5.0/24");
    assert_eq!(
        third
            .provenance
            .aggregated_from
            .map(|c| c.to_string())
            .as_deref(),
        Some("198.18.5.3")
    );
    let v6 = record(&mut tracker, &config, ip("2001:2::1"), 10, waf("r"), now).expect("block");
    assert_eq!(
        v6.cidr.to_string(),
        "2001:2::/64",
        "an IPv6 block covers its rate-limit prefix; another prefix is not aggregated"
    );
    assert_eq!(v6.provenance.aggregated_from, None);
}

fn abuse(extra: &str) -> (Arc<Abuse>, mpsc::UnboundedReceiver<BlockRequest>) {
    let config: Config = toml::from_str(&format!(
        "[xdp]\nenabled = false\nallowlist = [\"198.18.9.0/24\"]\n[proxy]\ntrusted_proxies = [\"198.18.8.1\"]\n\
         [abuse]\nenabled = true\nthreshold = 4\n{extra}"
    ))
    .expect("config");
    Abuse::new(&config)
}

#[test]
fn allowlisted_trusted_and_exempt_addresses_are_never_blocked() {
    let (abuse, mut blocks) = abuse("exempt = [\"2001:2::/48\"]\n");
    for client in ["198.18.9.4", "198.18.8.1", "2001:2::5", "::ffff:198.18.9.4"] {
        for _ in 0..10 {
            abuse.record(
                ip(client),
                Signal::WafBlock,
                Evidence::new(Signal::WafBlock),
            );
        }
    }
    assert!(blocks.try_recv().is_err(), "no block for exempt addresses");
    for _ in 0..2 {
        abuse.record(
            ip("198.18.0.1"),
            Signal::AuthFailure,
            Evidence::new(Signal::AuthFailure),
        );
    }
    let block = blocks
        .try_recv()
        .expect("two auth failures (weight 2) reach 4");
    assert_eq!(block.provenance.signals.get("auth_failure"), Some(&2));
}

#[test]
fn disabled_loop_and_zero_weights_record_nothing() {
    let (abuse, mut blocks) = abuse("weights.waf_block = 0\n");
    for _ in 0..10 {
        abuse.record(
            ip("198.18.0.1"),
            Signal::WafBlock,
            Evidence::new(Signal::WafBlock),
        );
    }
    assert!(blocks.try_recv().is_err());
    let config: Config = toml::from_str("[xdp]\nenabled = false\n").expect("config");
    abuse.reconfigure(&config);
    for _ in 0..10 {
        abuse.record(
            ip("198.18.0.1"),
            Signal::AuthFailure,
            Evidence::new(Signal::AuthFailure),
        );
    }
    assert!(blocks.try_recv().is_err(), "[abuse] is off by default");
}

#[test]
fn answer_codes_map_to_signals() {
    for (code, signal) in [
        ("invalid_token", Some(Signal::AuthFailure)),
        ("insufficient_scope", Some(Signal::AuthzFailure)),
        ("waf_blocked", Some(Signal::WafBlock)),
        ("rate_limited", Some(Signal::RateLimited)),
        ("quota_exceeded", Some(Signal::RateLimited)),
        ("headers_too_large", Some(Signal::Malformed)),
        ("schema_invalid", Some(Signal::Malformed)),
        ("auth_unavailable", None),
        ("no_route", None),
        ("upstream_timeout", None),
    ] {
        assert_eq!(Signal::from_code(code), signal, "{code}");
    }
}

#[test]
fn provenance_file_keeps_history_and_finds_covering_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = crate::state::StateDir::new(dir.path());
    let (abuse, mut blocks) = abuse("");
    for _ in 0..2 {
        abuse.record(
            ip("198.18.0.1"),
            Signal::AuthFailure,
            Evidence::new(Signal::AuthFailure),
        );
    }
    let block = blocks.try_recv().expect("block");
    let mut file = ProvenanceFile::load(&state).expect("missing file is empty");
    file.push(block.cidr, block.provenance.clone());
    file.save(&state).expect("save");
    let mut file = ProvenanceFile::load(&state).expect("load");
    assert_eq!(file.covering(ip("198.18.0.1")).len(), 1);
    assert!(file.covering(ip("198.18.0.2")).is_empty());
    assert!(file.end(&block.cidr, 5, "expired").is_some());
    assert!(file.end(&block.cidr, 6, "expired").is_none(), "ends once");

    // A restart remembers the offence: the next block escalates.
    let (abuse, mut blocks) = self::abuse("");
    abuse.restore(&file);
    for _ in 0..2 {
        abuse.record(
            ip("198.18.0.1"),
            Signal::AuthFailure,
            Evidence::new(Signal::AuthFailure),
        );
    }
    assert_eq!(blocks.try_recv().expect("block").provenance.offence, 2);
}

fn abuse_with(config: &str) -> (Arc<Abuse>, mpsc::UnboundedReceiver<BlockRequest>) {
    Abuse::new(&toml::from_str(config).expect("config"))
}

fn xdp_event(abuse: &Abuse, key_addr: &str) {
    abuse.record(
        ip(key_addr),
        Signal::XdpRateExceeded,
        Evidence {
            code: Some("xdp_packets_rate_exceeded".to_owned()),
            ..Evidence::new(Signal::XdpRateExceeded)
        },
    );
}

fn auth_failure(abuse: &Abuse, client: &str) {
    abuse.record(
        ip(client),
        Signal::AuthFailure,
        Evidence::new(Signal::AuthFailure),
    );
}

#[test]
fn a_forged_source_flood_blocks_nobody() {
    // Threshold 4, xdp_rate_exceeded weighs 5: one event used to block.
    let (abuse, mut blocks) = abuse("");
    for _ in 0..100 {
        xdp_event(&abuse, "198.18.0.11");
    }
    assert!(blocks.try_recv().is_err(), "no handshake, no evidence");
    // The innocent address completed handshakes (it is a real client): the
    // forged events still cannot block it on their own.
    abuse.connected(ip("198.18.0.11"));
    for _ in 0..100 {
        xdp_event(&abuse, "198.18.0.11");
    }
    assert!(
        blocks.try_recv().is_err(),
        "packet-level signals never block alone"
    );
}

#[test]
fn packet_signals_corroborate_l7_evidence_of_a_proven_source() {
    let (abuse, mut blocks) = abuse("");
    // Unproven: the rate event is not counted, one auth failure (2) is not 4.
    xdp_event(&abuse, "198.18.0.12");
    auth_failure(&abuse, "198.18.0.12");
    assert!(blocks.try_recv().is_err());

    abuse.connected(ip("198.18.0.13"));
    xdp_event(&abuse, "198.18.0.13");
    xdp_event(&abuse, "198.18.0.13");
    auth_failure(&abuse, "198.18.0.13");
    let block = blocks
        .try_recv()
        .expect("2 of L7 evidence plus at most as much packet evidence reach 4");
    assert_eq!(block.cidr.to_string(), "198.18.0.13");
    assert_eq!(
        block.provenance.score, 4,
        "packet weight capped at the L7 weight"
    );
    assert_eq!(block.provenance.signals.get("xdp_rate_exceeded"), Some(&2));
    assert_eq!(block.provenance.signals.get("auth_failure"), Some(&1));
}

#[test]
fn trusting_packet_sources_is_an_explicit_setting() {
    let (abuse, mut blocks) = abuse("trust_packet_sources = true\n");
    xdp_event(&abuse, "198.18.0.11");
    let block = blocks.try_recv().expect("the old, forgeable loop");
    assert_eq!(block.provenance.signals.get("xdp_rate_exceeded"), Some(&1));
    let default: Config = toml::from_str("").expect("config");
    assert!(!default.abuse.trust_packet_sources, "off by default");
}

#[test]
fn l7_and_xdp_agree_on_the_ipv6_key() {
    let host = ip("2001:2:0:0:1234:5678:9abc:def0");
    for prefix in [32, 48, 56, 64, 80, 127, 128] {
        // What the kernel puts in a rate event: the source masked by the
        // configured prefix.
        let masked: [u8; 16] = crate::addr::ip_to_addr(host)
            .iter()
            .zip(crate::addr::ipv6_mask(prefix))
            .map(|(a, m)| a & m)
            .collect::<Vec<_>>()
            .try_into()
            .expect("16 bytes");
        let from_kernel = crate::addr::addr_to_ip(masked);
        assert_eq!(
            key_of(host, prefix),
            key_of(from_kernel, prefix),
            "/{prefix}"
        );
        assert!(key_of(host, prefix).contains(host));
        assert_eq!(key_of(host, prefix).prefix_len(), prefix);
    }
    let v4 = ip("198.18.0.7");
    assert_eq!(key_of(v4, 64), Cidr::host(v4));
    assert_eq!(
        key_of(ip("::ffff:198.18.0.7"), 64),
        Cidr::host(v4),
        "dual-stack sockets"
    );
}

#[test]
fn ipv6_evidence_blocks_the_rate_limit_prefix() {
    let (abuse, mut blocks) =
        abuse_with("[xdp]\nenabled = false\n[abuse]\nenabled = true\nthreshold = 4\n");
    // The rate event carries the /64-masked key; the L7 signal the host.
    abuse.connected(ip("2001:2::10"));
    xdp_event(&abuse, "2001:2::");
    auth_failure(&abuse, "2001:2::10");
    let block = blocks.try_recv().expect("both count in one window");
    assert_eq!(block.cidr.to_string(), "2001:2::/64");
    assert_eq!(block.provenance.signals.get("xdp_rate_exceeded"), Some(&1));
    // Enforced for every host of the prefix, and no other.
    assert!(abuse.blocked(ip("2001:2::10")).is_some());
    assert!(abuse.blocked(ip("2001:2::ffff")).is_some());
    assert!(abuse.blocked(ip("2001:2:0:1::10")).is_none());

    // The prefix follows xdp.ipv6_rate_limit_prefix.
    let (abuse, mut blocks) = abuse_with(
        "[xdp]\nenabled = false\nipv6_rate_limit_prefix = 56\n[abuse]\nenabled = true\nthreshold = 4\n",
    );
    auth_failure(&abuse, "2001:2:0:12::10");
    auth_failure(&abuse, "2001:2:0:34::10");
    let block = blocks.try_recv().expect("two hosts of one /56");
    assert_eq!(block.cidr.to_string(), "2001:2::/56");
}

#[test]
fn a_prefix_block_never_covers_a_trusted_proxy() {
    let (abuse, mut blocks) = abuse_with(
        "[xdp]\nenabled = false\n[proxy]\ntrusted_proxies = [\"2001:2::1\"]\n\
         [abuse]\nenabled = true\nthreshold = 4\n",
    );
    auth_failure(&abuse, "2001:2::10");
    auth_failure(&abuse, "2001:2::10");
    let block = blocks.try_recv().expect("block");
    assert_eq!(
        block.cidr.to_string(),
        "2001:2::10",
        "the offender alone, not the /64 its proxy shares"
    );
    assert!(abuse.blocked(ip("2001:2::1")).is_none());
}

#[test]
fn blocks_are_enforceable_at_l7_until_lifted_or_expired() {
    let (abuse, mut blocks) = abuse("");
    auth_failure(&abuse, "198.18.0.40");
    auth_failure(&abuse, "198.18.0.40");
    let block = blocks.try_recv().expect("block");
    let active = abuse.blocked(ip("198.18.0.40")).expect("in force");
    assert_eq!(active.cidr, block.cidr);
    assert_eq!(active.signals, "auth_failure=2");
    assert!(abuse.blocked(ip("198.18.0.41")).is_none());
    abuse.lift(&block.cidr);
    assert!(abuse.blocked(ip("198.18.0.40")).is_none(), "removed");

    // A restart keeps an unexpired block in force.
    let mut file = ProvenanceFile::default();
    file.push(block.cidr, block.provenance);
    let (restarted, _) = self::abuse("");
    restarted.restore(&file);
    assert!(restarted.blocked(ip("198.18.0.40")).is_some());
    file.end(&block.cidr, clock::unix_now(), "expired");
    let (restarted, _) = self::abuse("");
    restarted.restore(&file);
    assert!(restarted.blocked(ip("198.18.0.40")).is_none(), "ended");
}

#[test]
fn the_record_of_proven_sources_is_bounded() {
    let mut proven = Proven::default();
    let now = Instant::now();
    let memory = Duration::from_secs(60);
    for i in 0..150_000u32 {
        proven.saw(Cidr::host(IpAddr::from(i.to_be_bytes())), now, memory);
    }
    assert!(proven.recently(&Cidr::host(IpAddr::from(0u32.to_be_bytes())), now, memory));
    assert!(
        !proven.recently(
            &Cidr::host(IpAddr::from(149_999u32.to_be_bytes())),
            now,
            memory
        ),
        "full of live entries: new ones are not recorded"
    );
    // Once the old ones age out, the next sweep makes room again.
    let later = now + memory;
    let fresh = Cidr::host(ip("198.18.0.1"));
    for _ in 0..PRUNE_EVERY {
        proven.saw(fresh, later, memory);
    }
    assert!(proven.recently(&fresh, later, memory));
    assert!(!proven.recently(&Cidr::host(IpAddr::from(0u32.to_be_bytes())), later, memory));
}

fn fleet_window(weights: &[(&str, &str, u32)]) -> FleetWindow {
    let mut window = FleetWindow::default();
    for (node, signal, weight) in weights {
        window.l7 += weight;
        *window.signals.entry((*signal).to_owned()).or_insert(0) += 1;
        *window.nodes.entry((*node).to_owned()).or_insert(0) += weight;
    }
    window
}

#[test]
fn the_fleets_sum_blocks_what_no_edge_saw_enough_of() {
    let config = config();
    let mut tracker = Tracker::default();
    let now = Instant::now();
    let client = ip("198.18.0.9");
    // This edge saw 3: below the threshold of 10 alone.
    assert!(
        record(
            &mut tracker,
            &config,
            client,
            3,
            Evidence::new(Signal::AuthFailure),
            now
        )
        .is_none()
    );
    let key = key_of(client, 64);
    let seven = fleet_window(&[("a", "auth_failure", 3), ("b", "auth_failure", 4)]);
    assert!(
        tracker
            .record_fleet(&config, &[], key, &seven, now)
            .is_none(),
        "7 over the fleet is below 10"
    );
    let ten = fleet_window(&[
        ("a", "auth_failure", 3),
        ("b", "auth_failure", 4),
        ("c", "auth_failure", 3),
    ]);
    let block = tracker
        .record_fleet(&config, &[], key, &ten, now)
        .expect("the fleet's 10 reaches the threshold");
    assert_eq!(block.cidr, Cidr::host(client));
    assert_eq!(block.provenance.score, 10);
    assert_eq!(block.provenance.signals.get("auth_failure"), Some(&3));
    assert_eq!(block.provenance.fleet_weights.get("c"), Some(&3));
    assert!(
        tracker.record_fleet(&config, &[], key, &ten, now).is_none(),
        "a blocked key is not blocked again by the same window"
    );
}

#[test]
fn fleet_sum_keeps_exemptions_and_packet_signals_only_corroborate() {
    let config = config();
    let mut tracker = Tracker::default();
    let now = Instant::now();
    let exempt = ip("198.18.1.1");
    let ten = fleet_window(&[("a", "waf_block", 5), ("b", "waf_block", 5)]);
    assert!(
        tracker
            .record_fleet(
                &config,
                &[Cidr::host(exempt)],
                key_of(exempt, 64),
                &ten,
                now
            )
            .is_none(),
        "an exempt address is never blocked, whatever the fleet saw"
    );
    // Packet-level events here (5) add at most the fleet's L7 weight (3).
    let client = ip("198.18.1.2");
    let key = key_of(client, 64);
    let packet = Observation {
        key,
        host: client,
        weight: 5,
        packet: true,
        evidence: Evidence::new(Signal::XdpRateExceeded),
    };
    assert!(tracker.record(&config, &[], packet, now).is_none());
    let three = fleet_window(&[("b", "auth_failure", 3)]);
    assert!(
        tracker
            .record_fleet(&config, &[], key, &three, now)
            .is_none(),
        "3 L7 + min(5, 3) packet = 6 < 10"
    );
    let five = fleet_window(&[("b", "auth_failure", 3), ("c", "auth_failure", 2)]);
    let block = tracker
        .record_fleet(&config, &[], key, &five, now)
        .expect("5 L7 + 5 packet = 10");
    assert_eq!(block.provenance.signals.get("xdp_rate_exceeded"), Some(&1));
    assert_eq!(block.provenance.signals.get("auth_failure"), Some(&2));
}
