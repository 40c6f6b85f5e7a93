//! Abuse control end to end on loopback: the real gateway in front of real
//! upstreams, XDP off. The WAF answers 403 with its rule id, monitor mode and
//! benign lookalikes pass, L7 limits answer 429 with the draft headers, and
//! the abuse loop decides a block whose provenance `gateway explain` shows.

use std::time::Duration;

use bytes::Bytes;
use gateway::config::{AbuseSection, LimitConfig, LimitKey, Period, QuotaConfig, WafMode};
use gateway_tests::{
    fleet::{EDGE_NAME, Fleet, route},
    http::{Client, Protocol, json, raw_tls},
};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The wrk test saturates the machine; the others wait for it (and it for
/// them), or their health checks would time out under its load.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

async fn send(fleet: &Fleet, client: &Client, request: Request<Bytes>) -> Response<Bytes> {
    let what = format!("{} {}", request.method(), request.uri());
    within(15, &what, client.send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

async fn get(fleet: &Fleet, client: &Client, uri: &str) -> Response<Bytes> {
    send(
        fleet,
        client,
        Request::get(uri).body(Bytes::new()).expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn waf_blocks_with_rule_id_lookalikes_pass_and_the_loop_decides_a_block() {
    let _shared = LOAD.read().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let mut watch = route("watch", "/watch/");
    watch.waf.mode = WafMode::Monitor;
    let mut api = route("api", "/api/");
    api.waf.renders_html = false;
    api.waf.content_types = vec!["application/json".to_owned()];
    config.routes.extend([watch, api]);
    config.abuse = AbuseSection {
        enabled: true,
        threshold: 10,
        ..AbuseSection::default()
    };
    let daemon = fleet.start(&config);
    daemon.wait_for_log("gateway running", Duration::from_secs(20));
    let client = fleet.client(Protocol::Http1);

    let blocked = get(
        &fleet,
        &client,
        "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
    )
    .await;
    assert_eq!(blocked.status(), StatusCode::FORBIDDEN);
    let body = json(&blocked);
    assert_eq!(body["error"], "waf_blocked");
    assert_eq!(body["rule"], "xss-001");
    assert!(
        !body["request_id"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    // The access line of the blocked request says who, what and why.
    let request_id = body["request_id"].as_str().unwrap_or_default().to_owned();
    daemon.wait_for_log(&request_id, Duration::from_secs(10));
    let log = daemon.log();
    let line: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["stream"] == "access" && line["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no access line for {request_id}:\n{log}"));
    for (field, want) in [
        ("http.response.status_code", serde_json::json!(403)),
        ("decision", serde_json::json!("deny")),
        ("error.type", serde_json::json!("waf_blocked")),
        ("client.address", serde_json::json!("127.0.0.1")),
        ("http.request.method", serde_json::json!("GET")),
        ("url.path", serde_json::json!("/search")),
    ] {
        assert_eq!(line[field], want, "access field {field}: {line}");
    }

    let watched = get(
        &fleet,
        &client,
        "/watch/?q=%3Cscript%3Ealert(1)%3C/script%3E",
    )
    .await;
    assert_eq!(watched.status(), StatusCode::OK, "monitor mode passes");
    for benign in [
        "/search?q=select+shoes",
        "/people?name=O%27Brien",
        "/versions?range=1..5",
    ] {
        assert_eq!(
            get(&fleet, &client, benign).await.status(),
            StatusCode::OK,
            "{benign}"
        );
    }
    let post = Request::post("/api/people")
        .header("content-type", "application/json")
        .body(Bytes::from_static(
            br#"{"name": "O'Brien", "bio": "<b>bold</b> and select shoes"}"#,
        ))
        .expect("request");
    assert_eq!(send(&fleet, &client, post).await.status(), StatusCode::OK);
    let xml = Request::post("/api/people")
        .header("content-type", "text/xml")
        .body(Bytes::from_static(b"<a/>"))
        .expect("request");
    assert_eq!(
        send(&fleet, &client, xml).await.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let sqli = Request::post("/api/people")
        .header("content-type", "application/json")
        .body(Bytes::from_static(br#"{"name": "x' OR '1'='1"}"#))
        .expect("request");
    let response = send(&fleet, &client, sqli).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(&response)["rule"], "sqli-002");

    // Two WAF blocks (weight 5 each) plus the 415 reach the threshold of 10.
    daemon.wait_for_log("abuse_block", Duration::from_secs(5));
    let log = daemon.log();
    assert!(log.contains("the kernel plane is off"), "{log}");
    let explained = fleet.gateway.json(&["explain", "127.0.0.1"]);
    let block = &explained["blocks"][0]["history"][0];
    assert_eq!(block["signals"]["waf_block"], 2, "{explained}");
    assert_eq!(block["first"]["rule"], "xss-001", "{explained}");
    assert_eq!(block["last"]["route"], "api", "{explained}");
    assert_eq!(block["offence"], 1);
    assert_eq!(block["kernel"], false);
    let text = fleet.gateway.ok(&["explain", "127.0.0.1"]);
    assert!(
        text.contains("rule=xss-001") && text.contains("waf_block=2"),
        "{text}"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let _shared = LOAD.read().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    config.routes[0].limits = vec![LimitConfig {
        name: "per-client".to_owned(),
        key: LimitKey::Client,
        requests: 3,
        per: Duration::from_secs(3600),
        burst: None,
    }];
    let daemon = fleet.start(&config);
    daemon.wait_for_log("gateway running", Duration::from_secs(20));
    let client = fleet.client(Protocol::Http2);
    for _ in 0..3 {
        assert_eq!(get(&fleet, &client, "/").await.status(), StatusCode::OK);
    }
    let limited = get(&fleet, &client, "/").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&limited)["error"], "rate_limited");
    let header = |name: &str| {
        limited
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_owned()
    };
    let retry: u64 = header("retry-after").parse().expect("seconds");
    assert!((1000..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(header("ratelimit-policy"), "\"per-client\";q=3;w=3600");
    assert_eq!(header("ratelimit"), format!("\"per-client\";r=0;t={retry}"));

    // A reload that keeps the limit keeps its budget.
    fleet.rewrite(&config);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(
        get(&fleet, &client, "/").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_counts_survive_a_restart_exactly() {
    let _shared = LOAD.read().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    // No identity on this route: a subject quota counts per client address.
    config.routes[0].quotas = vec![QuotaConfig {
        name: "daily".to_owned(),
        key: LimitKey::Subject,
        requests: 5,
        period: Period::Day,
    }];
    let remaining = |response: &Response<Bytes>| {
        response
            .headers()
            .get("quota-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no quota-remaining in {:?}", response.headers()))
    };
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    for expected in [4, 3, 2] {
        let response = get(&fleet, &client, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(remaining(&response), expected);
    }
    daemon.stop();

    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    for expected in [1, 0] {
        let response = get(&fleet, &client, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            remaining(&response),
            expected,
            "the restart neither forgot nor double-counted"
        );
    }
    let spent = get(&fleet, &client, "/").await;
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&spent)["error"], "quota_exceeded");
    assert_eq!(remaining(&spent), 0);
    let reset: u64 = spent.headers()["quota-reset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let retry: u64 = spent.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        reset <= 86_400 && retry == reset.max(1),
        "reset {reset}, retry {retry}"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let _shared = LOAD.read().await;
    let fleet = Fleet::new(1);
    let daemon = fleet.start(&fleet.config());
    let before = fleet.upstream_count().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let attempts = [
        // CL.TE: a front end reading Content-Length forwards the smuggled request as body.
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // TE.CL: the chunk holds the smuggled request for a back end reading Content-Length.
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        // TE.TE with obfuscated codings.
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding:\tchunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Duplicate, differing and invalid Content-Length.
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0, {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!("POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        // Obsolete line folding.
        format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"
        ),
    ];
    for attempt in &attempts {
        let mut tls = raw_tls(fleet.listen, EDGE_NAME, fleet.edge_ca.cert_pem()).await;
        within(10, "writing", tls.write_all(attempt.as_bytes()))
            .await
            .expect("write");
        let mut answer = Vec::new();
        // The gateway answers and closes (or closes at once); read to the end.
        let _ = within(10, "reading the answer", tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let status_lines = answer
            .lines()
            .filter(|line| line.starts_with("HTTP/1.1 "))
            .count();
        assert!(
            status_lines <= 1,
            "{attempt:?} was answered twice: {answer}"
        );
        assert!(
            !answer.contains("/smuggled"),
            "{attempt:?} smuggled: {answer}"
        );
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{attempt:?} got {answer}"
        );
    }
    assert_eq!(
        fleet.upstream_count().await,
        before,
        "no smuggling attempt reached the upstream (tests/tests/framing.rs has the full suite)"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn json_schema_failures_answer_400_with_the_failing_path() {
    let _shared = LOAD.read().await;
    let fleet = Fleet::new(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["item", "quantity"],
            "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}"#,
    )
    .expect("schema file");
    let mut config = fleet.config();
    config.routes[0].waf.json_schema = Some(schema);
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http2);
    let post = |body: &'static str| {
        Request::post("/orders")
            .header("content-type", "application/json")
            .body(Bytes::from_static(body.as_bytes()))
            .expect("request")
    };
    let ok = send(
        &fleet,
        &client,
        post(r#"{"item": "select shoes", "quantity": 2}"#),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let bad = send(&fleet, &client, post(r#"{"item": "shoes", "quantity": 0}"#)).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body = json(&bad);
    assert_eq!(body["error"], "schema_invalid");
    assert_eq!(body["path"], "/quantity");
    assert!(
        !body["request_id"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    daemon.stop();
}

/// Requests wrk completed and how many of them were not 2xx, from its report.
fn wrk_counts(report: &str) -> (u64, u64) {
    let number = |line: &str| {
        line.split_whitespace()
            .find_map(|word| word.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no number in {line:?}"))
    };
    let total = report
        .lines()
        .find(|line| line.contains("requests in"))
        .map(number)
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    let refused = report
        .lines()
        .find(|line| line.contains("Non-2xx"))
        .map_or(0, number);
    (total, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_holds_within_ten_percent_under_wrk() {
    let _exclusive = LOAD.write().await;
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("wrk is not installed: apt-get install wrk");
    }
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let (rate, burst, seconds) = (200u64, 20u64, 4u64);
    config.routes[0].limits = vec![LimitConfig {
        name: "route".to_owned(),
        key: LimitKey::Route,
        requests: rate as u32,
        per: Duration::from_secs(1),
        burst: Some(burst as u32),
    }];
    let daemon = fleet.start(&config);
    let output = tokio::task::spawn_blocking({
        let url = format!("https://{}/", fleet.listen);
        move || {
            std::process::Command::new("wrk")
                .args([
                    "-t1",
                    "-c8",
                    &format!("-d{seconds}s"),
                    "--timeout",
                    "5s",
                    &url,
                ])
                .output()
                .expect("running wrk")
        }
    })
    .await
    .expect("wrk thread");
    let report = String::from_utf8_lossy(&output.stdout);
    let (total, refused) = wrk_counts(&report);
    let passed = total - refused;
    let expected = rate * seconds + burst;
    println!(
        "wrk: {total} requests in {seconds} s, {passed} passed (limit {rate}/s + burst {burst} = {expected})"
    );
    assert!(
        refused > 0,
        "wrk must have pushed past the limit:\n{report}"
    );
    // The limit must hold: never more than 10% over what it allows. Fewer can
    // pass when the busy machine leaves gaps in wrk's load (an idle limiter
    // banks no more than its burst), so the floor is looser.
    assert!(
        passed as f64 <= expected as f64 * 1.10,
        "{passed} passed, more than {expected} + 10%:\n{report}"
    );
    assert!(
        passed as f64 >= expected as f64 * 0.75,
        "{passed} passed, far fewer than {expected}:\n{report}"
    );
    daemon.stop();
}
