//! What operators see, end to end on loopback: the real `gateway` binary in
//! front of real mTLS `test-upstream` processes, scraped over its admin
//! listener the way Prometheus and a load balancer's health check would.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use gateway_tests::{
    fleet::Fleet,
    http::{Client, Protocol},
};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Bounds every await, so a hang fails the test instead of the suite.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

/// `GET path` on the admin listener: (status, body).
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    within(10, &format!("GET {path} on the admin listener"), async {
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .unwrap_or_else(|err| panic!("connecting to the admin listener {admin}: {err}"));
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("sending the admin request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("reading the admin response");
        let text = String::from_utf8(raw).expect("UTF-8 admin response");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {text}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        (status, body.to_owned())
    })
    .await
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text format strictly enough that a malformed line fails the test.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    let labels = inner
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of `name` whose labels include all of `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

async fn scrape(fleet: &Fleet) -> Vec<Sample> {
    let (status, body) = admin_get(fleet.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

/// Scrapes until `check` holds; panics with the last scrape after `seconds`.
async fn scrape_until(fleet: &Fleet, seconds: u64, what: &str, check: impl Fn(&[Sample]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let samples = scrape(fleet).await;
        if check(&samples) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what} not seen within {seconds} s; last scrape: {samples:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(fleet: &Fleet, client: &Client, uri: &str) -> StatusCode {
    let request = Request::get(uri).body(Bytes::new()).expect("valid request");
    within(15, uri, client.send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("GET {uri}: {err}"))
        .status()
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_follow_endpoint_health() {
    let mut fleet = Fleet::new(2);
    let daemon = fleet.start(&fleet.config());
    let client = fleet.client(Protocol::Http1);

    for _ in 0..3 {
        assert_eq!(get(&fleet, &client, "/echo").await, StatusCode::OK);
    }
    assert_eq!(
        get(&fleet, &client, "/a/%2F/b").await,
        StatusCode::BAD_REQUEST
    );

    let samples = scrape(&fleet).await;
    let ok = [("listener", "public"), ("route", "all"), ("status", "200")];
    assert_eq!(metric(&samples, "gateway_requests_total", &ok), Some(3.0));
    assert_eq!(
        metric(
            &samples,
            "gateway_requests_total",
            &[("route", "none"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &samples,
            "gateway_request_errors_total",
            &[("code", "invalid_path")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &samples,
            "gateway_request_duration_seconds_count",
            &[("route", "all")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &samples,
            "gateway_upstream_duration_seconds_count",
            &[("route", "all"), ("upstream", "fleet")]
        ),
        Some(3.0)
    );
    let dead = fleet.upstreams[0].addr().to_string();
    let alive = fleet.upstreams[1].addr().to_string();
    for endpoint in [&dead, &alive] {
        assert_eq!(
            metric(
                &samples,
                "gateway_upstream_endpoint_healthy",
                &[("upstream", "fleet"), ("endpoint", endpoint)]
            ),
            Some(1.0),
            "{endpoint} healthy"
        );
    }
    assert_eq!(
        metric(
            &samples,
            "gateway_upstream_healthy_endpoints",
            &[("upstream", "fleet")]
        ),
        Some(2.0)
    );
    assert_eq!(admin_get(fleet.admin, "/readyz").await.0, 200);
    assert_eq!(admin_get(fleet.admin, "/healthz").await.0, 200);

    fleet.upstreams[0].kill();
    scrape_until(&fleet, 15, "the killed endpoint's health gauge at 0", |s| {
        metric(
            s,
            "gateway_upstream_endpoint_healthy",
            &[("endpoint", &dead)],
        ) == Some(0.0)
            && metric(
                s,
                "gateway_upstream_endpoint_healthy",
                &[("endpoint", &alive)],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(admin_get(fleet.admin, "/readyz").await.0, 200);

    fleet.upstreams[1].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = admin_get(fleet.admin, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {status} with every endpoint dead: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("fleet"), "{body}");
    daemon.stop();
}

#[tokio::test]
async fn admin_is_not_on_the_public_listener_and_config_is_shown_redacted() {
    let fleet = Fleet::new(1);
    let daemon = fleet.start(&fleet.config());

    // The public listener speaks TLS only: a plain scrape there gets no metrics.
    let public = within(10, "plain HTTP to the public listener", async {
        let mut stream = tokio::net::TcpStream::connect(fleet.listen)
            .await
            .expect("connecting to the public listener");
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    })
    .await;
    assert!(!public.contains("gateway_"), "{public}");
    // And over TLS the path is an ordinary request routed to the fleet.
    let client = fleet.client(Protocol::Http1);
    let request = Request::get("/metrics")
        .body(Bytes::new())
        .expect("valid request");
    let response = within(15, "GET /metrics", client.send(fleet.listen, request))
        .await
        .expect("GET /metrics through the proxy");
    assert!(
        !String::from_utf8_lossy(response.body()).contains("gateway_requests_total"),
        "the public listener served metrics"
    );

    let (status, body) = admin_get(fleet.admin, "/config").await;
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    assert_eq!(config["listener"][0]["name"], "public");
    assert_eq!(config["admin"]["address"], fleet.admin.to_string());
    let key = config["upstream"]["fleet"]["client_key"]
        .as_str()
        .expect("key paths are shown");
    assert!(key.ends_with(".key") || key.ends_with(".pem"), "{key}");
    daemon.stop();
}
