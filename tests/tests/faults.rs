//! The fleet misbehaving on command: `test-upstream` processes switched live between
//! ok, slow, 500, reset, blackhole, close-after-headers and truncate, with the real
//! gateway in front. Each test checks what the client gets, within what bound of the
//! configured timeouts, what reached the fleet (a POST never twice), and what the
//! gateway did to the endpoint. The table "When an endpoint misbehaves" in
//! docs/operations.md is this file.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway::config::{Balance, Config};
use gateway_tests::{
    fleet::{FLEET_NAME, Fleet},
    gateway::Daemon,
    http::{Client, Protocol, json},
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;

/// Bounds every await, so a hang fails the test instead of the suite.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

/// Sends `method uri` and returns the answer and how long it took.
async fn call(
    fleet: &Fleet,
    client: &Client,
    method: Method,
    uri: &str,
) -> (Response<Bytes>, Duration) {
    let request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Bytes::from_static(b"{}"))
        .expect("valid request");
    let started = Instant::now();
    let response = within(
        30,
        &format!("{method} {uri}"),
        client.send(fleet.listen, request),
    )
    .await
    .unwrap_or_else(|err| panic!("{method} {uri}: {err}"));
    (response, started.elapsed())
}

/// Requests each upstream has counted.
async fn counts(fleet: &Fleet) -> Vec<u64> {
    let mut counts = Vec::new();
    for upstream in &fleet.upstreams {
        counts.push(fleet.count_at(upstream, &fleet.fleet_ca, FLEET_NAME).await);
    }
    counts
}

/// Sum of the samples of `name` (over all label sets) in a scrape.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Open descriptors of a process.
fn descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .expect("the daemon's /proc/PID/fd")
        .count()
}

/// A config with quick timeouts and no active health checks, so that what the
/// requests themselves see decides (passive detection, the circuit).
fn quiet_config(fleet: &Fleet) -> Config {
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.health.path = String::new();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_hang_ups_give_back_their_in_flight_count() {
    let fleet = Fleet::new(3);
    let mut config = quiet_config(&fleet);
    config.routes[0].timeout = Duration::from_millis(400);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.balance = Balance::LeastRequest;
    pool.retry.attempts = 0;
    pool.outlier.consecutive_failures = 0;
    let _daemon = fleet.start(&config);
    let client = Arc::new(fleet.client(Protocol::Http1));

    fleet.upstreams[1].set_mode("slow 3000");
    // Route timeouts: requests that hit up-1 end in 504 while up-1 still works on them.
    let mut timed_out = 0;
    for i in 0..30 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/t/{i}")).await;
        if response.status() == StatusCode::GATEWAY_TIMEOUT {
            timed_out += 1;
        }
    }
    assert!(
        timed_out >= 3,
        "some requests must have met the slow host ({timed_out})"
    );
    // Client hang-ups: the client gives up before the answer.
    let hang_ups: Vec<_> = (0..9)
        .map(|i| {
            let client = Arc::clone(&client);
            let listen = fleet.listen;
            tokio::spawn(async move {
                let request = Request::get(format!("/hang-up/{i}"))
                    .body(Bytes::new())
                    .expect("request");
                let _ =
                    tokio::time::timeout(Duration::from_millis(150), client.send(listen, request))
                        .await;
            })
        })
        .collect();
    for task in hang_ups {
        task.await.expect("hang-up task");
    }
    fleet.upstreams[1].set_mode("ok");

    // Every count comes back to zero once nothing is in flight…
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fleet.metrics().await;
        let in_flight = metric_sum(&text, "gateway_upstream_endpoint_in_flight");
        if in_flight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in-flight counts leaked: {in_flight} still counted with nothing in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …so least-request spreads the next requests over all three again.
    let before = counts(&fleet).await;
    for i in 0..150 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/after/{i}")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let after = counts(&fleet).await;
    for (index, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b >= 20,
            "up-{index} got {} of 150 requests after the faults: a phantom load starves it",
            a - b
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_host_costs_one_connect_timeout_and_any_method_goes_elsewhere() {
    let fleet = Fleet::new(3);
    // Dark before the gateway ever connects: no pooled connection helps.
    fleet.upstreams[0].set_mode("blackhole");
    let mut config = quiet_config(&fleet);
    config.routes[0].timeout = Duration::from_secs(10);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.connect_timeout = Duration::from_millis(300);
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    let fds_before = descriptors(&daemon);

    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let (response, took) = call(&fleet, &client, Method::POST, &format!("/post/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "a POST is retried after a connect or handshake timeout (nothing was sent): {}",
            String::from_utf8_lossy(response.body())
        );
        slowest = slowest.max(took);
    }
    // Bound: one connect timeout plus retry backoff, far below the route timeout.
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}; the connect timeout is 300 ms, the route timeout 10 s"
    );
    // Back to normal for new connections, so the host can be asked what it got.
    fleet.upstreams[0].set_mode("ok");
    let counted = counts(&fleet).await;
    assert_eq!(
        counted[0], 0,
        "the blackholed host never completed a handshake"
    );
    assert_eq!(
        counted[1] + counted[2],
        30,
        "every POST arrived exactly once"
    );
    assert!(
        descriptors(&daemon) <= fds_before + 10,
        "descriptors grew from {fds_before} to {} with abandoned handshakes",
        descriptors(&daemon)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_idempotent_requests_and_ejects_the_slow_host() {
    let fleet = Fleet::new(3);
    fleet.upstreams[2].set_mode("slow 10000");
    let mut config = quiet_config(&fleet);
    config.routes[0].timeout = Duration::from_secs(8);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.retry.per_try_timeout = Some(Duration::from_secs(1));
    pool.retry.min_per_second = 100;
    let _daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http2);

    for i in 0..20 {
        let (response, took) = call(&fleet, &client, Method::GET, &format!("/get/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {i} is retried on another host"
        );
        assert!(
            took < Duration::from_secs(6),
            "GET {i} took {took:?}: per try 1 s, the route 8 s, the slow host 10 s"
        );
        assert_ne!(json(&response)["upstream"], "up-2");
    }
    // The slow host has been ejected by its attempt timeouts: POSTs, which are never
    // retried once sent, now all go elsewhere.
    let before = counts(&fleet).await;
    for i in 0..10 {
        let (response, _) = call(&fleet, &client, Method::POST, &format!("/post/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "POST {i} after the ejection"
        );
    }
    let after = counts(&fleet).await;
    assert_eq!(after[2], before[2], "the ejected slow host got no POST");
    assert_eq!(
        after[0] + after[1] - before[0] - before[1],
        10,
        "each POST once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_retries_resets_on_the_same_host_but_never_a_post() {
    let fleet = Fleet::new(1);
    let mut config = quiet_config(&fleet);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.outlier.consecutive_failures = 0;
    let _daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);

    fleet.upstreams[0].set_mode("reset");
    let (response, _) = call(&fleet, &client, Method::GET, "/reset").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json(&response)["error"], "upstream_error");
    assert_eq!(
        counts(&fleet).await[0],
        3,
        "one attempt and two retries on the only host"
    );

    let (response, _) = call(&fleet, &client, Method::POST, "/reset-post").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        counts(&fleet).await[0],
        4,
        "a POST that reached the host is not sent again"
    );

    fleet.upstreams[0].set_mode("ok");
    let (response, _) = call(&fleet, &client, Method::GET, "/back").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_headers_is_a_502_or_a_retry_and_ejects_the_host() {
    let fleet = Fleet::new(3);
    fleet.upstreams[0].set_mode("close-after-headers");
    let _daemon = fleet.start(&quiet_config(&fleet));
    let client = fleet.client(Protocol::Http1);

    let mut bad_gateway = 0;
    for i in 0..20 {
        let (response, _) = call(&fleet, &client, Method::POST, &format!("/post/{i}")).await;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => {
                assert_eq!(json(&response)["error"], "upstream_error");
                bad_gateway += 1;
            }
            other => panic!("POST {i}: {other}, not a clean 200 or 502"),
        }
    }
    assert!(
        (1..=5).contains(&bad_gateway),
        "{bad_gateway} POSTs met the broken host: each is a 502 (never a bare \
         disconnect), and five consecutive failures eject it"
    );
    fleet.upstreams[1].set_mode("close-after-headers");
    for i in 0..15 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/get/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {i} is retried elsewhere"
        );
        assert_eq!(json(&response)["upstream"], "up-2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_while_streaming_is_metered_and_the_health_check_takes_the_host_out() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.health.unhealthy_threshold = 5;
    // A busy machine may take a while over the first handshake.
    pool.health.timeout = Duration::from_secs(3);
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);

    fleet.upstreams[0].set_mode("truncate");
    let request = Request::get("/cut").body(Bytes::new()).expect("request");
    let body = request.map(|b| {
        http_body_util::Full::new(b)
            .map_err(|never| match never {})
            .boxed()
    });
    let response = within(10, "GET /cut", client.send_streaming(fleet.listen, body))
        .await
        .expect("the head arrives");
    if response.status() != StatusCode::OK {
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        panic!(
            "16 KiB were relayed before the cut; got {body:?}; log:\n{}",
            daemon.log()
        );
    }
    let read = within(10, "reading the cut body", response.into_body().collect()).await;
    assert!(
        read.is_err(),
        "the client must see the cut, never a whole-looking body"
    );
    let text = fleet.metrics().await;
    assert!(
        metric_sum(&text, "gateway_upstream_body_errors_total") >= 1.0,
        "the broken body is metered:\n{text}"
    );
    // The health check reads whole bodies, so the host leaves rotation.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Until then, answers may be cut again.
        let request = Request::get("/after").body(Bytes::new()).expect("request");
        if let Ok(response) = within(10, "GET /after", client.send(fleet.listen, request)).await
            && response.status() == StatusCode::SERVICE_UNAVAILABLE
        {
            assert_eq!(json(&response)["error"], "no_healthy_upstream");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the truncating host stayed in rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_on_errors_fails_fast_probes_and_closes() {
    let fleet = Fleet::new(3);
    let mut config = quiet_config(&fleet);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.outlier.consecutive_failures = 0;
    pool.breaker.min_requests = 10;
    pool.breaker.failure_percent = 50;
    pool.breaker.open_for = Duration::from_secs(1);
    pool.breaker.half_open_probes = 2;
    let _daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);

    for upstream in &fleet.upstreams {
        upstream.set_mode("status 500");
    }
    for i in 0..10 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/err/{i}")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let before: u64 = counts(&fleet).await.iter().sum();
    for i in 0..20 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/open/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "open: fail fast"
        );
        assert_eq!(json(&response)["error"], "circuit_open");
        assert!(response.headers().contains_key("retry-after"));
    }
    assert_eq!(
        counts(&fleet).await.iter().sum::<u64>(),
        before,
        "nothing reached the fleet"
    );

    // After open_for, a failing probe opens it again…
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (response, _) = call(&fleet, &client, Method::GET, "/probe-fails").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (response, _) = call(&fleet, &client, Method::GET, "/reopened").await;
    assert_eq!(json(&response)["error"], "circuit_open");

    // …and successful probes close it.
    for upstream in &fleet.upstreams {
        upstream.set_mode("ok");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..10 {
        let (response, _) = call(&fleet, &client, Method::GET, &format!("/closed/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} after recovery"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_host_ejected_the_pool_answers_503_unless_panic_routing_is_on() {
    let fleet = Fleet::new(2);
    let mut config = quiet_config(&fleet);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.outlier.consecutive_failures = 2;
    pool.breaker.min_requests = 0;
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    for upstream in &fleet.upstreams {
        upstream.set_mode("status 500");
    }
    for i in 0..4 {
        call(&fleet, &client, Method::POST, &format!("/eject/{i}")).await;
    }
    let (response, _) = call(&fleet, &client, Method::GET, "/all-ejected").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&response)["error"], "no_healthy_upstream");
    drop(daemon);

    // With panic routing, ejection is ignored and the 500s pass through.
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.outlier.panic_threshold_percent = 50;
    let _daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    for i in 0..4 {
        call(&fleet, &client, Method::POST, &format!("/eject-again/{i}")).await;
    }
    let (response, _) = call(&fleet, &client, Method::GET, "/panic").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// Every fault at once on all three hosts, each on a fresh gateway with ejection and
/// the circuit off, so the answer is the fault's own: the status a client gets, a
/// bound from the configured timeouts, and no descriptor left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_on_every_host_gets_a_bounded_answer_and_leaks_no_descriptor() {
    let fleet = Fleet::new(3);
    let mut config = quiet_config(&fleet);
    config.routes[0].timeout = Duration::from_secs(5);
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.connect_timeout = Duration::from_millis(300);
    pool.retry.per_try_timeout = Some(Duration::from_millis(500));
    pool.outlier.consecutive_failures = 0;
    pool.breaker.min_requests = 0;
    // (mode, GET's status, POST's status); None: the head arrives, then the body is cut.
    let cases: [(&str, Option<StatusCode>, Option<StatusCode>); 6] = [
        (
            "slow 8000",
            Some(StatusCode::GATEWAY_TIMEOUT),
            Some(StatusCode::GATEWAY_TIMEOUT),
        ),
        (
            "status 500",
            Some(StatusCode::INTERNAL_SERVER_ERROR),
            Some(StatusCode::INTERNAL_SERVER_ERROR),
        ),
        (
            "reset",
            Some(StatusCode::BAD_GATEWAY),
            Some(StatusCode::BAD_GATEWAY),
        ),
        (
            "blackhole",
            Some(StatusCode::BAD_GATEWAY),
            Some(StatusCode::BAD_GATEWAY),
        ),
        (
            "close-after-headers",
            Some(StatusCode::BAD_GATEWAY),
            Some(StatusCode::BAD_GATEWAY),
        ),
        ("truncate", None, None),
    ];
    for (mode, get_status, post_status) in cases {
        for upstream in &fleet.upstreams {
            upstream.set_mode(mode);
        }
        let daemon = fleet.start(&config);
        let client = fleet.client(Protocol::Http1);
        let fds_before = descriptors(&daemon);
        for (method, expected) in [(Method::GET, get_status), (Method::POST, post_status)] {
            for i in 0..3 {
                let uri = format!("/{}/{i}", mode.replace(' ', "-"));
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .body(Bytes::from_static(b"{}"))
                    .expect("request");
                let started = Instant::now();
                let answer = within(30, &uri, client.send(fleet.listen, request)).await;
                let took = started.elapsed();
                // Three attempts of at most 500 ms each plus backoff, within the
                // route's 5 s; never the upstream's own 8 s.
                assert!(
                    took < Duration::from_secs(5),
                    "{mode}: {method} took {took:?}"
                );
                match (expected, answer) {
                    (Some(status), Ok(response)) => assert_eq!(
                        response.status(),
                        status,
                        "{mode}: {method} {}",
                        String::from_utf8_lossy(response.body())
                    ),
                    (None, Err(_)) => {}
                    (expected, answer) => {
                        panic!("{mode}: {method} expected {expected:?}, got {answer:?}")
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fds_after = descriptors(&daemon);
        assert!(
            fds_after <= fds_before + 12,
            "{mode}: descriptors grew from {fds_before} to {fds_after}"
        );
        drop(daemon);
        for upstream in &fleet.upstreams {
            upstream.set_mode("ok");
        }
    }
}
