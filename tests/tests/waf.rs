//! The WAF's attack and benign corpora (`tests/corpus/`) end to end, on
//! loopback: the real gateway with its default WAF in front of a real
//! upstream that counts what reaches it. Every attack is sent over HTTP/1.1
//! and HTTP/2 with a `Content-Length`; every attack in a body also chunked
//! (split inside a token, and one byte per chunk) and as HTTP/2 DATA frames
//! without a length. Each must be answered 403 with nothing reaching the
//! upstream. Every benign lookalike must be answered 200 and arrive, in every
//! framing. One gateway per test; the clients keep
//! their connections (HTTP/1.1 keep-alive, HTTP/2 multiplexing).

use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{
    fleet::Fleet,
    http::{Body, Client, Protocol, pieces},
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};

const ATTACKS: &str = include_str!("../corpus/attacks.txt");
const BENIGN: &str = include_str!("../corpus/benign.txt");

/// One corpus line.
struct Case<'a> {
    family: &'a str,
    location: &'a str,
    payload: &'a str,
}

fn corpus(text: &str) -> Vec<Case<'_>> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(family), Some(location), Some(payload)) => Case {
                    family,
                    location,
                    payload,
                },
                _ => panic!("bad corpus line {line:?}"),
            }
        })
        .collect()
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// One piece with its length (`Content-Length` on either protocol).
    Length,
    /// Two pieces split inside the most telling token (chunked on HTTP/1.1,
    /// DATA frames without `content-length` on HTTP/2).
    SplitInToken,
    /// One byte per chunk or frame.
    BytePerChunk,
}

/// Where to cut a body so that a signature's token straddles two pieces.
fn token_split(body: &[u8]) -> usize {
    let lower = body.to_ascii_lowercase();
    [
        &b"select"[..],
        b"script",
        b"jndi",
        b"..",
        b"://",
        b"/etc",
        b"<?",
        b"or ",
        b"%00",
        b"\\u0000",
        b"'",
        b";",
        b"$(",
    ]
    .iter()
    .find_map(|token| {
        lower
            .windows(token.len())
            .position(|w| w == *token)
            .map(|at| at + token.len().div_ceil(2))
    })
    .unwrap_or(body.len() / 2)
    .clamp(1, body.len().saturating_sub(1).max(1))
}

fn body(bytes: Bytes, framing: Framing) -> Body {
    match framing {
        Framing::Length => Full::new(bytes).map_err(|never| match never {}).boxed(),
        Framing::SplitInToken => {
            let at = token_split(&bytes);
            pieces([bytes.slice(..at), bytes.slice(at..)])
        }
        Framing::BytePerChunk => pieces((0..bytes.len()).map(|i| bytes.slice(i..=i))),
    }
}

/// The request for a case: head attacks ride on a POST with a small benign
/// JSON body, so every framing is exercised for them too.
fn request(case: &Case<'_>, framing: Framing) -> Request<Body> {
    let mut builder = Request::builder().method(Method::POST);
    let mut content_type = "application/json";
    let mut payload = Bytes::from_static(br#"{"ok":true}"#);
    builder = match case.location {
        "path" => builder.uri(case.payload),
        "query" => builder.uri(format!("/search?{}", case.payload)),
        "form" | "json" | "text" => {
            content_type = match case.location {
                "form" => "application/x-www-form-urlencoded",
                "json" => "application/json",
                _ => "text/plain",
            };
            payload = Bytes::copy_from_slice(case.payload.as_bytes());
            builder.uri("/submit")
        }
        other => {
            let name = other
                .strip_prefix("header:")
                .unwrap_or_else(|| panic!("unknown location {other}"));
            builder.uri("/headers").header(name, case.payload)
        }
    };
    if !case.location.eq_ignore_ascii_case("header:content-type") {
        builder = builder.header("content-type", content_type);
    }
    builder
        .body(body(payload, framing))
        .unwrap_or_else(|err| panic!("{} {}: {err}", case.location, case.payload))
}

/// Sends every case of `text` over every (protocol, framing) and returns the
/// cases whose status was not `want`.
async fn run(
    fleet: &Fleet,
    clients: &[(Protocol, Client)],
    framings: &[Framing],
    text: &str,
    want: StatusCode,
) -> (usize, Vec<String>) {
    let mut sent = 0;
    let mut wrong = Vec::new();
    let only_bodies = !framings.iter().any(|f| matches!(f, Framing::Length));
    for case in corpus(text) {
        // An attack in the head is refused before the body is read whatever
        // its framing (the content-length run covers it); the chunked runs
        // are about attacks in the body.
        if only_bodies
            && want != StatusCode::OK
            && !matches!(case.location, "form" | "json" | "text")
        {
            continue;
        }
        for (protocol, client) in clients {
            for framing in framings {
                let response = tokio::time::timeout(
                    Duration::from_secs(15),
                    client.send_streaming(fleet.listen, request(&case, *framing)),
                )
                .await
                .unwrap_or_else(|_| panic!("{} {} timed out", case.location, case.payload));
                sent += 1;
                let status = match response {
                    Ok(response) => {
                        let status = response.status();
                        // Read the answer, so the connection can be reused.
                        let _ = response.into_body().collect().await;
                        status.to_string()
                    }
                    Err(err) => format!("error {err}"),
                };
                if status != want.to_string() {
                    wrong.push(format!(
                        "{protocol:?} {framing:?} {} {} {}: {status}",
                        case.family, case.location, case.payload
                    ));
                }
            }
        }
    }
    (sent, wrong)
}

async fn corpora_in(framings: &[Framing]) {
    let fleet = Fleet::new(1);
    let daemon = fleet.start(&fleet.config());
    daemon.wait_for_log("gateway running", Duration::from_secs(20));
    let clients = [
        (Protocol::Http1, fleet.client(Protocol::Http1)),
        (Protocol::Http2, fleet.client(Protocol::Http2)),
    ];

    let before = fleet.upstream_count().await;
    let (attacks, wrong) = run(&fleet, &clients, framings, ATTACKS, StatusCode::FORBIDDEN).await;
    let leaked = fleet.upstream_count().await - before;
    assert!(
        wrong.is_empty() && leaked == 0,
        "of {attacks} attack requests, {} were not refused with 403 and {leaked} reached the upstream:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    let before = fleet.upstream_count().await;
    let (benign, wrong) = run(&fleet, &clients, framings, BENIGN, StatusCode::OK).await;
    let arrived = fleet.upstream_count().await - before;
    assert!(
        wrong.is_empty(),
        "of {benign} benign requests, {} were not answered 200:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        arrived, benign as u64,
        "every benign request arrives upstream"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn corpora_with_content_length() {
    corpora_in(&[Framing::Length]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corpora_chunked_and_streamed() {
    corpora_in(&[Framing::SplitInToken, Framing::BytePerChunk]).await;
}
