//! What a token costs the gateway: a cold verification (signature and claims)
//! against a verified-token cache hit, per algorithm, through the same
//! `Auth::authenticate` the pipeline calls. A measurement, not a test of
//! speed: it prints numbers and asserts only that every token was accepted.
//!
//! `cargo test --release -p gateway-tests --test auth_cost -- --ignored --nocapture`

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::{
    auth::{Auth, revocation::Revocations},
    config::{AuthMode, AuthSection, IssuerConfig, RouteAuth},
};
use gateway_tests::idp::SigningKey;
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISSUER: &str = "https://idp.test";
const TOKENS: usize = 2_000;
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
    );
    headers
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn cold_verification_against_cache_hit() {
    let keys = [
        SigningKey::generate(Algorithm::RS256, "rs"),
        SigningKey::generate(Algorithm::ES256, "es"),
        SigningKey::generate(Algorithm::EdDSA, "ed"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(&jwks, set.to_string()).expect("writing the key set");
    let issuer: IssuerConfig = toml::from_str(&format!(
        "issuer = {ISSUER:?}\naudiences = [\"api\"]\njwks_file = {jwks:?}\n"
    ))
    .expect("issuer");
    let mut section = AuthSection {
        cache_entries: TOKENS * 4,
        ..AuthSection::default()
    };
    section.issuers.insert("main".to_owned(), issuer);
    let auth = Auth::build(&section, None, Arc::new(Revocations::open(None)))
        .await
        .expect("auth");
    let policy = RouteAuth {
        mode: AuthMode::Required,
        scopes_all: vec!["read".to_owned()],
        ..RouteAuth::default()
    };
    let now = jsonwebtoken::get_current_timestamp();

    println!("| algorithm | cold verification | cache hit | speedup |");
    println!("| --- | --- | --- | --- |");
    for key in &keys {
        let tokens: Vec<HeaderMap> = (0..TOKENS)
            .map(|i| {
                bearer(&key.sign(&json!({
                    "iss": ISSUER, "aud": "api", "sub": format!("user-{i}"),
                    "scope": "read write", "iat": now, "exp": now + 600,
                    "jti": format!("{:?}-{i}", key.alg),
                })))
            })
            .collect();
        // Cold: every token seen for the first time.
        let started = Instant::now();
        for headers in &tokens {
            let verified = auth.authenticate(&policy, headers, CLIENT).await;
            assert!(
                matches!(verified, Ok(Some(_))),
                "{verified:?}",
                verified = verified.err()
            );
        }
        let cold = started.elapsed() / TOKENS as u32;
        // Hit: the same tokens again, now in the cache.
        let started = Instant::now();
        for headers in &tokens {
            assert!(matches!(
                auth.authenticate(&policy, headers, CLIENT).await,
                Ok(Some(_))
            ));
        }
        let hit = started.elapsed() / TOKENS as u32;
        println!(
            "| {:?} | {} | {} | {:.0}× |",
            key.alg,
            micros(cold),
            micros(hit),
            cold.as_secs_f64() / hit.as_secs_f64()
        );
    }
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}
