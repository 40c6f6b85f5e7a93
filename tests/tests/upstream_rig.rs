//! The HTTP test rig on loopback (no root): test-upstream requires a client
//! certificate from its CA, speaks HTTP/1.1 and HTTP/2, streams large bodies, counts
//! requests, and the client and PKI helpers behave as documented.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway_tests::{
    http::{Client, Filler, Protocol, body_len, raw_tls},
    pki::Ca,
    upstream::Upstream,
};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The JSON body of a response.
fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|err| panic!("invalid JSON ({err}): {}", String::from_utf8_lossy(body)))
}

/// Asserts that `GET /` fails with the TLS alert `alert` from the upstream.
async fn refused(client: &Client, addr: SocketAddr, alert: &str) {
    let err = client
        .get(addr, "/")
        .await
        .expect_err("the upstream must refuse this client");
    assert!(
        err.to_string()
            .contains(&format!("received fatal alert: {alert}")),
        "expected the TLS alert {alert}, got: {err}"
    );
}

/// The fleet: a CA, a client certificate "gateway" and a client trusting the CA.
struct Fleet {
    ca: Ca,
    upstream: Upstream,
}

impl Fleet {
    fn start(http2: bool) -> Self {
        let ca = Ca::new("fleet CA");
        let server = ca.issue_server(&["upstream.test", "127.0.0.1"]);
        let builder = Upstream::builder("up-a", &server, ca.cert_pem());
        let upstream = if http2 { builder.http2() } else { builder }.start();
        Self { ca, upstream }
    }

    fn client(&self, protocol: Protocol) -> Client {
        Client::builder(self.ca.cert_pem(), "upstream.test")
            .identity(&self.ca.issue_client("gateway"))
            .protocol(protocol)
            .build()
    }

    async fn count(&self) -> u64 {
        let response = self
            .client(Protocol::Http1)
            .get(self.upstream.addr(), "/count")
            .await
            .expect("GET /count");
        json(response.body())["count"]
            .as_u64()
            .expect("count is a number")
    }
}

#[tokio::test]
async fn refuses_a_client_without_a_certificate_and_serves_one_with() {
    let fleet = Fleet::start(false);
    let anonymous = Client::builder(fleet.ca.cert_pem(), "upstream.test").build();
    refused(&anonymous, fleet.upstream.addr(), "CertificateRequired").await;

    let response = fleet
        .client(Protocol::Http1)
        .get(fleet.upstream.addr(), "/hello?x=1")
        .await
        .expect("a client with a fleet certificate is served");
    assert_eq!(response.status(), StatusCode::OK);
    let body = json(response.body());
    assert_eq!(body["upstream"], "up-a");
    assert_eq!(body["client_cert_cn"], "gateway");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["headers"]["host"], "upstream.test");
    assert_eq!(fleet.count().await, 1, "only the served request counts");
}

#[tokio::test]
async fn refuses_a_client_certificate_from_another_ca() {
    let fleet = Fleet::start(false);
    let other = Ca::new("other CA");
    let stranger = Client::builder(fleet.ca.cert_pem(), "upstream.test")
        .identity(&other.issue_client("gateway"))
        .build();
    refused(&stranger, fleet.upstream.addr(), "UnknownCA").await;
    assert_eq!(fleet.count().await, 0, "nothing reached the upstream");
    assert!(
        fleet.upstream.log().contains("TLS handshake"),
        "the upstream logs the refused handshake:\n{}",
        fleet.upstream.log()
    );
}

#[tokio::test]
async fn client_checks_the_server_certificate() {
    let ca = Ca::new("fleet CA");
    let client_cert = ca.issue_client("gateway");
    for (server, name, ok) in [
        (
            ca.issue_server_rsa(&["upstream.test"]),
            "upstream.test",
            true,
        ),
        (ca.issue_server(&["127.0.0.1"]), "127.0.0.1", true),
        (ca.issue_server(&["elsewhere.test"]), "upstream.test", false),
        (
            ca.issue_server_expired(&["upstream.test"]),
            "upstream.test",
            false,
        ),
        (
            Ca::new("other CA").issue_server(&["upstream.test"]),
            "upstream.test",
            false,
        ),
    ] {
        let upstream = Upstream::builder("up-a", &server, ca.cert_pem()).start();
        let client = Client::builder(ca.cert_pem(), name)
            .identity(&client_cert)
            .build();
        let result = client.get(upstream.addr(), "/").await;
        assert_eq!(
            result.is_ok(),
            ok,
            "server name {name}, certificate {}: {result:?}",
            server.cert_pem
        );
    }
}

#[tokio::test]
async fn http1_and_http2_both_work_and_large_bodies_stream() {
    let fleet = Fleet::start(true);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        let response = client
            .get(fleet.upstream.addr(), "/")
            .await
            .unwrap_or_else(|err| panic!("{protocol:?}: {err}"));
        let expected = match protocol {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2.0",
        };
        assert_eq!(json(response.body())["version"], expected);

        let request = Request::get("/stream?bytes=5000000")
            .body(Filler::new(0).boxed())
            .expect("valid request");
        let response = client
            .send_streaming(fleet.upstream.addr(), request)
            .await
            .unwrap_or_else(|err| panic!("{protocol:?} /stream: {err}"));
        assert_eq!(response.status(), StatusCode::OK);
        let len = body_len(response.into_body())
            .await
            .unwrap_or_else(|err| panic!("{protocol:?} reading /stream: {err}"));
        assert_eq!(len, 5_000_000, "{protocol:?}: the whole body arrives");

        let request = Request::post("/upload")
            .body(Filler::new(3_000_000).boxed())
            .expect("valid request");
        let response = client
            .send_streaming(fleet.upstream.addr(), request)
            .await
            .unwrap_or_else(|err| panic!("{protocol:?} upload: {err}"));
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("upload response body")
            .to_bytes();
        assert_eq!(json(&body)["body_bytes"], 3_000_000);
    }
}

#[tokio::test]
async fn http2_client_needs_an_upstream_that_offers_h2() {
    let fleet = Fleet::start(false);
    refused(
        &fleet.client(Protocol::Http2),
        fleet.upstream.addr(),
        "NoApplicationProtocol",
    )
    .await;
}

#[tokio::test]
async fn count_health_status_and_slow_routes() {
    let fleet = Fleet::start(false);
    let client = fleet.client(Protocol::Http1);
    let addr = fleet.upstream.addr();
    for _ in 0..3 {
        client.get(addr, "/a").await.expect("GET /a");
    }
    let healthz = client.get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(healthz.status(), StatusCode::OK);
    assert_eq!(fleet.count().await, 3, "/healthz and /count do not count");

    let post = |path: &'static str| {
        Request::post(path)
            .body(Bytes::new())
            .expect("valid request")
    };
    client
        .send(addr, post("/admin/health/fail"))
        .await
        .expect("POST /admin/health/fail");
    let healthz = client.get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(healthz.status(), StatusCode::SERVICE_UNAVAILABLE);
    client
        .send(addr, post("/admin/health/ok"))
        .await
        .expect("POST /admin/health/ok");
    let healthz = client.get(addr, "/healthz").await.expect("GET /healthz");
    assert_eq!(healthz.status(), StatusCode::OK);

    let failing = client
        .get(addr, "/status/500")
        .await
        .expect("GET /status/500");
    assert_eq!(failing.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(failing.body()).contains("internal error: stack trace"));

    let start = Instant::now();
    client.get(addr, "/slow?ms=300").await.expect("GET /slow");
    assert!(start.elapsed() >= Duration::from_millis(300), "/slow waits");
    assert_eq!(
        fleet.count().await,
        5,
        "/status and /slow count, /admin does not"
    );
}

#[tokio::test]
async fn kill_and_restart_keep_the_address() {
    let mut fleet = Fleet::start(false);
    let client = fleet.client(Protocol::Http1);
    let addr = fleet.upstream.addr();
    client.get(addr, "/").await.expect("served before the kill");
    fleet.upstream.kill();
    client
        .get(addr, "/")
        .await
        .expect_err("a killed upstream serves nothing");
    fleet.upstream.restart();
    assert_eq!(fleet.upstream.addr(), addr, "restart keeps the address");
    client
        .get(addr, "/")
        .await
        .expect("served after the restart");
    assert_eq!(fleet.count().await, 1, "a new process counts from zero");
}

#[tokio::test]
async fn raw_tls_reaches_the_upstream_which_wants_a_client_certificate() {
    let fleet = Fleet::start(false);
    let mut stream = raw_tls(fleet.upstream.addr(), "upstream.test", fleet.ca.cert_pem()).await;
    // TLS 1.3: the client finishes its handshake first; the refusal comes on read.
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        .await;
    let mut reply = Vec::new();
    let err = stream
        .read_to_end(&mut reply)
        .await
        .expect_err("the upstream refuses a client without a certificate");
    assert!(
        err.to_string().contains("CertificateRequired"),
        "expected the CertificateRequired alert, got: {err}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_upstream_promptly_with_a_connection_open() {
    let mut fleet = Fleet::start(true);
    let client = fleet.client(Protocol::Http2);
    client
        .get(fleet.upstream.addr(), "/")
        .await
        .expect("served before SIGTERM");
    let start = Instant::now();
    let status = fleet.upstream.terminate();
    assert!(status.success(), "SIGTERM is a clean exit, got {status}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?}",
        start.elapsed()
    );
}
