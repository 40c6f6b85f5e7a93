//! Shared abuse scores, quotas and rate limits across three real gateway
//! daemons and a real `redis-server`, on loopback with XDP off: failures
//! spread over the edges add up to a block, a concurrent burst over three
//! gateways admits what one would (plus the requests decided locally, which
//! the metrics count), and with Redis killed every gateway goes on enforcing
//! from its local state without hanging.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use gateway::config::{AbuseSection, Config, LimitConfig, LimitKey, Period, QuotaConfig};
use gateway_tests::{
    fleet::{Fleet, route},
    gateway::Daemon,
    http::{Client, Protocol, json},
    redis::LoopbackRedis as RedisServer,
};
use http::{Request, StatusCode};

async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s (hung)"))
}

/// One gateway of the three: its rig, its daemon and a client for it.
struct Edge {
    fleet: Fleet,
    daemon: Daemon,
    client: Client,
}

impl Edge {
    async fn status(&self, uri: &str) -> StatusCode {
        let request = Request::get(uri).body(Bytes::new()).expect("request");
        within(15, uri, self.client.send(self.fleet.listen, request))
            .await
            .unwrap_or_else(|err| panic!("GET {uri}: {err}"))
            .status()
    }
}

/// A debug build on a loaded machine needs more than the default 5 ms for a
/// burst of concurrent calls; with it, Redis decides every request, and the
/// burst test sees the exact case (the default's fallbacks are counted and
/// reported, see docs/fleet.md).
const GENEROUS_BUDGET: &str = "budget = \"250ms\"\n";

/// `[fleet]` for `node` on `redis`, with `extra` TOML lines.
fn with_fleet(mut config: Config, redis: &RedisServer, node: &str, extra: &str) -> Config {
    config.fleet = Some(
        toml::from_str(&format!(
            "redis_url = {:?}\nnode = {node:?}\n{extra}",
            redis.url()
        ))
        .expect("[fleet] table"),
    );
    config
}

/// Three gateways (`edge-a`, `edge-b`, `edge-c`), each configured by
/// `configure`, which adds its `[fleet]`.
async fn three_edges(configure: impl Fn(&Fleet, &str) -> Config) -> Vec<Edge> {
    let mut edges = Vec::new();
    for node in ["edge-a", "edge-b", "edge-c"] {
        let fleet = Fleet::new(1);
        let config = configure(&fleet, node);
        let daemon = fleet.start(&config);
        daemon.wait_for_log("fleet link up", Duration::from_secs(20));
        let client = fleet.client(Protocol::Http1);
        edges.push(Edge {
            fleet,
            daemon,
            client,
        });
    }
    edges
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_spread_over_three_edges_block_once_their_sum_crosses_the_threshold() {
    let redis = RedisServer::start();
    let edges = three_edges(|fleet, node| {
        let mut config = fleet.config();
        // A WAF block weighs 5: one per edge stays under 15 on each edge.
        config.abuse = AbuseSection {
            enabled: true,
            threshold: 15,
            ..AbuseSection::default()
        };
        with_fleet(config, &redis, node, GENEROUS_BUDGET)
    })
    .await;
    let attack = "/search?q=%3Cscript%3Ealert(1)%3C/script%3E";
    for edge in &edges[..2] {
        assert_eq!(edge.status(attack).await, StatusCode::FORBIDDEN);
    }
    // Publishing is off the request path: give it time to land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for edge in &edges {
        assert!(
            !edge.daemon.log().contains("abuse_block"),
            "10 of 15 over the fleet blocked already:\n{}",
            edge.daemon.log()
        );
    }
    assert_eq!(edges[2].status(attack).await, StatusCode::FORBIDDEN);
    edges[2]
        .daemon
        .wait_for_log("abuse_block", Duration::from_secs(10));
    let explained = edges[2].fleet.gateway.json(&["explain", "127.0.0.1"]);
    let block = &explained["blocks"][0]["history"][0];
    assert_eq!(block["score"], 15, "{explained}");
    assert_eq!(block["signals"]["waf_block"], 3, "{explained}");
    for node in ["edge-a", "edge-b", "edge-c"] {
        assert_eq!(
            block["fleet_weights"][node], 5,
            "each edge's share is in the provenance: {explained}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_burst_over_three_gateways_admits_the_limit_plus_local_decisions() {
    const QUOTA: u64 = 30;
    const BURST: u32 = 20;
    const PER_EDGE: usize = 25;
    let redis = RedisServer::start();
    let edges = three_edges(|fleet, node| {
        let mut config = fleet.config();
        let mut quota = route("quota", "/q/");
        quota.quotas = vec![QuotaConfig {
            name: "daily".to_owned(),
            key: LimitKey::Route,
            requests: QUOTA,
            period: Period::Day,
        }];
        let mut limited = route("limited", "/rl/");
        limited.limits = vec![LimitConfig {
            name: "hourly".to_owned(),
            key: LimitKey::Route,
            requests: BURST,
            per: Duration::from_secs(3600),
            burst: None,
        }];
        config.routes.insert(0, quota);
        config.routes.insert(0, limited);
        with_fleet(config, &redis, node, GENEROUS_BUDGET)
    })
    .await;
    for (path, feature, limit) in [
        ("/q/burst", "quotas", QUOTA),
        ("/rl/burst", "rate_limits", u64::from(BURST)),
    ] {
        let started = Instant::now();
        let statuses = join_all(
            edges
                .iter()
                .flat_map(|edge| (0..PER_EDGE).map(move |_| edge.status(path))),
        )
        .await;
        let took = started.elapsed();
        let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count() as u64;
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count() as u64;
        assert_eq!(
            admitted + refused,
            statuses.len() as u64,
            "every answer is 200 or 429: {statuses:?}"
        );
        let mut local = 0;
        for edge in &edges {
            local += fallbacks(&edge.fleet, feature).await;
        }
        println!(
            "{feature}: {} requests over 3 gateways in {took:?}: {admitted} admitted (limit {limit}), {local} decided locally",
            statuses.len()
        );
        assert!(
            admitted <= limit + local,
            "{feature}: {admitted} admitted, more than {limit} + {local} local decisions"
        );
        if local == 0 {
            assert_eq!(admitted, limit, "{feature}: Redis answered every request");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_killed_mid_burst_every_gateway_enforces_locally_and_nothing_hangs() {
    const BURST: u32 = 20;
    let mut redis = RedisServer::start();
    let edges = three_edges(|fleet, node| {
        let mut config = fleet.config();
        let mut limited = route("limited", "/rl/");
        limited.limits = vec![LimitConfig {
            name: "hourly".to_owned(),
            key: LimitKey::Client,
            requests: BURST,
            per: Duration::from_secs(3600),
            burst: None,
        }];
        let mut quota = route("quota", "/q/");
        quota.quotas = vec![QuotaConfig {
            name: "daily".to_owned(),
            key: LimitKey::Route,
            requests: 1000,
            period: Period::Day,
        }];
        config.routes.insert(0, quota);
        config.routes.insert(0, limited);
        // edge-b refuses shared quotas it cannot check; the others count locally.
        let closed = if node == "edge-b" {
            "quota_when_unreachable = \"closed\"\n"
        } else {
            ""
        };
        with_fleet(config, &redis, node, &format!("{GENEROUS_BUDGET}{closed}"))
    })
    .await;
    // Half the shared budget, spread over the three, while Redis answers.
    let mut admitted_a = 0;
    for i in 0..BURST / 2 {
        if edges[i as usize % 3].status("/rl/x").await == StatusCode::OK && i % 3 == 0 {
            admitted_a += 1;
        }
    }
    for edge in &edges {
        assert_eq!(edge.status("/q/x").await, StatusCode::OK);
    }
    redis.kill();

    // edge-a goes on alone: its local bucket holds what it admitted before.
    let mut latencies = Vec::new();
    let mut refused = 0;
    for _ in 0..BURST + 10 {
        let started = Instant::now();
        match edges[0].status("/rl/x").await {
            StatusCode::OK => admitted_a += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("edge-a answered {other} with Redis down"),
        }
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "rate limit with Redis killed: p50 {p50:?}, p99 {p99:?} over {} requests",
        latencies.len()
    );
    assert!(
        admitted_a <= u64::from(BURST),
        "edge-a admitted {admitted_a} in all, more than its own budget of {BURST}"
    );
    assert!(refused > 0, "edge-a stopped enforcing with Redis down");

    assert_eq!(
        edges[0].status("/q/x").await,
        StatusCode::OK,
        "quota_when_unreachable = open counts locally"
    );
    let request = Request::get("/q/x").body(Bytes::new()).expect("request");
    let closed = within(
        15,
        "GET /q/x",
        edges[1].client.send(edges[1].fleet.listen, request),
    )
    .await
    .expect("edge-b answers");
    assert_eq!(closed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&closed)["error"], "quota_unavailable");
    assert!(fallbacks(&edges[0].fleet, "rate_limits").await > 0);
    for edge in &edges {
        assert!(
            !edge.daemon.log().contains("panicked"),
            "{}",
            edge.daemon.log()
        );
    }
}

/// wrk's requests per second and median latency, from its `--latency` report.
fn wrk_rate_and_median(report: &str) -> (f64, String) {
    let rate = report
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's report:\n{report}"));
    let median = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("50%"))
        .map(|latency| latency.trim().to_owned())
        .unwrap_or_else(|| panic!("no 50% latency in wrk's report:\n{report}"));
    (rate, median)
}

/// The cost per request of shared limits: the same route (a rate limit and a
/// quota that never refuse) behind a gateway without `[fleet]` and one with
/// shared limits, wrk against each in turn, three rounds. A measurement,
/// not a check: run it alone, on a quiet machine if there is one.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: cargo test --test fleet_limits -- --ignored --nocapture"]
async fn measure_shared_limits_against_local_ones_with_wrk() {
    let redis = RedisServer::start();
    let limited = |fleet: &Fleet| {
        let mut config = fleet.config();
        config.routes[0].limits = vec![LimitConfig {
            name: "generous".to_owned(),
            key: LimitKey::Client,
            requests: 1_000_000,
            per: Duration::from_secs(1),
            burst: None,
        }];
        config.routes[0].quotas = vec![QuotaConfig {
            name: "daily".to_owned(),
            key: LimitKey::Client,
            requests: 1_000_000_000,
            period: Period::Day,
        }];
        config
    };
    let local = Fleet::new(1);
    let _local_daemon = local.start(&limited(&local));
    let shared = Fleet::new(1);
    let shared_daemon = shared.start(&with_fleet(limited(&shared), &redis, "bench", ""));
    shared_daemon.wait_for_log("fleet link up", Duration::from_secs(20));
    let mut results: Vec<(&str, f64, String)> = Vec::new();
    for _round in 0..3 {
        for (name, fleet) in [("local", &local), ("shared", &shared)] {
            let url = format!("https://{}/", fleet.listen);
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new("wrk")
                    .args(["-t1", "-c8", "-d5s", "--latency", "--timeout", "5s", &url])
                    .output()
                    .expect("running wrk (apt-get install wrk)")
            })
            .await
            .expect("wrk thread");
            let (rate, median) = wrk_rate_and_median(&String::from_utf8_lossy(&output.stdout));
            println!("{name}: {rate:.0} requests/s, median latency {median}");
            results.push((name, rate, median));
        }
    }
    for name in ["local", "shared"] {
        let mut rates: Vec<f64> = results
            .iter()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, rate, _)| *rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        println!("{name}: median of 3 rounds {:.0} requests/s", rates[1]);
    }
    println!(
        "shared fallbacks: rate_limits {}, quotas {}",
        fallbacks(&shared, "rate_limits").await,
        fallbacks(&shared, "quotas").await
    );
}

/// The sum of `gateway_fleet_fallback_total` for `feature`.
async fn fallbacks(fleet: &Fleet, feature: &str) -> u64 {
    let label = format!("feature=\"{feature}\"");
    fleet
        .metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("gateway_fleet_fallback_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
