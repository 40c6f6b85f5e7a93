//! The proxy end to end, on loopback: the real `gateway` binary in front of real
//! `test-upstream` processes that require its client certificate, reached by a
//! real TLS client. Every failure mode of issue 3 has its answer checked here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway::config::{Balance, Config};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, route},
    gateway::Daemon,
    http::{Client, Filler, Protocol, body_len, json, raw_tls},
    pki::Ca,
    upstream::Upstream,
};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Bounds every await, so a hang fails the test instead of the suite.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

async fn send(
    fleet: &Fleet,
    client: &Client,
    request: http::request::Builder,
    body: &'static [u8],
) -> Response<Bytes> {
    let request = request
        .body(Bytes::from_static(body))
        .expect("valid request");
    let what = format!("{} {}", request.method(), request.uri());
    within(15, &what, client.send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

async fn get(fleet: &Fleet, client: &Client, uri: &str) -> Response<Bytes> {
    send(fleet, client, request(Method::GET, uri), b"").await
}

/// Which upstream answered an echo request.
fn served_by(response: &Response<Bytes>) -> String {
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(response.body())
    );
    json(response)["upstream"]
        .as_str()
        .expect("echo names its upstream")
        .to_owned()
}

/// `GET path` on its own task, for requests that must be in flight while the
/// test does something else.
fn spawn_get(
    client: &Arc<Client>,
    listen: std::net::SocketAddr,
    path: &'static str,
) -> tokio::task::JoinHandle<Result<Response<Bytes>, gateway_tests::http::Error>> {
    let client = client.clone();
    tokio::spawn(async move {
        let request = Request::get(path).body(Bytes::new()).expect("request");
        client.send(listen, request).await
    })
}

fn start(fleet: &Fleet, config: &Config) -> Daemon {
    fleet.start(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_over_mutual_tls_with_both_http_versions() {
    let fleet = Fleet::new(1);
    let _daemon = start(&fleet, &fleet.config());

    // The upstream refuses anyone without the fleet's client certificate (with TLS
    // 1.3 the refusal may surface as the alert or as a closed connection)…
    let anonymous = Client::builder(fleet.fleet_ca.cert_pem(), FLEET_NAME).build();
    within(
        10,
        "anonymous GET",
        anonymous.get(fleet.upstreams[0].addr(), "/"),
    )
    .await
    .expect_err("the upstream requires a client certificate");
    assert_eq!(
        fleet
            .count_at(&fleet.upstreams[0], &fleet.fleet_ca, FLEET_NAME)
            .await,
        0,
        "the anonymous request was not served"
    );

    // …and serves the gateway, which presents it.
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let response = get(&fleet, &client, "/hello?x=1").await;
        let echo = json(&response);
        assert_eq!(response.status(), StatusCode::OK, "{echo}");
        assert_eq!(echo["client_cert_cn"], "gateway", "{echo}");
        assert_eq!(echo["path"], "/hello?x=1");
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(echo["headers"]["host"], EDGE_NAME);
        let request_id = response
            .headers()
            .get("x-request-id")
            .expect("the response carries a request id");
        assert_eq!(
            echo["headers"]["x-request-id"],
            request_id.to_str().expect("ASCII")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_sends_to_an_endpoint_with_a_foreign_or_misnamed_certificate() {
    let fleet = Fleet::new(0);
    let foreign_ca = Ca::new("someone else's CA");
    let impostor = Fleet::upstream(
        "impostor",
        &foreign_ca.issue_server(&[FLEET_NAME]),
        &fleet.fleet_ca,
    );
    let misnamed = Fleet::upstream(
        "misnamed",
        &fleet.fleet_ca.issue_server(&["other.internal"]),
        &fleet.fleet_ca,
    );
    for (endpoint, ca, name) in [
        (&impostor, &foreign_ca, FLEET_NAME),
        (&misnamed, &fleet.fleet_ca, "other.internal"),
    ] {
        let mut config = fleet.config();
        let pool = config.upstreams.get_mut("fleet").expect("pool");
        pool.endpoints = vec![endpoint.addr().to_string()];
        // Without health checks the request itself meets the certificate.
        pool.health.path = String::new();
        let daemon = start(&fleet, &config);
        let client = fleet.client(Protocol::Http1);
        let response = get(&fleet, &client, "/secret").await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = json(&response);
        assert_eq!(body["error"], "upstream_error");
        assert!(body["request_id"].is_string(), "{body}");
        let log = daemon.log();
        assert!(
            log.contains("invalid peer certificate"),
            "the log says why: {log}"
        );
        assert_eq!(
            fleet.count_at(endpoint, ca, name).await,
            0,
            "no request reached {endpoint:?}",
            endpoint = endpoint.addr()
        );
        daemon.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_as_each_algorithm_promises() {
    let fleet = Fleet::new(3);
    let client = Arc::new(fleet.client(Protocol::Http1));

    // Round robin: exactly even over sequential requests.
    let daemon = start(&fleet, &fleet.config());
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        *served
            .entry(served_by(&get(&fleet, &client, "/rr").await))
            .or_default() += 1;
    }
    assert_eq!(
        served.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{served:?}"
    );
    daemon.stop();

    // Consistent hashing on a header: one user, one endpoint; many users, many.
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.balance = Balance::ConsistentHash;
    pool.hash_header = Some("x-user".to_owned());
    let daemon = start(&fleet, &config);
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..20 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let response = send(
                &fleet,
                &client,
                request(Method::GET, "/affinity").header("x-user", format!("user-{user}")),
                b"",
            )
            .await;
            seen.insert(served_by(&response));
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "20 users all landed on {homes:?}");
    daemon.stop();

    // Least request: with two endpoints busy, quick requests go mostly to the idle one.
    let mut config = fleet.config();
    config.upstreams.get_mut("fleet").expect("pool").balance = Balance::LeastRequest;
    let daemon = start(&fleet, &config);
    // One after the other: two requests that arrive together can both read the
    // loads before either counts itself (the choice is lock-free, as Envoy's is),
    // and this part is about a busy pair, not that race.
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(spawn_get(&client, fleet.listen, "/slow?ms=4000"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut quick = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        *quick
            .entry(served_by(&get(&fleet, &client, "/quick").await))
            .or_default() += 1;
    }
    let mut busy = std::collections::BTreeSet::new();
    for task in slow {
        let response = within(10, "slow request", task)
            .await
            .expect("task")
            .expect("slow request served");
        busy.insert(served_by(&response));
    }
    assert_eq!(busy.len(), 2, "the two slow requests went to {busy:?}");
    let idle_share: u32 = quick
        .iter()
        .filter(|(name, _)| !busy.contains(*name))
        .map(|(_, n)| n)
        .sum();
    // Each quick request sees the busy pair with probability 1/3, so the idle endpoint
    // expects 20 of 30; 14 is over two standard deviations below.
    assert!(
        idle_share >= 14,
        "idle endpoint got {idle_share} of 30: {quick:?}"
    );
    daemon.stop();
}

/// The gateway keeps its connections to an endpoint for the next request, and one
/// the endpoint dropped (a restart) costs no request an error: a POST, which is
/// never retried once sent, still gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_and_a_dropped_one_costs_nothing() {
    let mut fleet = Fleet::new(1);
    let _daemon = start(&fleet, &fleet.config());
    let client = fleet.client(Protocol::Http1);
    let peer = |response: &Response<Bytes>| {
        assert_eq!(response.status(), StatusCode::OK);
        json(response)["peer"]
            .as_str()
            .expect("echo names its peer")
            .to_owned()
    };
    let mut peers = std::collections::BTreeSet::new();
    for i in 0..20 {
        peers.insert(peer(&get(&fleet, &client, &format!("/kept/{i}")).await));
    }
    // One at a time: one connection (two if a health check held the first).
    assert!(
        peers.len() <= 2,
        "20 sequential requests came on {} connections: {peers:?}",
        peers.len()
    );

    fleet.upstreams[0].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = send(
            &fleet,
            &client,
            request(Method::POST, "/after-restart"),
            b"x",
        )
        .await;
        if response.status() == StatusCode::OK {
            assert!(
                !peers.contains(&peer(&response)),
                "a dropped connection was used"
            );
            break;
        }
        // Only the restart's own window (health check not passed yet) may refuse.
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a POST after the endpoint dropped its connections failed: {}",
            String::from_utf8_lossy(response.body())
        );
        assert!(Instant::now() < deadline, "the endpoint never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_leaves_rotation_and_comes_back() {
    let mut fleet = Fleet::new(3);
    let _daemon = start(&fleet, &fleet.config());
    let client = fleet.client(Protocol::Http1);

    for i in 0..60 {
        if i == 20 {
            fleet.upstreams[1].kill();
        }
        let response = get(&fleet, &client, &format!("/during-kill/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} failed although a retry was safe: {}",
            String::from_utf8_lossy(response.body())
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..30 {
        assert_ne!(
            served_by(&get(&fleet, &client, "/after-kill").await),
            "up-1"
        );
    }

    fleet.upstreams[1].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if served_by(&get(&fleet, &client, "/after-restart").await) == "up-1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted endpoint never came back into rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_pool_fails_fast_and_recovers() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    pool.breaker.max_concurrent = 2;
    pool.breaker.max_pending = 0;
    let _daemon = start(&fleet, &config);
    let client = Arc::new(fleet.client(Protocol::Http1));

    let busy: Vec<_> = (0..2)
        .map(|_| spawn_get(&client, fleet.listen, "/slow?ms=1500"))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = get(&fleet, &client, "/third").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&response)["error"], "upstream_overloaded");
    assert!(response.headers().contains_key("retry-after"));
    for task in busy {
        let response = within(10, "busy request", task)
            .await
            .expect("task")
            .expect("served");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        get(&fleet, &client, "/recovered").await.status(),
        StatusCode::OK,
        "the breaker closes once the pool has room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gives_504_at_the_route_timeout() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes[0].timeout = Duration::from_millis(500);
    let daemon = start(&fleet, &config);
    let client = fleet.client(Protocol::Http2);
    let response = get(&fleet, &client, "/slow?ms=5000").await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = json(&response);
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        !String::from_utf8_lossy(response.body()).contains("internal error"),
        "no upstream text leaks"
    );
    // An upstream's own 500 is passed on, but its body is the upstream's to own; a
    // failure of the gateway's never carries upstream text.
    let response = get(&fleet, &client, "/status/503").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_http_versions() {
    const SIZE: u64 = 64 << 20;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes[0].max_body_bytes = Some(SIZE);
    // Longer than the WAF reads: streamed past its first part only when the
    // route opts out of refusing such bodies.
    config.routes[0].waf.oversize = gateway::config::Oversize::InspectPrefix;
    let daemon = start(&fleet, &config);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let request = Request::post("/upload")
            .header("content-length", SIZE)
            .body(Filler::new(SIZE).boxed())
            .expect("request");
        let response = within(60, "upload", client.send_streaming(fleet.listen, request))
            .await
            .expect("upload accepted");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("echo body")
            .to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(echo["body_bytes"], SIZE, "{protocol:?}: {echo}");

        let request = Request::get(format!("/stream?bytes={SIZE}"))
            .body(Filler::new(0).boxed())
            .expect("request");
        let response = within(60, "download", client.send_streaming(fleet.listen, request))
            .await
            .expect("download answered");
        assert_eq!(response.status(), StatusCode::OK);
        let received = within(60, "download body", body_len(response.into_body()))
            .await
            .expect("download body");
        assert_eq!(received, SIZE, "{protocol:?}");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's /proc status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 48 * 1024,
        "the gateway peaked at {peak_kib} KiB while moving 4 × 64 MiB: bodies were buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_answer_414_431_413() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let limits = &mut config.listeners[0].limits;
    limits.max_uri_bytes = 1024;
    limits.max_header_count = 20;
    limits.max_header_bytes = 4096;
    limits.max_body_bytes = 1000;
    let _daemon = start(&fleet, &config);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let long = format!("/{}", "a".repeat(1100));
        assert_eq!(
            get(&fleet, &client, &long).await.status(),
            StatusCode::URI_TOO_LONG
        );

        let mut many = request(Method::GET, "/many");
        for i in 0..30 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(
            send(&fleet, &client, many, b"").await.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{protocol:?}: header count"
        );
        let big = request(Method::GET, "/big").header("x-big", "b".repeat(5000));
        assert_eq!(
            send(&fleet, &client, big, b"").await.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{protocol:?}: header bytes"
        );
        let body = send(
            &fleet,
            &client,
            request(Method::POST, "/body"),
            &[b'x'; 2000],
        )
        .await;
        assert_eq!(body.status(), StatusCode::PAYLOAD_TOO_LARGE, "{protocol:?}");
        let fine = send(
            &fleet,
            &client,
            request(Method::POST, "/body"),
            &[b'x'; 900],
        )
        .await;
        assert_eq!(json(&fine)["body_bytes"], 900);
    }
    assert_eq!(
        fleet
            .count_at(&fleet.upstreams[0], &fleet.fleet_ca, FLEET_NAME)
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.listeners[0].timeouts.request_header = Duration::from_secs(1);
    let _daemon = start(&fleet, &config);
    let mut slow = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n")
        .await
        .expect("request line");
    let client = fleet.client(Protocol::Http1);
    let started = Instant::now();
    let mut closed = false;
    for i in 0..40 {
        assert_eq!(
            get(&fleet, &client, "/meanwhile").await.status(),
            StatusCode::OK
        );
        if slow
            .write_all(format!("x-drip-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(250), slow.read(&mut buf)).await
        {
            match read {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    assert!(text.starts_with("HTTP/1.1 408"), "unexpected answer {text}");
                    closed = true;
                    break;
                }
            }
        }
    }
    assert!(
        closed,
        "the dripping client was still connected after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_normalized_path() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let mut api = route("api", "/api/");
    api.methods = vec!["GET".to_owned(), "POST".to_owned()];
    api.rewrite_prefix = Some("/".to_owned());
    let mut admin = route("admin", "/");
    admin.hosts = vec!["admin.api.test".to_owned()];
    admin.upstream_host = Some("admin.internal".to_owned());
    let mut wildcard = route("tenants", "/");
    wildcard.hosts = vec!["*.api.test".to_owned()];
    wildcard.upstream_host = Some("tenant.internal".to_owned());
    config.routes = vec![api, admin, wildcard, route("static", "/static")];
    let _daemon = start(&fleet, &config);
    let client = fleet.client(Protocol::Http1);

    let path = |response: Response<Bytes>| {
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(response.body())
        );
        json(&response)["path"].as_str().expect("path").to_owned()
    };
    assert_eq!(
        path(get(&fleet, &client, "/api/users?id=1").await),
        "/users?id=1"
    );
    assert_eq!(path(get(&fleet, &client, "/api/./a//b/../c").await), "/a/c");
    assert_eq!(path(get(&fleet, &client, "/api/%7Euser").await), "/~user");
    // Dot segments cannot climb out of a route's prefix into another one.
    assert_eq!(path(get(&fleet, &client, "/static/../api/x").await), "/x");
    assert_eq!(
        get(&fleet, &client, "/api/%2e%2e/secret").await.status(),
        StatusCode::NOT_FOUND
    );
    for attack in [
        "/api/..%2fsecret",
        "/api/a%5cb",
        "/api/%00",
        "/api/%zz",
        "/api/%2F",
    ] {
        let response = get(&fleet, &client, attack).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{attack}");
        assert_eq!(json(&response)["error"], "invalid_path", "{attack}");
    }
    assert_eq!(
        get(&fleet, &client, "/other").await.status(),
        StatusCode::NOT_FOUND
    );
    let response = send(&fleet, &client, request(Method::DELETE, "/api/x"), b"").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, POST");

    let host = |response: Response<Bytes>| {
        json(&response)["headers"]["host"]
            .as_str()
            .map(str::to_owned)
    };
    let admin = get(&fleet, &client, "https://admin.api.test/panel").await;
    assert_eq!(host(admin).as_deref(), Some("admin.internal"));
    let tenant = get(&fleet, &client, "https://blue.api.test/home").await;
    assert_eq!(host(tenant).as_deref(), Some("tenant.internal"));
    let plain = get(&fleet, &client, "/static/app.js").await;
    assert_eq!(host(plain).as_deref(), Some(EDGE_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_the_gateways_unless_the_client_is_trusted() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let daemon = start(&fleet, &config);
    let client = fleet.client(Protocol::Http1);
    let spoofed = || {
        request(Method::GET, "/whoami")
            .header("x-forwarded-for", "198.18.7.7")
            .header("x-forwarded-proto", "http")
            .header("forwarded", "for=198.18.7.7")
            .header("x-real-ip", "198.18.7.7")
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "hop")
            .header("keep-alive", "timeout=5")
            .header("x-request-id", "trace-42")
    };
    let response = send(&fleet, &client, spoofed(), b"").await;
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let echo = json(&response);
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{echo}");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-request-id"], "trace-42");
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-secret",
        "keep-alive",
        "connection",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {echo}"
        );
    }
    let bad_id = send(
        &fleet,
        &client,
        request(Method::GET, "/id").header("x-request-id", "a b\"c"),
        b"",
    )
    .await;
    assert_ne!(bad_id.headers()["x-request-id"], "a b\"c");

    // A trusted proxy's chain is kept and extended (applied by a reload).
    config.proxy.trusted_proxies = vec!["127.0.0.1".parse().expect("CIDR")];
    fleet.rewrite(&config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let echo = json(&send(&fleet, &client, spoofed(), b"").await);
    assert_eq!(
        echo["headers"]["x-forwarded-for"], "198.18.7.7, 127.0.0.1",
        "{echo}"
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_route_without_disturbing_requests_in_flight() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes = vec![route("slow", "/slow")];
    let daemon = start(&fleet, &config);
    let client = Arc::new(fleet.client(Protocol::Http1));
    assert_eq!(
        get(&fleet, &client, "/new/x").await.status(),
        StatusCode::NOT_FOUND
    );

    let in_flight = spawn_get(&client, fleet.listen, "/slow?ms=2000");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new_route = route("new", "/new");
    new_route.upstream_host = Some("new.internal".to_owned());
    config.routes.push(new_route);
    fleet.rewrite(&config);
    // `gateway reload` returns once the daemon has decided.
    let said = fleet.gateway.ok(&["reload"]);
    assert!(said.contains("configuration reloaded"), "{said}");
    assert!(daemon.log().contains("configuration reloaded"));
    let response = get(&fleet, &client, "/new/x").await;
    assert_eq!(json(&response)["headers"]["host"], "new.internal");
    let slow = within(10, "the request in flight", in_flight)
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(slow.status(), StatusCode::OK);

    // An invalid file is rejected with its problem and changes nothing.
    config.routes[0].upstream = "nowhere".to_owned();
    fleet.rewrite(&config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("config_reload_rejected", Duration::from_secs(10));
    assert!(
        daemon.log().contains("no [upstream.nowhere]"),
        "{}",
        daemon.log()
    );
    let response = get(&fleet, &client, "/new/y").await;
    assert_eq!(json(&response)["headers"]["host"], "new.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let fleet = Fleet::new(1);
    let daemon = start(&fleet, &fleet.config());
    let client = Arc::new(fleet.client(Protocol::Http2));
    let in_flight = spawn_get(&client, fleet.listen, "/slow?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::task::spawn_blocking(move || daemon.stop());
    let response = within(10, "the request in flight", in_flight)
        .await
        .expect("task")
        .expect("the request in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    within(15, "daemon exit", stopping)
        .await
        .expect("clean exit");
    let late = fleet.client(Protocol::Http1);
    assert!(
        within(10, "late request", late.get(fleet.listen, "/late"))
            .await
            .is_err(),
        "a stopped gateway accepts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_change_and_bad_files_keep_the_old_ones() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.proxy.certificate_check_interval = Duration::from_millis(200);
    let daemon = start(&fleet, &config);
    let old_client = fleet.client(Protocol::Http1);
    assert_eq!(
        get(&fleet, &old_client, "/before").await.status(),
        StatusCode::OK
    );

    // Rotate to a certificate from a new CA, written over the same files.
    let new_ca = Ca::new("edge CA 2");
    let cert = &config.listeners[0].certificates[0];
    let issued = new_ca.issue_server(&[EDGE_NAME]);
    std::fs::write(&cert.key, &issued.key_pem).expect("key");
    std::fs::write(&cert.cert, &issued.cert_pem).expect("cert");
    daemon.wait_for_log("certificates reloaded", Duration::from_secs(10));
    let new_client = Client::builder(new_ca.cert_pem(), EDGE_NAME).build();
    assert_eq!(
        get(&fleet, &new_client, "/after").await.status(),
        StatusCode::OK
    );
    // The old client's keep-alive connection was never dropped.
    assert_eq!(
        get(&fleet, &old_client, "/still").await.status(),
        StatusCode::OK
    );

    std::fs::write(&cert.cert, "not a certificate").expect("garbage");
    daemon.wait_for_log("certificate change rejected", Duration::from_secs(10));
    assert!(
        daemon.log().contains(&cert.cert.display().to_string()),
        "the error names the file: {}",
        daemon.log()
    );
    let fresh = Client::builder(new_ca.cert_pem(), EDGE_NAME).build();
    assert_eq!(get(&fleet, &fresh, "/kept").await.status(), StatusCode::OK);
}

#[test]
fn check_lists_every_problem_and_run_refuses_to_start() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes[0].upstream = "nowhere".to_owned();
    config.listeners[0].certificates[0].key = "/nonexistent/edge.key".into();
    let path = fleet.gateway.state_dir.path().join("bad.toml");
    std::fs::write(&path, gateway_tests::fleet::render(&config)).expect("config");
    let path = path.to_str().expect("UTF-8");
    for args in [
        vec!["check", "--config", path],
        vec!["run", "--config", path],
    ] {
        let output = fleet.gateway.output(&args);
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for problem in [
            "route[0].upstream: no [upstream.nowhere]",
            "listener[0] (public): /nonexistent/edge.key",
        ] {
            assert!(
                stderr.contains(problem),
                "{args:?} must report {problem:?}: {stderr}"
            );
        }
    }
    config.routes[0].upstream = "fleet".to_owned();
    config.listeners[0].certificates[0].key = config.listeners[0].certificates[0].cert.clone();
    std::fs::write(path, gateway_tests::fleet::render(&config)).expect("config");
    let output = fleet.gateway.output(&["check", "--config", path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("edge.crt"),
        "the certificate used as a key is named: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_and_client_certificates_per_listener() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let other_ca = Ca::new("other edge CA");
    let (cert, key) = fleet.write(
        &other_ca.issue_server(&["shop.test", "*.shop.test"]),
        "shop",
    );
    config.listeners[0]
        .certificates
        .push(gateway::config::CertificateConfig {
            cert,
            key,
            server_names: vec!["*.shop.test".to_owned(), "shop.test".to_owned()],
        });
    let clients_ca = Ca::new("service clients CA");
    config.listeners[0].client_ca = Some(fleet.write_ca(&clients_ca, "clients-ca"));
    let _daemon = start(&fleet, &config);

    let service = |ca: &Ca, name: &str| {
        Client::builder(ca.cert_pem(), name)
            .identity(&clients_ca.issue_client("billing"))
            .build()
    };
    for (ca, name) in [
        (&fleet.edge_ca, EDGE_NAME),
        (&other_ca, "shop.test"),
        (&other_ca, "www.shop.test"),
    ] {
        let client = service(ca, name);
        let response = within(10, name, client.get(fleet.listen, "/sni"))
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(response.status(), StatusCode::OK, "{name}");
    }
    // An unknown name gets the default (first) certificate.
    let unknown = Client::builder(fleet.edge_ca.cert_pem(), EDGE_NAME)
        .identity(&clients_ca.issue_client("x"))
        .build();
    assert_eq!(
        within(10, "default cert", unknown.get(fleet.listen, "/"))
            .await
            .expect("served")
            .status(),
        StatusCode::OK
    );

    // Without a client certificate, or with one from another CA: no handshake
    // and nothing forwarded (with TLS 1.3 the refusal may surface as the alert
    // or as a connection closed before the request).
    let served = fleet.upstream_count().await;
    for client in [
        fleet.client(Protocol::Http1),
        Client::builder(fleet.edge_ca.cert_pem(), EDGE_NAME)
            .identity(&fleet.fleet_ca.issue_client("stranger"))
            .build(),
    ] {
        within(10, "refused client", client.get(fleet.listen, "/"))
            .await
            .expect_err("the listener requires a client certificate from its CA");
    }
    assert_eq!(
        fleet.upstream_count().await,
        served,
        "a refused client's request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_idle_connections_are_closed() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.listeners[0].timeouts.body_read = Duration::from_millis(500);
    config.listeners[0].timeouts.idle = Duration::from_secs(1);
    config.listeners[0].timeouts.request_header = Duration::from_secs(30);
    let _daemon = start(&fleet, &config);

    let mut stalled = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
    stalled
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .expect("head and part of the body");
    let mut answer = Vec::new();
    within(10, "the 408", stalled.read_to_end(&mut answer))
        .await
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    let mut idle = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
    idle.write_all(b"GET /once HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .expect("request");
    let mut rest = Vec::new();
    within(10, "idle close", idle.read_to_end(&mut rest))
        .await
        .ok();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "answered, then closed when idle: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_the_request_head_timeout() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.listeners[0].timeouts.request_header = Duration::from_secs(1);
    config.listeners[0].timeouts.idle = Duration::from_secs(30);
    let _daemon = start(&fleet, &config);

    let mut conn = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
    for path in ["/first", "/after-a-pause"] {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let head = within(10, "the answer", read_response(&mut conn)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        // Idle between requests for longer than `request_header`, well within `idle`.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its head.
async fn read_response(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("a Content-Length");
        if data.len() >= end + 4 + length {
            return head.to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_named_endpoints_and_http2_to_the_fleet() {
    let fleet = Fleet::new(0);
    let server = fleet.fleet_ca.issue_server(&[FLEET_NAME]);
    let h2 = Upstream::builder("h2", &server, fleet.fleet_ca.cert_pem())
        .http2()
        .start();
    let mut config = fleet.config();
    let pool = config.upstreams.get_mut("fleet").expect("pool");
    // "localhost" resolves to 127.0.0.1 (and maybe ::1, where nothing listens:
    // health checks keep that one out of rotation).
    pool.endpoints = vec![format!("localhost:{}", h2.addr().port())];
    pool.http2 = true;
    let _daemon = start(&fleet, &config);
    let client = fleet.client(Protocol::Http1);
    for _ in 0..5 {
        let response = get(&fleet, &client, "/over-h2").await;
        let echo = json(&response);
        assert_eq!(response.status(), StatusCode::OK, "{echo}");
        assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_response_do_not_hurt_the_gateway() {
    let fleet = Fleet::new(1);
    let daemon = start(&fleet, &fleet.config());
    // writev(2) on a socket the peer closed raises SIGPIPE (no MSG_NOSIGNAL for
    // it); the daemon must ignore the signal or the first such client kills it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's /proc status");
    let ignored = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .expect("SigIgn mask");
    assert_ne!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE is not ignored: {status}"
    );
    for _ in 0..5 {
        let mut raw = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
        raw.write_all(b"GET /stream?bytes=33554432 HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("request");
        let mut first = [0u8; 4096];
        within(10, "first bytes", raw.read(&mut first))
            .await
            .expect("the response starts");
        // Close mid-body: the gateway's next writes meet a reset, then EPIPE.
        drop(raw);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = fleet.client(Protocol::Http1);
    assert_eq!(
        get(&fleet, &client, "/still-alive").await.status(),
        StatusCode::OK,
        "the gateway survived clients that went away"
    );
    // An upstream connection whose answer was left half read is never kept: a
    // request sent on it would read the rest of the old body as its answer.
    for i in 0..20 {
        let path = format!("/after-vanish/{i}");
        let response = get(&fleet, &client, &path).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            json(&response)["path"],
            path.as_str(),
            "an answer for another request"
        );
    }
}
