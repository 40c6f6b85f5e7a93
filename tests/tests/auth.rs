//! Identity at the edge, end to end on loopback: the real `gateway` binary in
//! front of a real mTLS upstream that counts what reaches it, trusting a real
//! identity provider served by the test over HTTPS (discovery, JWKS,
//! introspection) whose keys the test rotates and switches off.

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use gateway::config::{AuthMode, Config, IssuerConfig, RouteAuth};
use gateway_tests::{
    fleet::{Fleet, route},
    gateway::Daemon,
    http::{Client, Protocol},
    idp::{CLIENT_ID, CLIENT_SECRET, Idp, SigningKey, b64url},
};
use http::{Request, Response, StatusCode, header};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

/// Bounds every await, so a hang fails the test instead of the suite.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

const AUDIENCE: &str = "payments-api";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a valid token for `sub`, with `scope`.
fn claims(idp: &Idp, sub: &str, scope: &str) -> Value {
    json!({
        "iss": idp.issuer(),
        "aud": [AUDIENCE, "other"],
        "sub": sub,
        "scope": scope,
        "realm_access": {"roles": ["payer"]},
        "email": format!("{sub}@example.test"),
        "iat": now(),
        "exp": now() + 600,
        "jti": format!("jti-{sub}-{}", fastrand_id()),
    })
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An issuer found through OIDC discovery at `idp`.
fn issuer(idp: &Idp) -> IssuerConfig {
    let mut issuer: IssuerConfig = toml::from_str(&format!(
        "issuer = {:?}\naudiences = [{AUDIENCE:?}]\ndiscovery_url = {:?}\nca = {:?}\n\
         roles_claim = \"realm_access.roles\"\nmax_token_bytes = 4096\n",
        idp.issuer(),
        idp.url("/.well-known/openid-configuration"),
        idp.ca_path,
    ))
    .expect("issuer table");
    issuer.unknown_kid_interval = Duration::from_secs(30);
    issuer
}

/// Writes a secret (mode 0600) into the gateway's state directory for a
/// `*_file` key: a config rendered for the daemon never carries one inline,
/// since a secret serializes as "[redacted]".
fn secret_file(fleet: &Fleet, name: &str, value: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = fleet.gateway.state_dir.path().join(name);
    std::fs::write(&path, value).expect("writing a secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn required(scopes_all: &[&str]) -> RouteAuth {
    RouteAuth {
        mode: AuthMode::Required,
        scopes_all: scopes_all.iter().map(|s| (*s).to_owned()).collect(),
        ..RouteAuth::default()
    }
}

/// Routes: `/pay` needs `payments:write` and role `payer`; `/open` needs no
/// token; `/maybe` takes one optionally (also from a cookie); anything else
/// needs a valid token.
fn config(fleet: &Fleet, idp: &Idp) -> Config {
    let mut config = fleet.config();
    config.auth.issuers.insert("main".to_owned(), issuer(idp));
    config
        .auth
        .claim_headers
        .insert("email".to_owned(), "x-auth-email".to_owned());
    let mut pay = route("pay", "/pay");
    pay.auth = required(&["payments:write"]);
    pay.auth.roles_any = vec!["payer".to_owned()];
    let open = route("open", "/open");
    let mut maybe = route("maybe", "/maybe");
    maybe.auth = RouteAuth {
        mode: AuthMode::Optional,
        token_cookie: Some("session".to_owned()),
        ..RouteAuth::default()
    };
    let mut forwarding = route("forwarding", "/forwarding");
    forwarding.auth = RouteAuth {
        token_header: Some("x-api-token".to_owned()),
        forward_authorization: true,
        ..required(&[])
    };
    let mut all = route("all", "/");
    all.auth = required(&[]);
    config.routes = vec![pay, open, maybe, forwarding, all];
    config
}

async fn send(
    fleet: &Fleet,
    client: &Client,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Bytes> {
    let mut request = Request::builder().uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Bytes::new()).expect("request");
    within(15, path, client.send(fleet.listen, request))
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

async fn with_token(fleet: &Fleet, client: &Client, path: &str, token: &str) -> Response<Bytes> {
    send(
        fleet,
        client,
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Starts the gateway and waits until its pool has a healthy endpoint (the
/// `/open` route needs no token), so a slow first health check on a busy
/// machine is not mistaken for an auth answer.
async fn start(fleet: &Fleet, config: &Config) -> Daemon {
    let daemon = fleet.start(config);
    let client = fleet.client(Protocol::Http1);
    for _ in 0..100 {
        if send(fleet, &client, "/open", &[]).await.status() == StatusCode::OK {
            return daemon;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the upstream never became healthy; log:\n{}", daemon.log());
}

fn body(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or_else(|err| {
        panic!(
            "invalid JSON ({err}) with status {}: {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        )
    })
}

fn challenge(response: &Response<Bytes>) -> String {
    response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts a 401 with an `invalid_token` challenge.
fn assert_invalid(response: &Response<Bytes>, case: &str) {
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        String::from_utf8_lossy(response.body())
    );
    let challenge = challenge(response);
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{case}: WWW-Authenticate {challenge:?}"
    );
    assert_eq!(body(response)["error"], "invalid_token", "{case}");
}

/// The echo of an upstream that served the request.
fn echo(response: &Response<Bytes>, case: &str) -> Value {
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{case}: {}",
        String::from_utf8_lossy(response.body())
    );
    body(response)
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn json_segment(value: &Value) -> String {
    b64url(value.to_string().as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_tokens_never_reach_the_upstream() {
    let idp = Idp::start().await;
    let es = SigningKey::generate(Algorithm::ES256, "es-1");
    let rs = SigningKey::generate(Algorithm::RS256, "rs-1");
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1");
    idp.publish(&[&es, &rs, &ed]);
    let fleet = Fleet::new(1);
    let daemon = start(&fleet, &config(&fleet, &idp)).await;
    let client = fleet.client(Protocol::Http1);
    let baseline = fleet.upstream_count().await;
    let attacker = SigningKey::generate(Algorithm::ES256, "es-1");

    let good = claims(&idp, "alice", "payments:write");
    let valid = es.sign(&good);
    let parts = segments(&valid);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };

    // No token at all: a bare challenge (RFC 6750 §3.1: no error code).
    let response = send(&fleet, &client, "/pay", &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), "Bearer realm=\"gateway\"");
    assert_eq!(body(&response)["error"], "missing_token");

    let mut jku = Header::new(Algorithm::ES256);
    jku.kid = Some("attacker".to_owned());
    jku.jku = Some("https://attacker.test/jwks".to_owned());
    let mut x5u = Header::new(Algorithm::ES256);
    x5u.kid = Some("attacker".to_owned());
    x5u.x5u = Some("https://attacker.test/cert.pem".to_owned());
    let mut embedded = Header::new(Algorithm::ES256);
    embedded.kid = Some(es.kid.clone());
    embedded.jwk = Some(attacker.jwk.clone());
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some(rs.kid.clone());
    let hmac_with_public_key = jsonwebtoken::encode(
        &hs256,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(rs.public_pem.as_bytes()),
    )
    .expect("HS256 token");
    let mut unknown = Header::new(Algorithm::ES256);
    unknown.kid = Some("no-such-key".to_owned());
    let mut padded = good.clone();
    padded["padding"] = json!("x".repeat(5000));

    let cases: Vec<(&str, &str, String)> = vec![
        (
            "alg none",
            "malformed token",
            format!(
                "{}.{}.",
                json_segment(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
        ),
        (
            "HS256 with the RSA public key as secret",
            "algorithm HS256 not accepted",
            hmac_with_public_key,
        ),
        (
            "tampered payload",
            "invalid signature",
            format!(
                "{}.{}.{}",
                parts[0],
                json_segment(&with(&|c| c["sub"] = json!("mallory"))),
                parts[2]
            ),
        ),
        (
            "signature removed",
            "invalid signature",
            format!("{}.{}.", parts[0], parts[1]),
        ),
        (
            "unknown kid",
            "unknown key id",
            es.sign_with(&unknown, &good),
        ),
        (
            "jku to an attacker key",
            "unknown key id",
            attacker.sign_with(&jku, &good),
        ),
        (
            "x5u to an attacker key",
            "unknown key id",
            attacker.sign_with(&x5u, &good),
        ),
        (
            "embedded jwk",
            "invalid signature",
            attacker.sign_with(&embedded, &good),
        ),
        (
            "expired",
            "token expired",
            es.sign(&with(&|c| c["exp"] = json!(now() - 3600))),
        ),
        (
            "nbf in the future",
            "token not yet valid",
            es.sign(&with(&|c| c["nbf"] = json!(now() + 3600))),
        ),
        (
            "wrong iss",
            "wrong issuer",
            es.sign(&with(&|c| c["iss"] = json!("https://evil.test"))),
        ),
        (
            "wrong aud",
            "wrong audience",
            es.sign(&with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "missing exp",
            "missing claim exp",
            es.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("exp");
            })),
        ),
        (
            "ES256 with r = s = 0",
            "invalid signature",
            format!("{}.{}.{}", parts[0], parts[1], b64url(&[0; 64])),
        ),
        (
            // b64token characters (RFC 6750 §2.1) that are not base64url;
            // other characters are refused before (400 invalid_request).
            "malformed base64",
            "malformed token",
            format!("{}.a+/a.{}", parts[0], parts[2]),
        ),
        (
            "malformed JSON",
            "malformed token",
            format!("{}.{}.{}", parts[0], b64url(b"{not json"), parts[2]),
        ),
        ("over the size limit", "token too large", es.sign(&padded)),
    ];
    for (case, reason, token) in &cases {
        let response = with_token(&fleet, &client, "/pay", token).await;
        assert_invalid(&response, case);
        assert!(
            challenge(&response).contains(&format!("error_description=\"{reason}\"")),
            "{case}: refused for the wrong reason: {}",
            challenge(&response)
        );
    }

    // Valid tokens without the scope or the role: 403 naming the scope.
    for (case, token) in [
        (
            "missing scope",
            es.sign(&claims(&idp, "bob", "payments:read")),
        ),
        (
            "wrong role",
            es.sign(&with(&|c| c["realm_access"]["roles"] = json!(["viewer"]))),
        ),
    ] {
        let response = with_token(&fleet, &client, "/pay", &token).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{case}");
        let challenge = challenge(&response);
        assert!(
            challenge.contains("error=\"insufficient_scope\"")
                && challenge.contains("scope=\"payments:write\""),
            "{case}: {challenge}"
        );
        assert_eq!(body(&response)["error"], "insufficient_scope", "{case}");
    }
    assert_eq!(
        fleet.upstream_count().await,
        baseline,
        "nothing refused reached the upstream"
    );

    // Valid RS256, ES256 and EdDSA tokens pass, with the identity forwarded and
    // a spoofed identity header and the token itself removed.
    for key in [&rs, &es, &ed] {
        let token = key.sign(&claims(&idp, "carol", "payments:write audit"));
        let response = send(
            &fleet,
            &client,
            "/pay",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-auth-subject", "admin"),
            ],
        )
        .await;
        let echo = echo(&response, &format!("{:?}", key.alg));
        let headers = &echo["headers"];
        assert_eq!(headers["x-auth-subject"], "carol", "{echo}");
        assert_eq!(headers["x-auth-issuer"], idp.issuer());
        assert_eq!(headers["x-auth-scopes"], "payments:write audit");
        assert_eq!(headers["x-auth-roles"], "payer");
        assert_eq!(headers["x-auth-email"], "carol@example.test");
        assert!(headers.get("authorization").is_none(), "{echo}");
    }
    // Within leeway (60 s): expired 30 s ago still passes.
    let late = es.sign(&with(&|c| c["exp"] = json!(now() - 30)));
    echo(
        &with_token(&fleet, &client, "/pay", &late).await,
        "within leeway",
    );

    // Optional: no token passes anonymously, a cookie token is used, a bad one is refused.
    let anonymous = echo(&send(&fleet, &client, "/maybe", &[]).await, "optional");
    assert!(anonymous["headers"].get("x-auth-subject").is_none());
    let cookie = format!("theme=dark; session={valid}");
    let from_cookie = echo(
        &send(&fleet, &client, "/maybe", &[("cookie", &cookie)]).await,
        "cookie",
    );
    assert_eq!(from_cookie["headers"]["x-auth-subject"], "alice");
    assert_invalid(
        &with_token(&fleet, &client, "/maybe", &cases[0].2).await,
        "optional with a forged token",
    );
    // A route that takes the token from its own header and forwards it.
    let forwarded = echo(
        &send(&fleet, &client, "/forwarding", &[("x-api-token", &valid)]).await,
        "token header",
    );
    assert_eq!(forwarded["headers"]["x-auth-subject"], "alice");
    assert_eq!(forwarded["headers"]["x-api-token"], valid.as_str());
    // None: no token looked at, but nobody can claim an identity.
    let open = echo(
        &send(
            &fleet,
            &client,
            "/open",
            &[
                ("x-auth-subject", "admin"),
                ("authorization", "Bearer junk"),
            ],
        )
        .await,
        "none",
    );
    assert!(open["headers"].get("x-auth-subject").is_none(), "{open}");
    assert_eq!(open["headers"]["authorization"], "Bearer junk");

    // No token, nor its signature, reaches any log line (access, audit, daemon).
    let log = daemon.log();
    assert!(
        log.contains("\"stream\":\"access\""),
        "the access log was written: {log}"
    );
    let signature = valid.rsplit('.').next().expect("a signed token");
    assert!(!log.contains(signature), "a token reached the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_restart_random_kids_are_bounded_and_survive_an_outage() {
    let idp = Idp::start().await;
    let first = SigningKey::generate(Algorithm::ES256, "2026-a");
    idp.publish(&[&first]);
    let fleet = Fleet::new(1);
    let mut config = config(&fleet, &idp);
    let main = config.auth.issuers.get_mut("main").expect("issuer");
    // The key set by its URL (the other tests find it through discovery).
    main.discovery_url = None;
    main.jwks_url = Some(idp.url("/jwks"));
    // Refresh every second, so the outage below meets a failing refresh.
    main.min_refresh_interval = Duration::from_secs(1);
    main.max_refresh_interval = Duration::from_secs(1);
    let daemon = start(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);
    assert!(idp.jwks_fetches() >= 1, "keys were fetched before traffic");

    echo(
        &with_token(&fleet, &client, "/", &first.sign(&claims(&idp, "a", ""))).await,
        "first key",
    );

    // The provider publishes a new key next to the old one: the first token
    // signed with it makes the gateway fetch again, no restart.
    let second = SigningKey::generate(Algorithm::RS256, "2026-b");
    idp.publish(&[&first, &second]);
    echo(
        &with_token(&fleet, &client, "/", &second.sign(&claims(&idp, "b", ""))).await,
        "rotated key",
    );

    // A burst of random kids: every one refused, the provider barely asked.
    let before = idp.jwks_fetches();
    let started = std::time::Instant::now();
    for i in 0..40 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("random-{i}"));
        let token = first.sign_with(&header, &claims(&idp, "x", ""));
        assert_invalid(
            &with_token(&fleet, &client, "/", &token).await,
            "random kid",
        );
    }
    let during_burst = idp.jwks_fetches() - before;
    // At most one refetch for an unknown kid per 30 s, plus one periodic
    // refresh per second the burst took (and one in flight).
    let bound = 1 + started.elapsed().as_secs() + 1;
    assert!(
        during_burst <= bound,
        "40 random kids caused {during_burst} JWKS fetches"
    );
    println!("40 random kids caused {during_burst} JWKS fetches (periodic 1 s refresh included)");

    // The provider goes down: the refresh fails, the last good keys keep working
    // for tokens never seen before.
    idp.set_down(true);
    daemon.wait_for_log("serving with the last good keys", Duration::from_secs(10));
    for key in [&first, &second] {
        echo(
            &with_token(&fleet, &client, "/", &key.sign(&claims(&idp, "c", ""))).await,
            "provider down",
        );
    }
    idp.set_down(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_cached_and_fail_closed() {
    let idp = Idp::start().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let opaque: IssuerConfig = toml::from_str(&format!(
        "issuer = {:?}\naudiences = [{AUDIENCE:?}]\nca = {:?}\n\
         [introspection]\nurl = {:?}\nclient_id = {CLIENT_ID:?}\nclient_secret_file = {:?}\n",
        idp.issuer(),
        idp.ca_path,
        idp.url("/introspect"),
        secret_file(&fleet, "client_secret", CLIENT_SECRET),
    ))
    .expect("issuer table");
    config.auth.issuers.insert("opaque".to_owned(), opaque);
    let mut all = route("all", "/");
    all.auth = required(&["read"]);
    config.routes = vec![route("open", "/open"), all];
    let daemon = start(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);

    idp.add_opaque(
        "opaque-active",
        json!({"active": true, "sub": "svc-1", "scope": "read write", "aud": AUDIENCE, "exp": now() + 600, "iss": idp.issuer()}),
    );
    idp.add_opaque("opaque-inactive", json!({"active": false}));
    idp.add_opaque(
        "opaque-other-aud",
        json!({"active": true, "sub": "svc-2", "scope": "read", "aud": "elsewhere"}),
    );

    let echo1 = echo(
        &with_token(&fleet, &client, "/x", "opaque-active").await,
        "active",
    );
    assert_eq!(echo1["headers"]["x-auth-subject"], "svc-1");
    let asked = idp.counters().introspection.load(Ordering::SeqCst);
    echo(
        &with_token(&fleet, &client, "/x", "opaque-active").await,
        "cached",
    );
    assert_eq!(
        idp.counters().introspection.load(Ordering::SeqCst),
        asked,
        "the second use was answered from the cache"
    );
    for token in ["opaque-inactive", "opaque-unknown", "opaque-other-aud"] {
        assert_invalid(&with_token(&fleet, &client, "/x", token).await, token);
    }
    let before = fleet.upstream_count().await;

    // The endpoint is down: unknown tokens get 503 (fail closed), the cached one passes.
    idp.set_down(true);
    let response = with_token(&fleet, &client, "/x", "opaque-new").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(&response)["error"], "auth_unavailable");
    echo(
        &with_token(&fleet, &client, "/x", "opaque-active").await,
        "cached while down",
    );
    assert_eq!(fleet.upstream_count().await, before + 1);
    idp.set_down(false);

    // The endpoint requires client authentication: with a wrong secret the
    // provider refuses the gateway, and the gateway fails closed.
    let mut wrong = config.clone();
    if let Some(introspection) = wrong
        .auth
        .issuers
        .get_mut("opaque")
        .and_then(|i| i.introspection.as_mut())
    {
        introspection.client_secret_file = Some(secret_file(&fleet, "wrong_secret", "guessed"));
    }
    fleet.rewrite(&wrong);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let response = with_token(&fleet, &client, "/x", "opaque-active").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        daemon.log().contains("401 Unauthorized"),
        "the log says why: {}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_jti_and_subject_applies_to_cached_tokens_and_survives_a_restart() {
    let idp = Idp::start().await;
    let key = SigningKey::generate(Algorithm::EdDSA, "ed");
    idp.publish(&[&key]);
    let fleet = Fleet::new(1);
    let config = config(&fleet, &idp);
    let daemon = start(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);

    let dave = claims(&idp, "dave", "");
    let dave_token = key.sign(&dave);
    let erin_token = key.sign(&claims(&idp, "erin", ""));
    // Both verified and cached.
    echo(&with_token(&fleet, &client, "/", &dave_token).await, "dave");
    echo(&with_token(&fleet, &client, "/", &erin_token).await, "erin");

    let jti = dave["jti"].as_str().expect("jti");
    fleet
        .gateway
        .ok(&["token", "revoke", "--jti", jti, "--reason", "leaked"]);
    daemon.wait_for_log(&format!("\"id\":\"{jti}\""), Duration::from_secs(5));
    let response = with_token(&fleet, &client, "/", &dave_token).await;
    assert_invalid(&response, "revoked jti");
    assert!(challenge(&response).contains("revoked"));

    fleet
        .gateway
        .ok(&["token", "revoke", "--sub", "erin", "--until", "1h"]);
    daemon.wait_for_log("\"id\":\"erin\"", Duration::from_secs(5));
    assert_invalid(
        &with_token(&fleet, &client, "/", &erin_token).await,
        "revoked subject",
    );
    let listed = fleet.gateway.json(&["token", "list"]);
    assert_eq!(listed["jti"][jti]["reason"], "leaked", "{listed}");
    assert!(listed["sub"]["erin"]["until"].is_u64(), "{listed}");

    assert!(
        daemon.log().contains("\"event\":\"token_revoked\""),
        "revocations are audited"
    );

    // A restart keeps both revocations.
    daemon.stop();
    let daemon = start(&fleet, &config).await;
    assert_invalid(
        &with_token(&fleet, &client, "/", &dave_token).await,
        "jti after restart",
    );
    assert_invalid(
        &with_token(&fleet, &client, "/", &erin_token).await,
        "sub after restart",
    );

    assert!(
        !daemon.log().contains("token_revoked"),
        "a restart does not audit old revocations again"
    );

    fleet.gateway.ok(&["token", "unrevoke", "--jti", jti]);
    daemon.wait_for_log("token_unrevoked", Duration::from_secs(5));
    echo(
        &with_token(&fleet, &client, "/", &dave_token).await,
        "unrevoked",
    );

    // A reload with the issuer unchanged keeps its keys (no new discovery) and
    // applies a new policy at once.
    let discovered = idp.counters().discovery.load(Ordering::SeqCst);
    let mut stricter = config.clone();
    let all = stricter.routes.last_mut().expect("route all");
    all.auth.scopes_all = vec!["admin".to_owned()];
    fleet.rewrite(&stricter);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let response = with_token(&fleet, &client, "/", &dave_token).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        idp.counters().discovery.load(Ordering::SeqCst),
        discovered,
        "the reload reused the issuer's keys"
    );
}

/// SHA-256 of `text`, first 16 hex digits: computed here, apart from the
/// gateway's own code, so the test checks the documented format.
fn hash16(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_ends_its_cached_tokens_at_refresh_and_at_reload() {
    let idp = Idp::start().await;
    let old = SigningKey::generate(Algorithm::ES256, "2026-old");
    let kept = SigningKey::generate(Algorithm::EdDSA, "2026-kept");
    let reused = SigningKey::generate(Algorithm::ES256, "2026-reused");
    idp.publish(&[&old, &kept, &reused]);
    let fleet = Fleet::new(1);
    let mut config = config(&fleet, &idp);
    let main = config.auth.issuers.get_mut("main").expect("issuer");
    main.discovery_url = None;
    main.jwks_url = Some(idp.url("/jwks"));
    main.min_refresh_interval = Duration::from_secs(1);
    main.max_refresh_interval = Duration::from_secs(1);
    // A second issuer whose keys live in a file, re-read at reload.
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let file_old = SigningKey::generate(Algorithm::ES256, "file-old");
    let file_kept = SigningKey::generate(Algorithm::ES256, "file-kept");
    let write_jwks = |keys: &[&SigningKey]| {
        let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        std::fs::write(&jwks, set.to_string()).expect("writing the key set");
    };
    write_jwks(&[&file_old, &file_kept]);
    const FILE_ISSUER: &str = "https://files.idp.test";
    let file_issuer: IssuerConfig = toml::from_str(&format!(
        "issuer = {FILE_ISSUER:?}\naudiences = [{AUDIENCE:?}]\njwks_file = {jwks:?}\n"
    ))
    .expect("issuer table");
    config.auth.issuers.insert("file".to_owned(), file_issuer);
    let daemon = start(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);

    let old_token = old.sign(&claims(&idp, "olga", ""));
    let kept_token = kept.sign(&claims(&idp, "kim", ""));
    let reused_token = reused.sign(&claims(&idp, "rita", ""));
    // Each accepted twice: verified, then served from the cache.
    for (case, token) in [
        ("old key", &old_token),
        ("kept key", &kept_token),
        ("reused kid", &reused_token),
    ] {
        for _ in 0..2 {
            echo(&with_token(&fleet, &client, "/", token).await, case);
        }
    }

    // The provider retires the old key and puts new material under the
    // reused kid; the next refresh (1 s) ends their tokens, no restart.
    let impostor = SigningKey::generate(Algorithm::ES256, "2026-reused");
    idp.publish(&[&kept, &impostor]);
    daemon.wait_for_log("\"event\":\"signing_key_retired\"", Duration::from_secs(10));
    let response = with_token(&fleet, &client, "/", &old_token).await;
    assert_invalid(&response, "a token of the retired key");
    assert!(
        challenge(&response).contains("unknown key id"),
        "{}",
        challenge(&response)
    );
    let response = with_token(&fleet, &client, "/", &reused_token).await;
    assert_invalid(&response, "a token of the replaced key under the same kid");
    echo(
        &with_token(&fleet, &client, "/", &kept_token).await,
        "a token of the key still published",
    );
    echo(
        &with_token(
            &fleet,
            &client,
            "/",
            &impostor.sign(&claims(&idp, "ivan", "")),
        )
        .await,
        "the new key under the reused kid",
    );

    // A key removed from the file ends its tokens at the reload.
    let file_claims = |sub: &str| {
        let mut claims = claims(&idp, sub, "");
        claims["iss"] = json!(FILE_ISSUER);
        claims
    };
    let file_old_token = file_old.sign(&file_claims("fred"));
    let file_kept_token = file_kept.sign(&file_claims("fay"));
    for token in [&file_old_token, &file_kept_token] {
        for _ in 0..2 {
            echo(&with_token(&fleet, &client, "/", token).await, "file key");
        }
    }
    write_jwks(&[&file_kept]);
    fleet.rewrite(&config);
    let reloads = daemon.log().matches("configuration reloaded").count();
    daemon.signal(libc::SIGHUP);
    for _ in 0..200 {
        if daemon.log().matches("configuration reloaded").count() > reloads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        daemon.log().matches("configuration reloaded").count() > reloads,
        "the reload happened: {}",
        daemon.log()
    );
    assert_invalid(
        &with_token(&fleet, &client, "/", &file_old_token).await,
        "a token of the key removed from the file",
    );
    echo(
        &with_token(&fleet, &client, "/", &file_kept_token).await,
        "a token of the key left in the file",
    );
    assert!(
        daemon.log().contains("\"cached_tokens_dropped\""),
        "the retirement is audited with what it dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_is_budgeted_and_needs_the_audience() {
    const PER_SECOND: u64 = 3;
    let idp = Idp::start().await;
    let fleet = Fleet::new(1);
    let mut config = fleet.config();
    let opaque: IssuerConfig = toml::from_str(&format!(
        "issuer = {:?}\naudiences = [{AUDIENCE:?}]\nca = {:?}\n\
         [introspection]\nurl = {:?}\nclient_id = {CLIENT_ID:?}\nclient_secret_file = {:?}\n\
         client_calls_per_second = {PER_SECOND}\ncalls_per_second = {}\n",
        idp.issuer(),
        idp.ca_path,
        idp.url("/introspect"),
        secret_file(&fleet, "client_secret", CLIENT_SECRET),
        PER_SECOND * 2,
    ))
    .expect("issuer table");
    config.auth.issuers.insert("opaque".to_owned(), opaque);
    // A cache so small that garbage sharing it would evict the real token.
    config.auth.cache_entries = 4;
    // Signals counted, nobody blocked: the flood must show as auth failures.
    config.abuse.enabled = true;
    config.abuse.threshold = 1_000_000;
    let mut all = route("all", "/");
    all.auth = required(&["read"]);
    config.routes = vec![route("open", "/open"), all];
    let daemon = start(&fleet, &config).await;
    let client = fleet.client(Protocol::Http1);
    let calls = || idp.counters().introspection.load(Ordering::SeqCst);
    let active = |aud: Value| json!({"active": true, "sub": "svc", "scope": "read", "aud": aud, "exp": now() + 600});

    // The audience: exactly one of the issuer's, as a string or in an array.
    idp.add_opaque("no-aud", {
        let mut answer = active(json!(null));
        answer.as_object_mut().expect("object").remove("aud");
        answer
    });
    idp.add_opaque("spaced-aud", active(json!(format!("other {AUDIENCE}"))));
    idp.add_opaque("good", active(json!(["other", AUDIENCE])));
    for token in ["no-aud", "spaced-aud"] {
        let response = with_token(&fleet, &client, "/x", token).await;
        assert_invalid(&response, token);
        assert!(
            challenge(&response).contains("wrong audience"),
            "{token}: {}",
            challenge(&response)
        );
    }
    let good = echo(&with_token(&fleet, &client, "/x", "good").await, "good");
    assert_eq!(good["headers"]["x-auth-subject"], "svc");

    // 100 random opaque tokens: each refused, the provider asked at most the
    // budget, and the real token served from the cache throughout. First the
    // budget the audience checks spent refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let signals_before = auth_failures(&fleet).await;
    let before = calls();
    let started = std::time::Instant::now();
    for i in 0..100u32 {
        let garbage = format!("garbage-{i}-{}", fastrand_id() * 7919);
        assert_invalid(
            &with_token(&fleet, &client, "/x", &garbage).await,
            "random opaque token",
        );
        if i % 10 == 0 {
            echo(
                &with_token(&fleet, &client, "/x", "good").await,
                "the real token while garbage floods",
            );
        }
    }
    let flood_calls = calls() - before;
    // The per-client budget: a burst of PER_SECOND (partly spent above),
    // then PER_SECOND each second the flood took.
    let bound = PER_SECOND * (1 + started.elapsed().as_secs() + 1);
    println!(
        "100 random opaque tokens cost {flood_calls} introspection calls in {:?}",
        started.elapsed()
    );
    assert!(
        flood_calls <= bound,
        "100 random tokens caused {flood_calls} introspection calls (budget {bound})"
    );
    assert!(
        flood_calls >= 1,
        "within the budget, unknown tokens are still asked about"
    );
    let signals = auth_failures(&fleet).await - signals_before;
    assert!(
        signals >= 100.0,
        "every refusal, budgeted or not, is an auth failure of the client: {signals}"
    );
    assert!(
        daemon.log().contains("too many unknown tokens"),
        "the refusal says why"
    );
}

/// `gateway_abuse_signals_total{signal="auth_failure"}`.
async fn auth_failures(fleet: &Fleet) -> f64 {
    let metrics = gateway::observe::metrics::parse_text(&fleet.metrics().await);
    metrics
        .get("gateway_abuse_signals_total")
        .and_then(|series| {
            series
                .iter()
                .find(|(labels, _)| {
                    labels
                        .iter()
                        .any(|(k, v)| k == "signal" && v == "auth_failure")
                })
                .map(|(_, value)| *value)
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_a_token_by_a_hash_of_its_jti() {
    let idp = Idp::start().await;
    let key = SigningKey::generate(Algorithm::ES256, "es");
    idp.publish(&[&key]);
    let fleet = Fleet::new(1);
    let daemon = start(&fleet, &config(&fleet, &idp)).await;
    let client = fleet.client(Protocol::Http1);
    let claims = claims(&idp, "judy", "");
    let jti = claims["jti"].as_str().expect("jti").to_owned();
    let token = key.sign(&claims);
    echo(
        &with_token(&fleet, &client, "/", &token).await,
        "with a jti",
    );
    let mut without = claims.clone();
    without.as_object_mut().expect("object").remove("jti");
    let anonymous = key.sign(&without);
    echo(
        &with_token(&fleet, &client, "/", &anonymous).await,
        "without a jti",
    );

    daemon.wait_for_log(&hash16(&anonymous), Duration::from_secs(5));
    let log = daemon.log();
    let access: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["stream"] == "access" && line["user.id"] == "judy")
        .collect();
    assert_eq!(access.len(), 2, "{log}");
    assert_eq!(access[0]["jti_hash"], hash16(&jti), "{}", access[0]);
    assert_eq!(access[1]["jti_hash"], hash16(&anonymous), "{}", access[1]);
    assert!(!log.contains(&jti), "the raw jti reached the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_credentials_are_refused_400_invalid_request() {
    let idp = Idp::start().await;
    let es = SigningKey::generate(Algorithm::ES256, "es-1");
    idp.publish(&[&es]);
    let fleet = Fleet::new(1);
    let daemon = start(&fleet, &config(&fleet, &idp)).await;
    let valid = es.sign(&claims(&idp, "alice", "payments:write"));
    let other = es.sign(&claims(&idp, "mallory", "payments:write"));
    let bearer = format!("Bearer {valid}");
    // (case, path, header fields)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "two Authorization fields, same token",
            "/",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "two Authorization fields, different tokens",
            "/",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", format!("Bearer {other}")),
            ],
        ),
        (
            "Authorization and the token header",
            "/forwarding",
            vec![
                ("authorization", bearer.clone()),
                ("x-api-token", other.clone()),
            ],
        ),
        (
            "the token header twice",
            "/forwarding",
            vec![
                ("x-api-token", valid.clone()),
                ("x-api-token", other.clone()),
            ],
        ),
        (
            "Authorization and the token cookie",
            "/maybe",
            vec![
                ("authorization", bearer.clone()),
                ("cookie", format!("session={other}")),
            ],
        ),
        (
            "the token cookie twice",
            "/maybe",
            vec![("cookie", format!("session={valid}; session={other}"))],
        ),
        (
            "SP TAB before the token",
            "/",
            vec![("authorization", format!("Bearer \t{valid}"))],
        ),
        (
            "TAB after Bearer",
            "/",
            vec![("authorization", format!("Bearer\t{valid}"))],
        ),
        (
            "two tokens",
            "/",
            vec![("authorization", format!("Bearer {valid} {other}"))],
        ),
        (
            "a comma list",
            "/",
            vec![("authorization", format!("Bearer {valid}, Bearer {other}"))],
        ),
        (
            "Bearer alone",
            "/",
            vec![("authorization", "Bearer".to_owned())],
        ),
        (
            "padding before the token",
            "/",
            vec![("authorization", format!("Bearer ={valid}"))],
        ),
    ];
    let baseline = fleet.upstream_count().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = fleet.client(protocol);
        for (case, path, headers) in &cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let response = send(&fleet, &client, path, &headers).await;
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{protocol:?} {case}: {}",
                String::from_utf8_lossy(response.body())
            );
            assert_eq!(body(&response)["error"], "invalid_request", "{case}");
            assert!(
                challenge(&response).contains("error=\"invalid_request\""),
                "{case}: {}",
                challenge(&response)
            );
        }
    }
    assert_eq!(
        fleet.upstream_count().await,
        baseline,
        "no ambiguous credential reached the upstream"
    );
    // What RFC 6750 §2.1 allows passes: any case of the scheme, several spaces.
    let client = fleet.client(Protocol::Http1);
    for value in [
        format!("Bearer {valid}"),
        format!("bearer {valid}"),
        format!("Bearer   {valid}"),
    ] {
        let response = send(&fleet, &client, "/", &[("authorization", &value)]).await;
        assert_eq!(
            echo(&response, &value)["headers"]["x-auth-subject"],
            "alice"
        );
    }
    daemon.stop();
}
