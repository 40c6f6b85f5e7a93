//! An issuer's signing keys: read from a JWKS file, a JWKS URL or found through
//! OIDC discovery; refreshed in the background (honouring `Cache-Control:
//! max-age` within bounds); fetched again at once for an unknown `kid`, but at
//! most once per `unknown_kid_interval`, so random `kid`s cannot hammer the
//! provider. When the provider is down the last good keys stay in use.
//!
//! A key that leaves the set (a refresh, a rotation, a reload) is retired:
//! the tokens it verified are dropped from every verified-token cache that
//! watches the set, so the next request with such a token is verified again.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse},
};
use tracing::{info, warn};

use super::{
    cache::TokenCache,
    fetch::{FetchError, Fetcher},
};
use crate::config::{IssuerConfig, secret::redacted_url};

/// What names a key across refreshes: the SHA-256 of its `kid` and public
/// parameters, so a `kid` reused for new key material is a different key.
pub type Fingerprint = [u8; 32];

/// Keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    DiscoveryIssuer { found: String, expected: String },
    #[error("discovery document has no https jwks_uri")]
    NoJwksUri,
    #[error("the key set holds no usable signing key")]
    Empty,
}

/// One verification key.
pub struct Key {
    pub decoding: DecodingKey,
    /// The algorithm the JWK pins, if it names one.
    pub alg: Option<Algorithm>,
    pub fingerprint: Fingerprint,
}

/// One generation of keys.
#[derive(Default)]
pub struct Keys {
    pub by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (tried in turn for tokens without one).
    pub unnamed: Vec<Arc<Key>>,
    /// Every key's fingerprint, so a cache hit checks its key in O(1).
    pub fingerprints: HashSet<Fingerprint>,
}

impl Keys {
    fn add(&mut self, kid: Option<&str>, key: Key) {
        self.fingerprints.insert(key.fingerprint);
        match kid {
            Some(kid) => {
                self.by_kid.insert(kid.to_owned(), Arc::new(key));
            }
            None => self.unnamed.push(Arc::new(key)),
        }
    }
}

enum Source {
    File(PathBuf),
    Url(String),
    Discovery {
        url: String,
        jwks_uri: Mutex<Option<String>>,
    },
}

/// The keys of one issuer and how to renew them.
pub struct KeySet {
    name: String,
    issuer: String,
    keys: ArcSwap<Keys>,
    source: Source,
    fetcher: Option<Fetcher>,
    refresh: (Duration, Duration, Duration),
    unknown_kid_interval: Duration,
    /// When the last refetch for an unknown `kid` started.
    last_unknown: Mutex<Option<Instant>>,
    /// Serialises fetches, so a burst of requests causes one.
    fetching: tokio::sync::Mutex<()>,
    /// The verified-token caches holding tokens of these keys.
    caches: Mutex<Vec<Weak<TokenCache>>>,
}

impl KeySet {
    /// `None` when the issuer has no key source (introspection only). Fetches
    /// the keys once before returning, so traffic never meets an empty set
    /// because of a slow start; a provider that is down at start is logged
    /// and retried in the background.
    pub async fn start(name: &str, config: &IssuerConfig) -> Result<Option<Arc<Self>>, JwksError> {
        let source = match (&config.jwks_file, &config.jwks_url, &config.discovery_url) {
            (Some(path), _, _) => Source::File(path.clone()),
            (_, Some(url), _) => Source::Url(url.clone()),
            (_, _, Some(url)) => Source::Discovery {
                url: url.clone(),
                jwks_uri: Mutex::new(None),
            },
            _ => return Ok(None),
        };
        let fetcher = match (&source, &config.ca) {
            (Source::File(_), _) | (_, None) => None,
            (_, Some(ca)) => Some(Fetcher::new(ca, config.fetch_timeout)?),
        };
        let set = Arc::new(Self {
            name: name.to_owned(),
            issuer: config.issuer.clone(),
            keys: ArcSwap::from_pointee(Keys::default()),
            source,
            fetcher,
            refresh: (
                config.refresh_interval,
                config.min_refresh_interval,
                config.max_refresh_interval,
            ),
            unknown_kid_interval: config.unknown_kid_interval,
            last_unknown: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            caches: Mutex::new(Vec::new()),
        });
        let first = match set.load().await {
            Ok(max_age) => set.next_refresh(max_age),
            Err(err) if matches!(set.source, Source::File(_)) => return Err(err),
            Err(err) => {
                warn!(issuer = %set.name, %err, "identity provider unreachable at start; its tokens are refused until its keys arrive");
                metrics::counter!("gateway_auth_jwks_fetch_failures_total", "issuer" => set.name.clone()).increment(1);
                set.refresh.1
            }
        };
        if !matches!(set.source, Source::File(_)) {
            tokio::spawn(refresh_loop(Arc::downgrade(&set), first));
        }
        Ok(Some(set))
    }

    /// The current keys.
    pub fn current(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// Whether the key with this fingerprint is still in the set.
    pub fn holds(&self, key: &Fingerprint) -> bool {
        self.keys.load().fingerprints.contains(key)
    }

    /// Drop tokens from `cache` when their key is retired.
    pub fn watch(&self, cache: &Arc<TokenCache>) {
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        caches.retain(|weak| weak.strong_count() > 0);
        if !caches
            .iter()
            .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(cache)))
        {
            caches.push(Arc::downgrade(cache));
        }
    }

    /// Reads the key set again (a reload): a file must be readable, as at
    /// start; a provider that is down leaves the last good keys in use.
    pub async fn reload(&self) -> Result<(), JwksError> {
        match self.load().await {
            Ok(_) => Ok(()),
            Err(err) if matches!(self.source, Source::File(_)) => Err(err),
            Err(err) => {
                warn!(issuer = %self.name, %err, "refetching keys at reload failed; keeping the last good keys");
                Ok(())
            }
        }
    }

    /// A token named a `kid` we do not know: fetch again unless that was done
    /// within `unknown_kid_interval` (then the `kid` stays unknown: the
    /// negative cache). Returns the keys to retry with, if any were fetched.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Option<Arc<Keys>> {
        if matches!(self.source, Source::File(_)) {
            return None;
        }
        {
            let mut last = self
                .last_unknown
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.unknown_kid_interval) {
                metrics::counter!("gateway_auth_unknown_kid_total", "issuer" => self.name.clone(), "fetched" => "false").increment(1);
                return None;
            }
            *last = Some(Instant::now());
        }
        metrics::counter!("gateway_auth_unknown_kid_total", "issuer" => self.name.clone(), "fetched" => "true").increment(1);
        info!(issuer = %self.name, kid, "unknown key id; fetching the key set again");
        match self.load().await {
            Ok(_) => Some(self.current()),
            Err(err) => {
                warn!(issuer = %self.name, %err, "refetching keys failed; keeping the last good keys");
                None
            }
        }
    }

    /// Fetches (or reads) the key set and swaps it in; returns the provider's max-age.
    async fn load(&self) -> Result<Option<Duration>, JwksError> {
        let _one_at_a_time = self.fetching.lock().await;
        let (body, max_age) = match &self.source {
            Source::File(path) => {
                let body = std::fs::read(path).map_err(|source| JwksError::Read {
                    path: path.clone(),
                    source,
                })?;
                (bytes::Bytes::from(body), None)
            }
            Source::Url(url) => {
                let fetched = self.fetcher()?.get(url).await?;
                (fetched.body, fetched.max_age)
            }
            Source::Discovery { url, jwks_uri } => {
                let known = jwks_uri
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                let uri = match known {
                    Some(uri) => uri,
                    None => {
                        let uri = self.discover(url).await?;
                        *jwks_uri
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(uri.clone());
                        uri
                    }
                };
                match self.fetcher()?.get(&uri).await {
                    Ok(fetched) => (fetched.body, fetched.max_age),
                    Err(err) => {
                        // The provider may have moved its keys: discover again next time.
                        *jwks_uri
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                        return Err(err.into());
                    }
                }
            }
        };
        let set: JwkSet = serde_json::from_slice(&body).map_err(|source| JwksError::Json {
            what: "the key set".to_owned(),
            source,
        })?;
        let keys = parse_keys(&set);
        if keys.by_kid.is_empty() && keys.unnamed.is_empty() {
            return Err(JwksError::Empty);
        }
        info!(issuer = %self.name, keys = keys.by_kid.len() + keys.unnamed.len(), "signing keys loaded");
        metrics::gauge!("gateway_auth_jwks_keys", "issuer" => self.name.clone())
            .set((keys.by_kid.len() + keys.unnamed.len()) as f64);
        let old = self.keys.swap(Arc::new(keys));
        self.retire(&old);
        Ok(max_age)
    }

    /// Drops the cached tokens of every key in `old` that left the set.
    fn retire(&self, old: &Keys) {
        let current = self.keys.load();
        let retired: Vec<Fingerprint> = old
            .fingerprints
            .difference(&current.fingerprints)
            .copied()
            .collect();
        if retired.is_empty() {
            return;
        }
        let caches: Vec<Arc<TokenCache>> = self
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let dropped: usize = caches
            .iter()
            .map(|cache| cache.retire(&self.name, &retired))
            .sum();
        info!(
            target: "audit",
            event = "signing_key_retired",
            issuer = %self.name,
            keys = retired.len(),
            cached_tokens_dropped = dropped,
            "signing keys left the key set; the tokens they verified are verified again"
        );
    }

    async fn discover(&self, url: &str) -> Result<String, JwksError> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: Option<String>,
        }
        let fetched = self.fetcher()?.get(url).await?;
        let doc: Discovery =
            serde_json::from_slice(&fetched.body).map_err(|source| JwksError::Json {
                what: format!("discovery document {}", redacted_url(url)),
                source,
            })?;
        if doc.issuer != self.issuer {
            return Err(JwksError::DiscoveryIssuer {
                found: doc.issuer,
                expected: self.issuer.clone(),
            });
        }
        doc.jwks_uri
            .filter(|uri| uri.starts_with("https://"))
            .ok_or(JwksError::NoJwksUri)
    }

    fn fetcher(&self) -> Result<&Fetcher, JwksError> {
        // Config validation requires a CA for every HTTPS source.
        self.fetcher.as_ref().ok_or(JwksError::NoJwksUri)
    }

    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        let (default, min, max) = self.refresh;
        max_age.unwrap_or(default).clamp(min, max)
    }
}

/// Refreshes until the key set is dropped (its issuer left the configuration).
async fn refresh_loop(set: Weak<KeySet>, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let Some(set) = set.upgrade() else { return };
        wait = match set.load().await {
            Ok(max_age) => set.next_refresh(max_age),
            Err(err) => {
                warn!(
                    event = "jwks_refresh_failed",
                    issuer = %set.name,
                    %err,
                    "refreshing the signing keys failed; serving with the last good keys"
                );
                metrics::counter!("gateway_auth_jwks_fetch_failures_total", "issuer" => set.name.clone()).increment(1);
                set.refresh.1
            }
        };
    }
}

/// The usable signing keys of a set: public keys only (symmetric `oct` keys
/// are never accepted), not marked for encryption.
fn parse_keys(set: &JwkSet) -> Keys {
    let mut keys = Keys::default();
    for jwk in &set.keys {
        if matches!(
            jwk.algorithm,
            AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
        ) || matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        {
            continue;
        }
        let Some(key) = to_key(jwk) else { continue };
        keys.add(jwk.common.key_id.as_deref(), key);
    }
    keys
}

fn to_key(jwk: &Jwk) -> Option<Key> {
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(alg.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(jwk.common.key_id.as_deref().unwrap_or_default().as_bytes());
    context.update(&[0]);
    context.update(&serde_json::to_vec(&jwk.algorithm).ok()?);
    context.update(&[0]);
    context.update(format!("{alg:?}").as_bytes());
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(context.finish().as_ref());
    Some(Key {
        decoding,
        alg,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[(&str, &str)]) -> JwkSet {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, x)| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}))
            .collect();
        serde_json::from_value(serde_json::json!({ "keys": keys })).expect("key set")
    }

    #[test]
    fn a_key_is_its_kid_and_its_material() {
        let a = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let b = "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08";
        let fingerprints = |keys: &[(&str, &str)]| parse_keys(&set(keys)).fingerprints;
        let first = fingerprints(&[("k1", a), ("k2", b)]);
        assert_eq!(first.len(), 2);
        assert_eq!(
            first,
            fingerprints(&[("k2", b), ("k1", a)]),
            "a refresh keeps them"
        );
        // New material under an old kid, or old material under a new kid, is another key.
        assert!(first.is_disjoint(&fingerprints(&[("k1", b)])));
        assert!(first.is_disjoint(&fingerprints(&[("k3", a)])));
    }
}
