//! `demo-idp LISTEN DIR`: the identity provider `cargo xtask demo` runs on — the
//! tests' provider (`gateway_tests::idp`) serving OIDC discovery and a JWKS over
//! HTTPS on LISTEN, with one published ES256 key. It writes into DIR the CA that
//! signed its certificate (`idp-ca.crt`, for the gateway's `ca`), three tokens
//! for audience `api.demo` — `token-read` (scope `orders:read`), `token-noscope`
//! (scope `profile` only) and `token-forged` (the published key id, signed by a
//! key the provider never published) — and, last, `idp.ready`. It serves until
//! SIGINT or SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use gateway_tests::idp::{Idp, SigningKey};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

/// The audience the demo's routes accept.
const AUDIENCE: &str = "api.demo";
/// How long the demo tokens stay valid: longer than any demo session.
const LIFETIME_SECS: u64 = 24 * 3600;

#[tokio::main]
async fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(listen), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: demo-idp LISTEN DIR");
        std::process::exit(2);
    };
    let Some(listen) = listen.to_str().and_then(|l| l.parse::<SocketAddr>().ok()) else {
        eprintln!("error: LISTEN must be an address and port, e.g. 198.18.1.20:443");
        std::process::exit(2);
    };
    if let Err(err) = serve(listen, &PathBuf::from(dir)).await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn serve(listen: SocketAddr, dir: &Path) -> Result<(), String> {
    let idp = Idp::start_at(listen).await;
    let key = SigningKey::generate(Algorithm::ES256, "demo-1");
    idp.publish(&[&key]);
    let forger = SigningKey::generate(Algorithm::ES256, "demo-1");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| format!("the clock is before 1970: {err}"))?
        .as_secs();
    let claims = |sub: &str, scope: &str| {
        json!({
            "iss": idp.issuer(),
            "aud": AUDIENCE,
            "sub": sub,
            "scope": scope,
            "iat": now,
            "exp": now + LIFETIME_SECS,
        })
    };
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|err| format!("writing {}: {err}", path.display()))
    };
    let ca = std::fs::read(&idp.ca_path)
        .map_err(|err| format!("reading {}: {err}", idp.ca_path.display()))?;
    write("idp-ca.crt", &ca)?;
    write(
        "token-read",
        key.sign(&claims("alice", "orders:read profile")).as_bytes(),
    )?;
    write(
        "token-noscope",
        key.sign(&claims("bob", "profile")).as_bytes(),
    )?;
    write(
        "token-forged",
        forger.sign(&claims("mallory", "orders:read")).as_bytes(),
    )?;
    write("idp.ready", idp.issuer().as_bytes())?;
    println!("identity provider {} serving on {listen}", idp.issuer());
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|err| format!("SIGINT handler: {err}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|err| format!("SIGTERM handler: {err}"))?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
