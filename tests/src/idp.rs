//! A real identity provider for the auth tests, served by the test itself over
//! HTTPS on loopback: an OIDC discovery document, a JWKS endpoint whose key set
//! the test rotates, and an RFC 7662 introspection endpoint that requires
//! client authentication. It counts what it serves, so tests can prove the
//! gateway's fetching is bounded, and can be switched to fail.
//!
//! Tokens are minted here with ES256, RS256 and EdDSA keys generated at test time.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pki::Ca;

/// The introspection client the gateway authenticates as.
pub const CLIENT_ID: &str = "gateway";
pub const CLIENT_SECRET: &str = "s3cret: with/odd+chars";

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
    /// The public key, PEM (what an attacker would try as an HMAC secret).
    pub public_pem: String,
}

impl SigningKey {
    /// A new key for `alg` (ES256, RS256 or EdDSA) named `kid`.
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let pair = match alg {
            Algorithm::ES256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            Algorithm::RS256 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
            Algorithm::EdDSA => KeyPair::generate_for(&PKCS_ED25519),
            other => panic!("no test keys for {other:?}"),
        }
        .expect("generating a signing key");
        let pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .expect("the generated key loads");
        let mut jwk = match alg {
            // jsonwebtoken cannot derive it from rcgen's PKCS#8 v2 document.
            Algorithm::EdDSA => serde_json::from_value(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "x": b64url(pair.public_key_raw()),
            }))
            .expect("Ed25519 JWK"),
            _ => Jwk::from_encoding_key(&encoding, alg).expect("public JWK"),
        };
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    /// A token with these claims, signed by this key with its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A token with a header of the test's making.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signing a token")
    }
}

/// What the provider has served, per endpoint.
#[derive(Default)]
pub struct Counters {
    pub discovery: AtomicU64,
    pub jwks: AtomicU64,
    pub introspection: AtomicU64,
}

struct State {
    issuer: String,
    keys: Mutex<Vec<Jwk>>,
    opaque: Mutex<HashMap<String, Value>>,
    down: AtomicBool,
    counters: Counters,
}

/// The running provider; stops when dropped.
pub struct Idp {
    pub addr: SocketAddr,
    pub ca_path: PathBuf,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Starts serving on a loopback port with a certificate from its own CA.
    pub async fn start() -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts serving on `listen` (port 0: any free one), with a certificate for
    /// its address, so the demo can run it on the test network.
    pub async fn start_at(listen: SocketAddr) -> Self {
        let ca = Ca::new("identity provider CA");
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_path = ca.write(dir.path(), "idp-ca");
        let issued = ca.issue_server(&[&listen.ip().to_string()]);
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM");
        let mut tls = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(listen)
            .await
            .expect("binding the provider");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            issuer: format!("https://{addr}"),
            keys: Mutex::new(Vec::new()),
            opaque: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(serve(&state, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_path,
            state,
            task,
            _dir: dir,
        }
    }

    /// The `iss` its tokens carry.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Replaces the published key set.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Makes every endpoint answer 503 (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Registers an opaque token and the introspection answer for it.
    pub fn add_opaque(&self, token: &str, answer: Value) {
        self.state
            .opaque
            .lock()
            .expect("opaque tokens")
            .insert(token.to_owned(), answer);
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.counters.jwks.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let counter = match parts.uri.path() {
        "/.well-known/openid-configuration" => &state.counters.discovery,
        "/jwks" => &state.counters.jwks,
        "/introspect" => &state.counters.introspection,
        _ => return answer(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    counter.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"}));
    }
    match (parts.method, parts.uri.path()) {
        (Method::GET, "/.well-known/openid-configuration") => answer(
            StatusCode::OK,
            json!({
                "issuer": state.issuer,
                "jwks_uri": format!("{}/jwks", state.issuer),
                "introspection_endpoint": format!("{}/introspect", state.issuer),
            }),
        ),
        (Method::GET, "/jwks") => {
            let keys = state.keys.lock().expect("keys").clone();
            answer(StatusCode::OK, json!({ "keys": keys }))
        }
        (Method::POST, "/introspect") => {
            let expected = format!(
                "Basic {}",
                base64(
                    format!("{}:{}", form_encode(CLIENT_ID), form_encode(CLIENT_SECRET)).as_bytes()
                )
            );
            let authorized = parts
                .headers
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !authorized {
                return answer(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
            }
            let form = String::from_utf8_lossy(&body);
            let token = form
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
                .map(form_decode)
                .unwrap_or_default();
            let found = state
                .opaque
                .lock()
                .expect("opaque tokens")
                .get(&token)
                .cloned();
            answer(StatusCode::OK, found.unwrap_or(json!({"active": false})))
        }
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, json!({})),
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("max-age=300"),
    );
    response
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding, written out so the provider does not share
/// the gateway's encoder (a bug there must not hide itself here).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = String::new();
    for &byte in bytes {
        bits = bits << 8 | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[(bits >> count & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[(bits << (6 - count) & 63) as usize] as char);
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

/// base64url without padding, as JOSE uses it.
pub fn b64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}
