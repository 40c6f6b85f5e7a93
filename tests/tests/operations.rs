//! Operations a script can trust, and secrets kept out of sight: `gateway
//! reload` returns the daemon's verdict, `gateway check` refuses what would
//! fail in production, errors come as JSON with `--json` and the same exit
//! code, and no secret reaches a log line or `/config`.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Output, time::Duration};

use bytes::Bytes;
use gateway::config::{AlertRule, IssuerConfig, RouteAuth};
use gateway_tests::{
    fleet::{EDGE_NAME, Fleet, render, route},
    http::Protocol,
    idp::{CLIENT_ID, CLIENT_SECRET, Idp},
};
use http::{Request, StatusCode};
use serde_json::{Value, json};

/// The exit code, stdout and stderr of `gateway args`.
fn run(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = fleet.gateway.output(args);
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The JSON error object a failed `--json` command prints on stderr.
fn json_error(stderr: &str) -> Value {
    let error: Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|err| panic!("stderr is not one JSON object ({err}): {stderr}"));
    error["error"].clone()
}

/// Writes `value` to a file in the gateway's state directory with `mode`.
fn secret_file(fleet: &Fleet, name: &str, value: &str, mode: u32) -> PathBuf {
    let path = fleet.gateway.state_dir.path().join(name);
    std::fs::write(&path, value).expect("writing a secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_waits_for_the_verdict_and_says_why_it_was_rejected() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let daemon = fleet.start(&config);

    let said = fleet.gateway.ok(&["reload"]);
    assert!(said.contains("configuration reloaded"), "{said}");
    let verdict = fleet.gateway.json(&["reload"]);
    assert_eq!(verdict["accepted"], true, "{verdict}");

    // Rejected: exit 64 with the daemon's reasons; the old config keeps running.
    config.routes[0].upstream = "nowhere".to_owned();
    fleet.rewrite(&config);
    let (code, stdout, stderr) = run(&fleet, &["reload"]);
    assert_eq!(code, Some(64), "{stdout}{stderr}");
    assert!(
        stderr.contains("rejected") && stderr.contains("no [upstream.nowhere]"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&fleet, &["reload", "--json"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let error = json_error(&stderr);
    assert_eq!(error["code"], "usage", "{error}");
    assert_eq!(error["exit_code"], 64, "{error}");
    assert!(
        error["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.contains("no [upstream.nowhere]")))),
        "{error}"
    );

    // Concurrent reloads: each client gets the verdict of a reload that read
    // the file after it asked — the rejection for everyone here, then, once the
    // file is fixed, the acceptance for everyone.
    let rejections = daemon.log().matches("reload rejected").count();
    let codes = |fleet: &Fleet| {
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| run(fleet, &["reload"])))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("reload thread"))
                .collect::<Vec<_>>()
        })
    };
    for (code, _, stderr) in codes(&fleet) {
        assert_eq!(code, Some(64), "{stderr}");
    }
    assert_eq!(
        daemon.log().matches("reload rejected").count(),
        rejections + 4,
        "one reload per request, none merged"
    );
    config.routes[0].upstream = "fleet".to_owned();
    fleet.rewrite(&config);
    for (code, stdout, stderr) in codes(&fleet) {
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("configuration reloaded"), "{stdout}");
    }

    // No daemon: a distinct code, after a clean stop and after kill -9 (which
    // leaves the socket file behind).
    daemon.stop();
    let (code, _, stderr) = run(&fleet, &["reload"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("no gateway daemon runs"), "{stderr}");
    let killed = fleet.start(&config);
    drop(killed); // SIGKILL
    assert!(
        fleet.gateway.state_dir.path().join("control.sock").exists(),
        "kill -9 leaves the socket"
    );
    let (code, _, stderr) = run(&fleet, &["reload", "--json"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert_eq!(json_error(&stderr)["code"], "unavailable", "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_expired_certificates_uncovered_names_and_missing_interfaces() {
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let path = fleet.gateway.state_dir.path().join("check.toml");
    let check = |config: &gateway::config::Config, json: bool| {
        std::fs::write(&path, render(config)).expect("writing the config");
        let path = path.to_str().expect("UTF-8");
        let mut args = vec!["check", "--config", path];
        if json {
            args.push("--json");
        }
        run(&fleet, &args)
    };
    let (code, stdout, stderr) = check(&config, false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": valid"), "{stdout}");

    // Names as clients match them: case and a trailing dot do not matter, a
    // wildcard covers one label.
    config.listeners[0].certificates[0].server_names = vec![
        "API.TEST.".to_owned(),
        "www.api.test".to_owned(),
        "a.b.api.test".to_owned(),
        "other.test".to_owned(),
    ];
    let expired = fleet.edge_ca.issue_server_expired(&[EDGE_NAME]);
    let (cert, key) = fleet.write(&expired, "expired");
    let mut second = config.listeners[0].certificates[0].clone();
    second.cert = cert;
    second.key = key;
    second.server_names = vec![];
    config.listeners[0].certificates.push(second);
    config.xdp.enabled = true;
    config.xdp.interface = "gwnope0".to_owned();
    let (code, _, stderr) = check(&config, false);
    assert_eq!(code, Some(64), "{stderr}");
    for needle in [
        "listener[0].certificates[0].server_names: \"a.b.api.test\" is not covered",
        "listener[0].certificates[0].server_names: \"other.test\" is not covered",
        "listener[0].certificates[1].cert: ",
        "expired at",
        "xdp.interface: no interface named \"gwnope0\"",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?}: {stderr}");
    }
    for covered in ["\"API.TEST.\"", "\"www.api.test\""] {
        assert!(!stderr.contains(covered), "{covered} is covered: {stderr}");
    }
    let (code, stdout, stderr) = check(&config, true);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let error = json_error(&stderr);
    assert_eq!(error["exit_code"], 64);
    assert_eq!(
        error["details"].as_array().map(Vec::len),
        Some(4),
        "{error}"
    );

    // Fixed, with a webhook URL in a file everyone can read: valid, warned.
    config.listeners[0].certificates.truncate(1);
    config.listeners[0].certificates[0].server_names = vec!["API.TEST.".to_owned()];
    config.xdp.interface = "lo".to_owned();
    let hook = secret_file(&fleet, "webhook", "http://127.0.0.1:9/hook?token=t", 0o644);
    let mut rule: AlertRule = toml::from_str(
        "name = \"hook\"\nmetric = \"gateway_requests_total\"\ncondition = \"above\"\nthreshold = 1.0\n",
    )
    .expect("alert rule");
    rule.webhook_file = Some(hook.clone());
    config.alerts = vec![rule];
    let (code, stdout, stderr) = check(&config, true);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["valid"], true, "{report}");
    // (The rig's certificates live two days: each gets an expiry warning too.)
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("alert[0].webhook_file") && warnings.contains("readable by everyone"),
        "{warnings}"
    );
    assert!(
        warnings.contains("listener[0].certificates[0].cert: ") && warnings.contains("expires at"),
        "{warnings}"
    );
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, stdout, _) = check(&config, true);
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert!(
        !report["warnings"].to_string().contains("webhook_file"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_neither_the_logs_nor_config() {
    const HOOK_PASSWORD: &str = "hook-hunter2";
    const HOOK_TOKEN: &str = "hook-tok3n";
    const QUERY_TOKEN: &str = "query-tok3n";
    let idp = Idp::start().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let secret = secret_file(&fleet, "client_secret", CLIENT_SECRET, 0o600);
    let introspection_url = format!("{}?tenant={QUERY_TOKEN}", idp.url("/introspect"));
    let issuer: IssuerConfig = toml::from_str(&format!(
        "issuer = {:?}\naudiences = [\"api\"]\nca = {:?}\n\
         [introspection]\nurl = {introspection_url:?}\nclient_id = {CLIENT_ID:?}\nclient_secret_file = {secret:?}\n",
        idp.issuer(),
        idp.ca_path,
    ))
    .expect("issuer table");
    config.auth.issuers.insert("opaque".to_owned(), issuer);
    let mut all = route("all", "/");
    all.auth = toml::from_str::<RouteAuth>("mode = \"required\"").expect("route auth");
    config.routes = vec![all];
    // An alert that fires on the first request, posting to a closed port so
    // the failure (and its URL) is logged.
    config.alerts = vec![
        toml::from_str(
            "name = \"hook\"\nmetric = \"gateway_requests_total\"\ncondition = \"above\"\n\
             threshold = 0.0\nwebhook_env = \"GATEWAY_TEST_WEBHOOK\"\nwebhook_timeout = \"1s\"\nwebhook_retries = 1\n",
        )
        .expect("alert rule"),
    ];
    let webhook = format!("http://ops:{HOOK_PASSWORD}@127.0.0.1:9/hook?token={HOOK_TOKEN}");
    let daemon =
        fleet
            .gateway
            .spawn_daemon_with(&render(&config), Duration::from_secs(20), |command| {
                command.env("GATEWAY_TEST_WEBHOOK", &webhook);
            });
    let client = fleet.client(Protocol::Http1);
    let get = |token: &'static str| {
        let request = Request::get("/x")
            .header("authorization", format!("Bearer {token}"))
            .body(Bytes::new())
            .expect("request");
        client.send(fleet.listen, request)
    };

    // The secret from the file reached the provider: the token is accepted
    // (once the pool is healthy).
    idp.add_opaque(
        "opaque-active",
        json!({"active": true, "sub": "svc", "aud": "api", "iss": idp.issuer()}),
    );
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = get("opaque-active").await.expect("request").status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "{}", daemon.log());
    // The provider down: the failure is logged with the URL, redacted.
    idp.set_down(true);
    let response = get("opaque-unknown").await.expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    daemon.wait_for_log("token introspection failed", Duration::from_secs(10));
    daemon.wait_for_log("alert webhook failed; giving up", Duration::from_secs(20));

    let view = fleet.admin_get("/config").await;
    let log = daemon.log();
    for (place, text) in [("the daemon log", &log), ("/config", &view)] {
        for secret in [CLIENT_SECRET, HOOK_PASSWORD, HOOK_TOKEN, QUERY_TOKEN] {
            assert!(
                !text.contains(secret),
                "{place} carries {secret:?}:\n{text}"
            );
        }
    }
    assert!(log.contains("http://127.0.0.1:9/hook"), "{log}");
    assert!(log.contains(&idp.url("/introspect")), "{log}");
    let view: Value = serde_json::from_str(&view).expect("/config is JSON");
    let introspection = &view["auth"]["issuers"]["opaque"]["introspection"];
    assert_eq!(introspection["client_secret"], "[redacted]", "{view}");
    assert_eq!(introspection["client_secret_file"], json!(secret), "{view}");
    assert_eq!(
        view["alert"][0]["webhook"], "http://127.0.0.1:9/hook",
        "{view}"
    );
    assert_eq!(view["alert"][0]["webhook_env"], "GATEWAY_TEST_WEBHOOK");
    assert!(
        view["auth"]["issuers"]["opaque"]["max_token_bytes"].is_u64(),
        "a setting, not a secret: {view}"
    );
    daemon.stop();
}
