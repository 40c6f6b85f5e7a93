//! What operators see, end to end on loopback: the real `gateway` binary in
//! front of real mTLS `test-upstream` processes, scraped over its admin
//! listener the way Prometheus and a load balancer's health check would.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use bytes::Bytes;
use gateway::observe::metrics::{DESCRIPTIONS, Kind};
use gateway_tests::{
    fleet::{EDGE_NAME, Fleet},
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

/// Every metric family in the exposition has `# HELP` and `# TYPE`, and every
/// `gateway_*` family is one of the gateway's [`DESCRIPTIONS`], of that type.
fn assert_described(text: &str) {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, words) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!words.trim().is_empty(), "empty help: {line:?}");
            help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("no type in {line:?}"));
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let samples = parse_prometheus(text);
    assert!(samples.len() > 20, "too few samples to judge: {text}");
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(help.contains(family), "{family} has no # HELP");
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{family} has no # TYPE"));
        if family.starts_with("gateway_") {
            let described = DESCRIPTIONS
                .iter()
                .find(|d| d.name == family)
                .unwrap_or_else(|| panic!("{family} is exported but not in DESCRIPTIONS"));
            let expected = match described.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert_eq!(kind, expected, "{family}");
        }
    }
}

/// The leaf certificate's notAfter (Unix seconds) in a PEM file, read apart
/// from the gateway.
fn not_after(path: &Path) -> f64 {
    let pem = std::fs::read(path).expect("reading a certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    cert.validity().not_after.timestamp() as f64
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

    let (status, text) = admin_get(fleet.admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_described(&text);
    let samples = parse_prometheus(&text);
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

    // What runs, and the process it runs in.
    let build = samples
        .iter()
        .find(|s| s.name == "gateway_build_info")
        .expect("gateway_build_info");
    assert_eq!(build.value, 1.0);
    let label = |name: &str| {
        build
            .labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("gateway_build_info lacks {name}"))
    };
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"));
    let commit = label("commit");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            metric(&samples, name, &[]).is_some_and(|v| v > 0.0),
            "{name} missing or 0"
        );
    }
    assert!(metric(&samples, "process_cpu_seconds_total", &[]).is_some());
    assert!(
        metric(
            &samples,
            "gateway_listener_connections",
            &[("listener", "public")]
        )
        .is_some()
    );

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
    let mut config = fleet.config();
    // A secret the config holds today: a webhook password.
    config.alerts = vec![
        toml::from_str(
            "name = \"hook\"\nmetric = \"gateway_requests_total\"\ncondition = \"above\"\n\
             threshold = 1e12\nwebhook = \"http://ops:hunter2@127.0.0.1:9/hook\"\n",
        )
        .expect("alert rule"),
    ];
    let daemon = fleet.start(&config);

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
    assert!(
        !body.contains("hunter2"),
        "/config leaks a password: {body}"
    );
    // Shown without its credentials (operations.rs proves it with secrets the
    // daemon really holds, from a file and the environment).
    assert_eq!(config["alert"][0]["webhook"], "http://127.0.0.1:9/hook");
    daemon.stop();
}

/// The line's `timestamp` is RFC 3339 in UTC with milliseconds, the one
/// time format of every stream.
fn assert_rfc3339(line: &serde_json::Value) {
    let stamp = line["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp in {line}"));
    assert!(
        humantime::parse_rfc3339(stamp).is_ok() && stamp.len() == 24 && stamp.ends_with('Z'),
        "timestamp {stamp:?} is not RFC 3339 UTC with milliseconds"
    );
    assert!(line.get("time").is_none(), "a second time key: {line}");
}

/// The JSON lines of a log file (every line must parse).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| {
                panic!("{} has a non-JSON line ({err}): {line}", path.display())
            })
        })
        .collect()
}

/// Waits until `path` has a JSON line for which `check` holds.
async fn wait_for_line(
    path: &Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = json_lines(path).into_iter().find(|line| check(line)) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not in {} within 10 s:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn access_and_audit_logs_go_to_their_files_and_reopen_after_rotation() {
    let fleet = Fleet::new(1);
    let logs = tempfile::tempdir().expect("log directory");
    let access = logs.path().join("access.log");
    let audit = logs.path().join("audit.log");
    let mut config = fleet.config();
    config.log.access = gateway::config::LogOutput::File(access.clone());
    config.log.audit = gateway::config::LogOutput::File(audit.clone());
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);

    echoed(
        &fleet,
        Protocol::Http1,
        "/echo?x=1",
        &[("user-agent", "observe-test/1")],
    )
    .await;
    let line = wait_for_line(&access, "the allowed request", |l| l["url.path"] == "/echo").await;
    for field in [
        "timestamp",
        "request_id",
        "trace_id",
        "span_id",
        "client.address",
        "network.peer.address",
        "network.protocol.version",
        "tls.protocol.version",
        "tls.client.server_name",
        "http.request.method",
        "server.address",
        "url.path",
        "user_agent.original",
        "http.route",
        "upstream",
        "endpoint",
        "http.response.status_code",
        "http.request.body.size",
        "http.response.body.size",
        "latency_ms",
        "upstream_ms",
        "decision",
    ] {
        assert!(
            line.get(field).is_some(),
            "access line lacks {field}: {line}"
        );
    }
    assert_eq!(line["stream"], "access");
    assert_eq!(line["http.response.status_code"], 200);
    assert_eq!(line["http.request.method"], "GET");
    assert_eq!(line["network.protocol.version"], "1.1");
    assert_eq!(line["client.address"], "127.0.0.1");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["http.route"], "all");
    assert_eq!(line["user_agent.original"], "observe-test/1");
    assert_eq!(line["tls.client.server_name"], EDGE_NAME);
    assert_eq!(line["server.address"], EDGE_NAME);
    assert_eq!(line["endpoint"], fleet.upstreams[0].addr().to_string());
    assert!(
        line["http.response.body.size"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{line}"
    );
    assert_rfc3339(&line);

    assert_eq!(
        get(&fleet, &client, "/a/%2F/b").await,
        StatusCode::BAD_REQUEST
    );
    let denied = wait_for_line(&access, "the refused request", |l| {
        l["http.response.status_code"] == 400
    })
    .await;
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["error.type"], "invalid_path");
    // The daemon's own messages stay out of the access stream.
    assert!(
        json_lines(&access).iter().all(|l| l["stream"] == "access"),
        "non-access lines in the access log"
    );

    // A reload is audited, with who ran the daemon.
    daemon.signal(libc::SIGHUP);
    let reloaded = wait_for_line(&audit, "config_reloaded", |l| {
        l["event"] == "config_reloaded"
    })
    .await;
    assert!(
        reloaded["uid"].is_u64() && reloaded["pid"].is_u64(),
        "{reloaded}"
    );
    assert_eq!(reloaded["stream"], "audit");
    assert_rfc3339(&reloaded);

    // logrotate: rename, signal, and new lines go to a new file at the path.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&access, &rotated).expect("rotating the access log");
    daemon.signal(libc::SIGUSR1);
    // The reopen happens in the daemon's loop; poll with requests until a line
    // lands in the new file, then no line may be lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !access.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the access log was not reopened after SIGUSR1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&fleet, &client, "/after-rotation").await,
        StatusCode::OK
    );
    wait_for_line(&access, "a request after rotation", |l| {
        l["url.path"] == "/after-rotation"
    })
    .await;
    assert!(
        json_lines(&rotated)
            .iter()
            .all(|l| l["url.path"] != "/after-rotation"),
        "a line went to the rotated file"
    );
    daemon.stop();
}

#[tokio::test]
async fn an_access_log_that_is_off_writes_nothing_and_the_other_streams_still_do() {
    let fleet = Fleet::new(1);
    let logs = tempfile::tempdir().expect("log directory");
    let audit = logs.path().join("audit.log");
    let mut config = fleet.config();
    config.log.access = gateway::config::LogOutput::Off;
    config.log.audit = gateway::config::LogOutput::File(audit.clone());
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    assert_eq!(get(&fleet, &client, "/unlogged").await, StatusCode::OK);
    // The reload is logged after the request was answered: once its audit line
    // is there, an access line would have been written too.
    daemon.signal(libc::SIGHUP);
    wait_for_line(&audit, "config_reloaded", |l| {
        l["event"] == "config_reloaded"
    })
    .await;
    let stdout = daemon.log();
    assert!(
        !stdout.contains("/unlogged"),
        "an access line despite log.access = \"off\":\n{stdout}"
    );
    assert!(
        stdout.contains("gateway running"),
        "the daemon's own messages are missing:\n{stdout}"
    );
    daemon.stop();
}

#[tokio::test]
async fn common_log_format_is_available() {
    let fleet = Fleet::new(1);
    let logs = tempfile::tempdir().expect("log directory");
    let access = logs.path().join("access.log");
    let mut config = fleet.config();
    config.log.access = gateway::config::LogOutput::File(access.clone());
    config.log.access_format = gateway::config::AccessFormat::Clf;
    let daemon = fleet.start(&config);
    let client = fleet.client(Protocol::Http1);
    assert_eq!(get(&fleet, &client, "/clf").await, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("/clf")) {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CLF line: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /clf HTTP/1.1\""), "{line}");
    assert!(line.contains("\" 200 "), "{line}");
    daemon.stop();
}

#[tokio::test]
async fn top_once_renders_live_numbers_within_80_by_24() {
    let fleet = Fleet::new(2);
    let daemon = fleet.start(&fleet.config());
    let client = fleet.client(Protocol::Http1);
    for _ in 0..5 {
        assert_eq!(get(&fleet, &client, "/echo").await, StatusCode::OK);
    }
    let admin = fleet.admin.to_string();
    // Requests keep flowing while `top` measures its interval, so the rate is live.
    let top = tokio::task::spawn_blocking(move || {
        std::process::Command::new(gateway_tests::gateway::binary())
            .args(["top", "--once", "--interval", "1s", "--admin", &admin])
            .output()
    });
    let traffic = async {
        for _ in 0..10 {
            assert_eq!(get(&fleet, &client, "/echo").await, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (output, ()) = within(20, "gateway top --once", async {
        tokio::join!(top, traffic)
    })
    .await;
    let output = output
        .expect("the gateway top task")
        .expect("running gateway top");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "gateway top failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() <= 24, "{} lines:\n{text}", lines.len());
    assert!(
        lines.iter().all(|l| l.chars().count() <= 80),
        "a line is wider than 80 columns:\n{text}"
    );
    for needle in [
        "Requests/s by route and status",
        "Upstreams",
        "fleet",
        "2/2",
        "ready",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let row = lines
        .iter()
        .find(|l| l.contains("│all") || l.contains("│ all") || l.contains("all  "))
        .unwrap_or_else(|| panic!("no row for route all:\n{text}"));
    let numbers: Vec<f64> = row
        .split(|c: char| c == '│' || c.is_whitespace())
        .filter_map(|cell| cell.parse().ok())
        .collect();
    // status 200, a positive rate, and the total of at least 5 + something.
    assert!(
        numbers.len() >= 3 && numbers[0] == 200.0 && numbers[1] > 0.0 && numbers[2] >= 6.0,
        "route row {row:?} has no live numbers:\n{text}"
    );
    // `--json`: one snapshot of the samples, the same counters.
    let output = std::process::Command::new(gateway_tests::gateway::binary())
        .args(["top", "--json", "--admin", &fleet.admin.to_string()])
        .output()
        .expect("running gateway top --json");
    let snapshot: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("gateway top --json: {err}: {output:?}"));
    let requests = snapshot["metrics"]["gateway_requests_total"]
        .as_array()
        .unwrap_or_else(|| panic!("no request counter in {snapshot}"));
    let total: f64 = requests
        .iter()
        .filter_map(|sample| sample["value"].as_f64())
        .sum();
    assert!(total >= 15.0, "{requests:?}");
    assert!(snapshot["ready"].is_string(), "{snapshot}");
    daemon.stop();
}

/// A webhook receiver: answers the first `fail_first` POSTs with 500, the rest
/// with 204, and hands every JSON body over.
async fn webhook_receiver(
    fail_first: usize,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the webhook receiver");
    let addr = listener.local_addr().expect("receiver address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as many body bytes as Content-Length says.
            let body = loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                }
            };
            let Some(body) = body else { continue };
            served += 1;
            let status = if served <= fail_first {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            if let Ok(json) = serde_json::from_str(&body) {
                let _ = tx.send(json);
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn alert_fires_its_webhook_once_with_retry_and_sends_a_resolved_notice() {
    let mut fleet = Fleet::new(1);
    let (receiver, mut posts) = webhook_receiver(1).await;
    let mut config = fleet.config();
    config.alerts = vec![
        toml::from_str(&format!(
            "name = \"pool-down\"\nmetric = \"gateway_upstream_healthy_endpoints\"\n\
             labels = {{ upstream = \"fleet\" }}\ncondition = \"below\"\nthreshold = 1\n\
             severity = \"critical\"\nwebhook = \"http://{receiver}/hook\"\nwebhook_timeout = \"2s\"\n"
        ))
        .expect("alert rule"),
    ];
    let daemon = fleet.start(&config);
    // Healthy: nothing is posted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        posts.try_recv().is_err(),
        "an alert fired for a healthy pool"
    );

    fleet.upstreams[0].kill();
    // The first POST is refused (500) and retried: the same firing notice twice.
    for attempt in 1..=2 {
        let post = within(15, "the firing webhook", posts.recv())
            .await
            .expect("receiver alive");
        assert_eq!(post["alert"], "pool-down", "attempt {attempt}: {post}");
        assert_eq!(post["status"], "firing", "attempt {attempt}: {post}");
        assert_eq!(post["labels"]["upstream"], "fleet", "{post}");
        assert_eq!(post["value"], 0.0, "{post}");
    }
    daemon.wait_for_log("alert firing", Duration::from_secs(5));
    assert!(
        daemon.log().contains("\"level\":\"ERROR\""),
        "critical alerts log at ERROR"
    );
    // While the pool stays down, nothing more (evaluated every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        posts.try_recv().is_err(),
        "the alert fired again while its condition held"
    );

    fleet.upstreams[0].restart();
    let resolved = within(15, "the resolved webhook", posts.recv())
        .await
        .expect("receiver alive");
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_eq!(resolved["alert"], "pool-down", "{resolved}");
    daemon.wait_for_log("alert resolved", Duration::from_secs(5));
    daemon.stop();
}

#[tokio::test]
async fn reload_result_and_certificate_expiry_are_exported() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let daemon = fleet.start(&config);
    let listener_cert = config.listeners[0].certificates[0].cert.clone();
    let client_cert = config.upstreams["fleet"].client_cert.clone();
    let samples = scrape(&fleet).await;
    let started = metric(&samples, "gateway_reload_last_timestamp_seconds", &[])
        .expect("the start is the first load");
    assert_eq!(
        metric(&samples, "gateway_reload_last_success", &[]),
        Some(1.0)
    );
    let listener_path = listener_cert.display().to_string();
    assert_eq!(
        metric(
            &samples,
            "gateway_certificate_expiry_seconds",
            &[
                ("role", "listener"),
                ("name", "public"),
                ("path", &listener_path),
                ("subject", &format!("CN={EDGE_NAME}"))
            ]
        ),
        Some(not_after(&listener_cert))
    );
    assert_eq!(
        metric(
            &samples,
            "gateway_certificate_expiry_seconds",
            &[
                ("role", "upstream"),
                ("name", "fleet"),
                ("subject", "CN=gateway")
            ]
        ),
        Some(not_after(&client_cert))
    );

    // A rejected reload: the result drops to 0 and the time moves on.
    std::fs::write(
        fleet.gateway.state_dir.path().join("gateway.toml"),
        "not = [valid",
    )
    .expect("breaking the config");
    tokio::time::sleep(Duration::from_millis(20)).await;
    daemon.signal(libc::SIGHUP);
    scrape_until(&fleet, 10, "the rejected reload", |s| {
        metric(s, "gateway_reload_last_success", &[]) == Some(0.0)
    })
    .await;
    let rejected = metric(
        &scrape(&fleet).await,
        "gateway_reload_last_timestamp_seconds",
        &[],
    )
    .expect("reload time");
    assert!(rejected > started, "{rejected} after {started}");

    // An applied reload with a new certificate: 1 again, and its expiry shown.
    let (cert, key) = fleet.write(&fleet.edge_ca.issue_server_rsa(&[EDGE_NAME]), "edge-next");
    config.listeners[0].certificates[0].cert = cert.clone();
    config.listeners[0].certificates[0].key = key;
    fleet.rewrite(&config);
    daemon.signal(libc::SIGHUP);
    let path = cert.display().to_string();
    scrape_until(&fleet, 10, "the new certificate's expiry", |s| {
        metric(s, "gateway_reload_last_success", &[]) == Some(1.0)
            && metric(s, "gateway_certificate_expiry_seconds", &[("path", &path)])
                == Some(not_after(&cert))
    })
    .await;
    daemon.stop();
}

#[tokio::test]
async fn daemon_lines_share_the_timestamp_and_text_logs_into_files_have_no_colour() {
    let fleet = Fleet::new(1);
    // JSON (the default): every line of every stream on stdout parses and
    // carries the one timestamp key.
    let daemon = fleet.start(&fleet.config());
    let client = fleet.client(Protocol::Http1);
    assert_eq!(get(&fleet, &client, "/json").await, StatusCode::OK);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("config_reloaded", Duration::from_secs(10));
    daemon.wait_for_log("\"url.path\":\"/json\"", Duration::from_secs(10));
    let log = daemon.log();
    let mut streams = BTreeSet::new();
    for line in log.lines() {
        let line: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("a non-JSON line ({err}): {line}"));
        assert_rfc3339(&line);
        streams.insert(line["stream"].as_str().unwrap_or("none").to_owned());
    }
    assert_eq!(
        streams,
        BTreeSet::from(["access".to_owned(), "audit".to_owned(), "daemon".to_owned()])
    );
    daemon.stop();

    // Text into a file (not a terminal): no escape sequences, same timestamp.
    let daemon = fleet.gateway.spawn_daemon_with(
        &gateway_tests::fleet::render(&fleet.config()),
        Duration::from_secs(20),
        |command| {
            command.args(["--log-format", "text"]);
        },
    );
    let log = daemon.log();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log:?}");
    let running = log
        .lines()
        .find(|l| l.contains("gateway running"))
        .expect("the running line");
    let stamp = running.split_whitespace().next().unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok() && stamp.len() == 24,
        "{running}"
    );
    daemon.stop();
}

/// `GET /echo` with `headers`, over `protocol`: the headers the upstream got.
async fn echoed(
    fleet: &Fleet,
    protocol: Protocol,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Bytes::new()).expect("valid request");
    let response = within(15, path, fleet.client(protocol).send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    assert_eq!(response.status(), StatusCode::OK);
    let echo: serde_json::Value = serde_json::from_slice(response.body()).expect("echo JSON");
    echo["headers"].clone()
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not zero: (trace id, parent id, flags).
fn valid_traceparent(value: &serde_json::Value) -> (String, String, String) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("one traceparent expected, got {value}"));
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
            && s.chars().any(|c| c != '0')
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2),
        "invalid traceparent forwarded: {text:?}"
    );
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[tokio::test]
async fn traceparent_reaches_the_fleet_over_both_protocols_and_is_logged() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let fleet = Fleet::new(1);
    let logs = tempfile::tempdir().expect("log directory");
    let access = logs.path().join("access.log");
    let mut config = fleet.config();
    config.log.access = gateway::config::LogOutput::File(access.clone());
    let daemon = fleet.start(&config);
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    for (protocol, version) in [(Protocol::Http1, "1.1"), (Protocol::Http2, "2")] {
        // A valid one: the same trace, a new parent (the gateway's hop), and
        // its tracestate along.
        let path = format!("/valid-{version}");
        let got = echoed(
            &fleet,
            protocol,
            &path,
            &[
                ("traceparent", &incoming),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ],
        )
        .await;
        let (trace, parent, flags) = valid_traceparent(&got["traceparent"]);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{version}");
        assert_ne!(
            parent, PARENT,
            "{version}: the gateway's hop has its own span id"
        );
        assert_eq!(got["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let line = wait_for_line(&access, "the traced request", |l| {
            l["url.path"] == path.as_str()
        })
        .await;
        assert_eq!(line["trace_id"], TRACE, "{line}");
        assert_eq!(line["span_id"], parent.as_str(), "{line}");
        assert_eq!(line["network.protocol.version"], version, "{line}");

        // None: one is generated, and logged.
        let path = format!("/none-{version}");
        let got = echoed(&fleet, protocol, &path, &[]).await;
        let (trace, _, _) = valid_traceparent(&got["traceparent"]);
        let line = wait_for_line(&access, "the untraced request", |l| {
            l["url.path"] == path.as_str()
        })
        .await;
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");

        // Malformed ones are replaced, their tracestate dropped.
        for (i, bad) in [
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            "00-tooshort-01".to_owned(),
        ]
        .iter()
        .enumerate()
        {
            let path = format!("/bad-{version}-{i}");
            let got = echoed(
                &fleet,
                protocol,
                &path,
                &[("traceparent", bad), ("tracestate", "a=1")],
            )
            .await;
            let (trace, _, _) = valid_traceparent(&got["traceparent"]);
            assert_ne!(trace, TRACE, "{bad}");
            assert!(
                got.get("tracestate").is_none(),
                "{bad}: tracestate forwarded: {got}"
            );
            let line = wait_for_line(&access, "the malformed request", |l| {
                l["url.path"] == path.as_str()
            })
            .await;
            assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        }
    }
    daemon.stop();
}

/// `text` without ANSI escape sequences and whitespace: what a terminal shows,
/// with cursor moves (which ratatui uses instead of spaces) dropped.
fn screen_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn top_runs_in_a_pseudo_terminal_and_q_restores_it() {
    let fleet = Fleet::new(2);
    let daemon = fleet.start(&fleet.config());
    let client = fleet.client(Protocol::Http1);
    for _ in 0..3 {
        assert_eq!(get(&fleet, &client, "/echo").await, StatusCode::OK);
    }
    let command = format!(
        "stty cols 80 rows 24; {} top --interval 200ms --admin {}",
        gateway_tests::gateway::binary().display(),
        fleet.admin
    );
    // `script` (util-linux) gives `top` a real pty and copies our stdin into it.
    let run = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running `script` (util-linux)");
        std::thread::sleep(Duration::from_millis(1500));
        use std::io::Write as _;
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"q")
            .expect("pressing q");
        child.wait_with_output().expect("waiting for gateway top")
    });
    let output = within(20, "gateway top in a pty", run)
        .await
        .expect("the pty task");
    assert!(
        output.status.success(),
        "gateway top did not exit cleanly on q: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let screen = screen_text(&output.stdout);
    for needle in [
        "Requests/sbyrouteandstatus",
        "Upstreams",
        "fleet2/2",
        "all200-3",
    ] {
        assert!(
            screen.contains(needle),
            "{needle:?} not on screen: {screen}"
        );
    }
    let raw = String::from_utf8_lossy(&output.stdout);
    assert!(
        raw.contains("\u{1b}[?1049l"),
        "the alternate screen was not left: {raw:?}"
    );
    daemon.stop();
}
