//! Hostile framing end to end on loopback: the real gateway in front of real
//! upstreams that count what reaches them, clients writing raw bytes over
//! TLS. Every smuggling shape is answered 400 on a closed connection with
//! nothing (not even a prefix) forwarded and the request behind it never
//! read; a body is inspected whatever its framing; a client that breaks its
//! own bodies never costs an endpoint anything; quotas charge admitted
//! requests only and every answer on a quota route says what is left.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use gateway::config::{LimitKey, Oversize, Period, QuotaConfig, WafMode};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, route},
    gateway::Daemon,
    http::{Body, Client, Protocol, json, pieces, raw_tls, raw_tls_alpn},
};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A request that must never arrive: it follows every refused one on the
/// same connection.
const CANARY: &str = "GET /canary HTTP/1.1\r\nHost: api.test\r\n\r\n";

/// A JSON body every SQL-injection rule set refuses.
const SQLI: &str = r#"{"q": "1' UNION SELECT password FROM users--"}"#;
/// Where [`SQLI`] splits between two tokens.
const SQLI_SPLIT: usize = 15;

async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

/// Writes `bytes` in one go on a new TLS connection and reads until the
/// gateway closes it (a hang fails: the connection must close).
async fn exchange(fleet: &Fleet, bytes: &[u8]) -> String {
    exchange_on(
        raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await,
        bytes,
    )
    .await
}

/// [`exchange`] on the connection `tls`.
async fn exchange_on(mut tls: impl AsyncRead + AsyncWrite + Unpin, bytes: &[u8]) -> String {
    within(10, "writing", tls.write_all(bytes))
        .await
        .expect("write");
    let mut answer = Vec::new();
    // A reset after the answer also closes; what was read is kept.
    let _ = within(
        10,
        "the gateway closing the connection",
        tls.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// `parts` as chunked framing, each part one chunk.
fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `parts` one frame each, with no length announced (HTTP/2 without
/// `content-length`).
fn unsized_body(parts: &[&[u8]]) -> Body {
    pieces(parts.iter().map(|p| Bytes::copy_from_slice(p)))
}

/// Starts the gateway with health checks that a busy machine does not fail
/// by accident, and waits until `/ready/` is served.
async fn started(fleet: &Fleet, config: &gateway::config::Config) -> Daemon {
    let mut config = config.clone();
    for pool in config.upstreams.values_mut() {
        pool.health.timeout = Duration::from_secs(3);
        pool.health.unhealthy_threshold = 3;
    }
    config.routes.insert(0, route("ready", "/ready/"));
    let daemon = fleet.start(&config);
    daemon.wait_for_log("gateway running", Duration::from_secs(20));
    let client = fleet.client(Protocol::Http1);
    for _ in 0..100 {
        let ready = Request::get("/ready/").body(Bytes::new()).expect("request");
        if send(fleet, &client, ready).await.status() == StatusCode::OK {
            return daemon;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fleet never became healthy; log:\n{}", daemon.log());
}

/// Sends `request` and reads the whole answer.
async fn send(fleet: &Fleet, client: &Client, request: Request<Bytes>) -> Response<Bytes> {
    let what = format!("{} {}", request.method(), request.uri());
    within(15, &what, client.send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

/// The value of every sample of `metric` on the admin listener's /metrics.
async fn samples(admin: SocketAddr, metric: &str) -> Vec<(String, f64)> {
    let mut stream = within(
        5,
        "connecting to admin",
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .expect("admin listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("scrape request");
    let mut raw = Vec::new();
    within(10, "scraping", stream.read_to_end(&mut raw))
        .await
        .expect("scrape");
    String::from_utf8_lossy(&raw)
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| {
            let (labels, value) = line.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_get_400_on_a_closed_connection_and_nothing_is_forwarded() {
    let fleet = Fleet::new(1);
    let daemon = started(&fleet, &fleet.config()).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let post = |fields: &str, body: &str| {
        format!("POST /orders HTTP/1.1\r\nHost: api.test\r\n{fields}\r\n{body}")
    };
    let te = "Transfer-Encoding: chunked\r\n";
    let cases: Vec<(&str, String)> = vec![
        // Both framings, either order (CL.TE, TE.CL).
        (
            "CL.TE",
            post(
                &format!("Content-Length: {}\r\n{te}", 5 + smuggled.len()),
                &format!("0\r\n\r\n{smuggled}"),
            ),
        ),
        (
            "TE.CL",
            post(
                &format!("{te}Content-Length: 4\r\n"),
                &format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
            ),
        ),
        // Content-Length that is not one canonical decimal.
        (
            "CL leading zero",
            post("Content-Length: 010\r\n", "0123456789"),
        ),
        ("CL plus", post("Content-Length: +5\r\n", "hello")),
        ("CL minus", post("Content-Length: -5\r\n", "hello")),
        ("CL hex", post("Content-Length: 0x5\r\n", "hello")),
        ("CL list", post("Content-Length: 5, 5\r\n", "hello")),
        (
            "CL twice, equal",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "CL twice, differing",
            post("Content-Length: 0\r\nContent-Length: 5\r\n", "hello"),
        ),
        ("CL trailing space", post("Content-Length: 5 \r\n", "hello")),
        ("CL two spaces", post("Content-Length:  5\r\n", "hello")),
        ("CL tab", post("Content-Length:\t5\r\n", "hello")),
        (
            "CL inner space",
            post("Content-Length: 1 0\r\n", "0123456789"),
        ),
        (
            "CL overflow",
            post("Content-Length: 18446744073709551621\r\n", "hello"),
        ),
        // Transfer-Encoding other than exactly `chunked`.
        (
            "TE upper case",
            post("Transfer-Encoding: Chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE list",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE chunked twice",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
        ),
        ("TE two fields", post(&format!("{te}{te}"), "0\r\n\r\n")),
        (
            "TE and a bogus TE",
            post(&format!("{te}Transfer-Encoding: x\r\n"), "0\r\n\r\n"),
        ),
        (
            "TE identity",
            post("Transfer-Encoding: identity\r\n", "hello"),
        ),
        (
            "TE space before colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE tab",
            post("Transfer-Encoding:\tchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE trailing space",
            post("Transfer-Encoding: chunked \r\n", "0\r\n\r\n"),
        ),
        (
            "TE in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nHost: api.test\r\n{te}\r\n0\r\n\r\n"),
        ),
        // Malformed chunked framing.
        (
            "chunk size overflow",
            post(te, "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size leading space",
            post(te, " 5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size leading tab",
            post(te, "\t5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size trailing space",
            post(te, "5 \r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk size 0x", post(te, "0x5\r\nhello\r\n0\r\n\r\n")),
        ("chunk size sign", post(te, "+5\r\nhello\r\n0\r\n\r\n")),
        ("chunk size empty", post(te, "\r\nhello\r\n0\r\n\r\n")),
        (
            "bare LF in a chunk extension",
            post(te, "5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk line ends in LF", post(te, "5\nhello\r\n0\r\n\r\n")),
        (
            "more data than the chunk size",
            post(te, "3\r\nhello\r\n0\r\n\r\n"),
        ),
        ("no CRLF after the data", post(te, "5\r\nhello0\r\n\r\n")),
        (
            "trailer without a colon",
            post(te, "5\r\nhello\r\n0\r\nX-Sum 1\r\n\r\n"),
        ),
        (
            "trailer with a length",
            post(te, "5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
        ),
        (
            "trailer ends in bare LF",
            post(te, "5\r\nhello\r\n0\r\nX-Sum: 1\n\n"),
        ),
        // Host.
        ("no Host", "GET / HTTP/1.1\r\n\r\n".to_owned()),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: api.test\r\nHost: api.test\r\n\r\n".to_owned(),
        ),
        (
            "two different Hosts",
            "GET / HTTP/1.1\r\nHost: api.test\r\nHost: admin.api.test\r\n\r\n".to_owned(),
        ),
        ("empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n".to_owned()),
        (
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: api.test evil\r\n\r\n".to_owned(),
        ),
        (
            "Host with user info",
            "GET / HTTP/1.1\r\nHost: x@api.test\r\n\r\n".to_owned(),
        ),
        (
            "Host with a bad port",
            "GET / HTTP/1.1\r\nHost: api.test:99999\r\n\r\n".to_owned(),
        ),
        (
            "absolute-form authority differs from Host",
            "GET https://admin.api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n".to_owned(),
        ),
        // Head syntax.
        (
            "obsolete line folding",
            "GET / HTTP/1.1\r\nHost: api.test\r\nX-Folded: a\r\n b\r\n\r\n".to_owned(),
        ),
        (
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: api.test\n\n".to_owned(),
        ),
    ];
    let before = fleet.upstream_count().await;
    for (name, case) in &cases {
        let answer = exchange(&fleet, format!("{case}{CANARY}").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer:?}");
        let answers = answer.matches("HTTP/1.1 ").count();
        assert_eq!(answers, 1, "{name}: answered more than once: {answer:?}");
        assert!(!answer.contains("canary"), "{name}: {answer:?}");
    }
    assert_eq!(
        fleet.upstream_count().await,
        before,
        "no refused request, nor a prefix of its body, nor a canary reached the upstream"
    );
    // The same connection shapes, well framed, do arrive (the rig counts).
    for good in [
        post("Content-Length: 5\r\n", "hello"),
        post(te, "5;ext=\"a b\"\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
    ] {
        let answer = exchange(
            &fleet,
            format!(
                "{good}{}",
                CANARY.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            )
            .as_bytes(),
        )
        .await;
        let answers: Vec<&str> = answer.matches("HTTP/1.1 200 OK").collect();
        assert_eq!(answers.len(), 2, "{good:?}: {answer}");
    }
    assert_eq!(fleet.upstream_count().await, before + 4);
    // A refused head is a `malformed` signal of the client, in the access log.
    let log = daemon.log();
    assert!(
        log.contains("malformed_request"),
        "refused heads are logged: {log}"
    );
    daemon.stop();
}

/// A connection speaks the protocol ALPN chose. A client that chose `h2` and
/// then speaks HTTP/1.1 is not served: its bytes would reach hyper without the
/// framing scanner (HTTP/2 frames its own messages), so a smuggling shape would
/// pass. The other way round, an HTTP/2 preface on an HTTP/1.1 connection is a
/// bad head.
#[tokio::test(flavor = "multi_thread")]
async fn each_connection_speaks_only_the_protocol_alpn_chose() {
    let fleet = Fleet::new(1);
    let daemon = started(&fleet, &fleet.config()).await;
    let before = fleet.upstream_count().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}{CANARY}",
        5 + smuggled.len()
    );
    let tls = raw_tls_alpn(
        fleet.listen,
        EDGE_NAME,
        fleet.edge_ca.cert_pem(),
        Protocol::Http2,
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let answer = exchange_on(tls, request.as_bytes()).await;
    assert!(!answer.contains("HTTP/1"), "answered in HTTP/1: {answer:?}");
    let answer = exchange(&fleet, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(
        fleet.upstream_count().await,
        before,
        "nothing of either reached the upstream"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_is_inspected_whatever_its_framing() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let mut small = route("small", "/small/");
    small.waf.inspect_body_bytes = 1024;
    let mut prefix = route("prefix", "/prefix/");
    prefix.waf.inspect_body_bytes = 1024;
    prefix.waf.oversize = Oversize::InspectPrefix;
    config.routes.splice(0..0, [small, prefix]);
    let daemon = started(&fleet, &config).await;
    let before = fleet.upstream_count().await;
    let sqli = SQLI.as_bytes();
    let (left, right) = sqli.split_at(SQLI_SPLIT);
    assert_eq!(
        left, br#"{"q": "1' UNION"#,
        "the split is at a token boundary"
    );
    let head_at = |path: &str, framing: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nConnection: close\r\n{framing}\r\n"
        )
        .into_bytes()
    };
    let head = |framing: &str| head_at("/api/orders", framing);
    let one_byte_chunks: Vec<&[u8]> = sqli.chunks(1).collect();
    let raw: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length",
            [
                head(&format!("Content-Length: {}\r\n", sqli.len())),
                sqli.to_vec(),
            ]
            .concat(),
        ),
        (
            "chunked",
            [head("Transfer-Encoding: chunked\r\n"), chunked(&[sqli])].concat(),
        ),
        (
            "one byte per chunk",
            [
                head("Transfer-Encoding: chunked\r\n"),
                chunked(&one_byte_chunks),
            ]
            .concat(),
        ),
        (
            "split at a token boundary",
            [
                head("Transfer-Encoding: chunked\r\n"),
                chunked(&[left, right]),
            ]
            .concat(),
        ),
    ];
    for (name, bytes) in &raw {
        let answer = exchange(&fleet, bytes).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{name}: {answer}");
        assert!(answer.contains("waf_blocked"), "{name}: {answer}");
    }
    let h2 = fleet.client(Protocol::Http2);
    let with_length = Request::post("/api/orders")
        .header("content-type", "application/json")
        .body(Bytes::from_static(SQLI.as_bytes()))
        .expect("request");
    let response = send(&fleet, &h2, with_length).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "HTTP/2 with content-length"
    );
    for (name, parts) in [
        ("HTTP/2 without content-length", vec![sqli]),
        ("HTTP/2 split at a token boundary", vec![left, right]),
        ("HTTP/2 one byte per frame", one_byte_chunks.clone()),
    ] {
        let request = Request::post("/api/orders")
            .header("content-type", "application/json")
            .body(unsized_body(&parts))
            .expect("request");
        let response = within(15, name, h2.send_streaming(fleet.listen, request))
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{name}");
    }
    assert_eq!(
        fleet.upstream_count().await,
        before,
        "no SQL injection reached the upstream, whatever its framing"
    );

    // The same framings with a harmless body arrive.
    let benign = br#"{"q": "select shoes from the catalogue", "name": "O'Brien"}"#;
    let benign_chunks: Vec<&[u8]> = benign.chunks(3).collect();
    let answer = exchange(
        &fleet,
        &[
            head("Transfer-Encoding: chunked\r\n"),
            chunked(&benign_chunks),
        ]
        .concat(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(echo["body_bytes"], benign.len(), "{answer}");
    let request = Request::post("/api/orders")
        .header("content-type", "application/json")
        .body(unsized_body(&benign_chunks))
        .expect("request");
    let response = within(
        15,
        "benign HTTP/2",
        h2.send_streaming(fleet.listen, request),
    )
    .await
    .expect("benign HTTP/2");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fleet.upstream_count().await, before + 2);

    // Longer than inspect_body_bytes: refused by default, whatever the
    // framing; `oversize = "inspect_prefix"` inspects the first part only.
    let long = format!(r#"{{"q": "{}"}}"#, "a".repeat(2000));
    let chunks: Vec<&[u8]> = long.as_bytes().chunks(100).collect();
    for (path, want) in [
        ("/small/x", StatusCode::PAYLOAD_TOO_LARGE),
        ("/prefix/x", StatusCode::OK),
    ] {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(unsized_body(&chunks))
            .expect("request");
        let response = within(15, path, h2.send_streaming(fleet.listen, request))
            .await
            .expect(path);
        assert_eq!(response.status(), want, "{path} over HTTP/2");
        let answer = exchange(
            &fleet,
            &[
                head_at(path, "Transfer-Encoding: chunked\r\n"),
                chunked(&chunks),
            ]
            .concat(),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {}", want.as_u16())),
            "{path} chunked: {answer}"
        );
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_breaking_their_bodies_eject_nothing_and_every_endpoint_keeps_serving() {
    let fleet = Fleet::new(3);
    let mut config = fleet.config();
    // Bodies larger than the retry buffer stream: the endpoint has already
    // seen part of the body when the client breaks it.
    let mut stream = route("stream", "/stream/");
    stream.waf.mode = WafMode::Off;
    config.routes.insert(0, stream);
    let pool = config.upstreams.get_mut("fleet").expect("the fleet pool");
    pool.outlier.consecutive_failures = 2;
    let daemon = started(&fleet, &config).await;

    let malformed = [
        "10000000000000005\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "3\r\nhello\r\n0\r\n\r\n",
    ];
    for round in 0..4 {
        for body in malformed {
            let answer = exchange(
                &fleet,
                format!(
                    "POST /orders HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
                )
                .as_bytes(),
            )
            .await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "round {round} {body:?}: {answer}"
            );
            assert!(!answer.contains("upstream_error"), "{answer}");
        }
    }
    // Streamed bodies the client cuts off or breaks after the endpoint got
    // their first part.
    let prefix = vec![b'x'; 200 * 1024];
    for round in 0..3 {
        let mut tls = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
        let head =
            "POST /stream/upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10000000\r\n\r\n";
        within(10, "writing", tls.write_all(head.as_bytes()))
            .await
            .expect("head");
        within(10, "writing", tls.write_all(&prefix))
            .await
            .expect("prefix");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tls);
        let mut tls = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
        let head =
            "POST /stream/upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend_from_slice(format!("{:x}\r\n", prefix.len()).as_bytes());
        bytes.extend_from_slice(&prefix);
        bytes.extend_from_slice(b"\r\nzz\r\n");
        within(10, "writing", tls.write_all(&bytes))
            .await
            .expect("broken chunk");
        let mut answer = Vec::new();
        let _ = within(10, "the answer", tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "round {round}: {answer}"
        );
    }

    // Nothing was ejected or marked unhealthy…
    let ejected = samples(fleet.admin, "gateway_upstream_endpoint_ejected").await;
    assert_eq!(
        ejected.len(),
        3,
        "one ejection gauge per endpoint: {ejected:?}"
    );
    assert!(ejected.iter().all(|(_, v)| *v == 0.0), "{ejected:?}");
    let healthy = samples(fleet.admin, "gateway_upstream_endpoint_healthy").await;
    assert_eq!(healthy.len(), 3, "{healthy:?}");
    assert!(healthy.iter().all(|(_, v)| *v == 1.0), "{healthy:?}");
    let log = daemon.log();
    assert!(!log.contains("endpoint ejected"), "{log}");
    // … no access line of a client's fault names an upstream or endpoint…
    let faults: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["stream"] == "access" && line["error.type"] == "bad_body")
        .collect();
    assert!(faults.len() >= 20, "{} bad_body lines: {log}", faults.len());
    for line in &faults {
        assert!(
            line["upstream"].is_null() && line["endpoint"].is_null(),
            "a client's fault names an upstream: {line}"
        );
        assert_eq!(line["http.response.status_code"], 400, "{line}");
    }
    // … and every endpoint serves other clients at once.
    let other = fleet.client(Protocol::Http2);
    for _ in 0..30 {
        let get = Request::get("/after").body(Bytes::new()).expect("request");
        assert_eq!(send(&fleet, &other, get).await.status(), StatusCode::OK);
    }
    for upstream in &fleet.upstreams {
        let count = fleet.count_at(upstream, &fleet.fleet_ca, FLEET_NAME).await;
        assert!(count >= 3, "{} served only {count}", upstream.addr());
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_charge_admitted_requests_and_every_answer_carries_the_headers() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes[0].quotas = vec![QuotaConfig {
        name: "daily".to_owned(),
        key: LimitKey::Client,
        requests: 3,
        period: Period::Day,
    }];
    let daemon = started(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);
    let remaining = |response: &Response<Bytes>| {
        assert!(
            response.headers().contains_key("quota-reset"),
            "no quota-reset on {}",
            response.status()
        );
        response
            .headers()
            .get("quota-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no quota-remaining on {}", response.status()))
    };
    let blocked = || {
        Request::post("/orders")
            .header("content-type", "application/json")
            .body(Bytes::from_static(SQLI.as_bytes()))
            .expect("request")
    };
    let get = || Request::get("/").body(Bytes::new()).expect("request");

    // Refused by the WAF (on the body and on the head) or for a malformed
    // body: answered with the quota untouched.
    for _ in 0..3 {
        let response = send(&fleet, &client, blocked()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(remaining(&response), 3, "a WAF block is not charged");
    }
    let head_block = Request::get("/?q=1%27%20UNION%20SELECT%20password%20FROM%20users--")
        .body(Bytes::new())
        .expect("request");
    let response = send(&fleet, &client, head_block).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(remaining(&response), 3);
    let answer = exchange(
        &fleet,
        b"POST /orders HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("quota-remaining: 3\r\n"), "{answer}");

    // Admitted requests are charged…
    for expected in [2, 1, 0] {
        let response = send(&fleet, &client, get()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(remaining(&response), expected);
    }
    // … a WAF block is still a 403 (the WAF comes first), and the spent
    // quota answers 429 with its headers.
    let response = send(&fleet, &client, blocked()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(remaining(&response), 0);
    let response = send(&fleet, &client, get()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&response)["error"], "quota_exceeded");
    assert_eq!(remaining(&response), 0);
    daemon.stop();
}
