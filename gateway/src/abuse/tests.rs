use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{tracker::Tracker, *};

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
    assert!(
        tracker
            .record(&config, client, 5, waf("sqli-001"), now)
            .is_none()
    );
    let block = tracker
        .record(
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
            tracker.record(&config, client, 5, waf("r"), at).is_none(),
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
        let block = tracker
            .record(&config, client, 10, waf("r"), now)
            .expect("each burst blocks");
        // While blocked, more signals neither block again nor escalate.
        assert!(
            tracker
                .record(&config, client, 10, waf("r"), now + Duration::from_secs(1))
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
    tracker
        .record(&config, client, 10, waf("r"), now)
        .expect("block");
    let later = now + Duration::from_secs(1000);
    let block = tracker
        .record(&config, client, 10, waf("r"), later)
        .expect("block");
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
    let first = tracker
        .record(&config, ip("198.18.5.1"), 10, waf("r"), now)
        .expect("block");
    assert_eq!(first.cidr.to_string(), "198.18.5.1");
    tracker
        .record(&config, ip("198.18.5.2"), 10, waf("r"), now)
        .expect("block");
    let third = tracker
        .record(&config, ip("198.18.5.3"), 10, waf("r"), now)
        .expect("block");
    assert_eq!(third.cidr.to_string(), "198.18.5.0/24");
    assert_eq!(
        third
            .provenance
            .aggregated_from
            .map(|c| c.to_string())
            .as_deref(),
        Some("198.18.5.3")
    );
    let v6 = tracker
        .record(&config, ip("2001:2::1"), 10, waf("r"), now)
        .expect("block");
    assert!(v6.cidr.is_host(), "another prefix is not aggregated");
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
