//! Who is calling: tokens checked at the edge before a byte reaches the fleet.
//!
//! - [`jwt`]: JWT validation rules per issuer.
//! - [`jwks`]: signing keys (file, URL, OIDC discovery), refresh and rotation.
//! - [`introspection`]: RFC 7662 for opaque tokens.
//! - [`cache`]: tokens already verified.
//! - [`revocation`]: the `jti`/subject denylist.
//! - [`policy`]: a route's scopes, roles and claims.
//!
//! The pipeline calls [`Auth::authenticate`] after routing and
//! [`Auth::forward`] when it builds the upstream request.

pub mod cache;
mod fetch;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod policy;
pub mod revocation;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::Value;
use tracing::{info, warn};

use self::{
    cache::{Cached, TokenCache},
    fetch::FetchError,
    introspection::{Introspected, Introspector, OverBudget},
    jwks::{Fingerprint, JwksError, KeySet},
    jwt::{JwtError, Rules},
    revocation::Revocations,
};
use crate::config::{AuthMode, AuthSection, IssuerConfig, RouteAuth};

/// The verified caller of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The caller (`sub`).
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Granted roles.
    pub roles: Vec<String>,
    /// What logs name instead of the token: [`log_hash`] of its `jti`, or of
    /// the token itself when it has none. Never the raw `jti`, which is a
    /// bearer-adjacent secret in some deployments and a revocation handle.
    pub token_id: Option<String>,
}

/// A verified token: the identity and what the policy and headers need.
pub struct Verified {
    pub identity: Identity,
    /// The `[auth.issuers]` key that accepted it.
    pub issuer: String,
    pub claims: Value,
    pub jti: Option<String>,
    /// The signing key that verified it (`None` for introspection): a cache
    /// hit is honoured only while the issuer still holds this key.
    pub key: Option<Fingerprint>,
    /// Claim values for `[auth.claim_headers]`.
    forwarded: Vec<(HeaderName, HeaderValue)>,
    /// The identity as header values (subject, issuer, scopes, roles), made
    /// once per token so a cache hit forwards them without formatting; `None`
    /// when empty or not a valid header value (not forwarded).
    identity_values: [Option<HeaderValue>; 4],
}

/// [`Verified::identity_values`] of `identity`.
fn identity_values(identity: &Identity) -> [Option<HeaderValue>; 4] {
    [
        identity.subject.clone(),
        identity.issuer.clone(),
        identity.scopes.join(" "),
        identity.roles.join(","),
    ]
    .map(|value| {
        if value.is_empty() {
            None
        } else {
            HeaderValue::from_str(&value).ok()
        }
    })
}

/// Why a request was refused; becomes 401, 403 or 503 in `proxy::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("forbidden: {description}")]
    InsufficientScope { scope: String, description: String },
    #[error("the identity provider is unavailable; try again later")]
    Unavailable,
    /// Credentials that two readers could read differently (RFC 6750 §3.1
    /// `invalid_request`): several, or not in the scheme's grammar.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

impl AuthError {
    /// The RFC 6750 `WWW-Authenticate` challenge for this refusal.
    pub fn challenge(&self) -> Option<String> {
        let quote = |text: &str| text.replace(['"', '\\'], "'");
        match self {
            Self::MissingToken => Some("Bearer realm=\"gateway\"".to_owned()),
            Self::InvalidToken(description) => Some(format!(
                "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"{}\"",
                quote(description)
            )),
            Self::InsufficientScope { scope, description } => Some(format!(
                "Bearer realm=\"gateway\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quote(description),
                quote(scope)
            )),
            Self::InvalidRequest(description) => Some(format!(
                "Bearer realm=\"gateway\", error=\"invalid_request\", error_description=\"{description}\""
            )),
            Self::Unavailable => None,
        }
    }

    /// Stable code for logs, metrics and the abuse loop.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Unavailable => "auth_unavailable",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// An issuer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error("auth.issuers.{name}: {source}")]
    Keys { name: String, source: JwksError },
    #[error("auth.issuers.{name}.introspection: {source}")]
    Introspection { name: String, source: FetchError },
}

/// One identity provider.
pub struct Issuer {
    name: String,
    config: IssuerConfig,
    rules: Rules,
    keys: Option<Arc<KeySet>>,
    introspector: Option<Introspector>,
}

impl Issuer {
    async fn start(name: &str, config: &IssuerConfig) -> Result<Self, AuthStartError> {
        let keys = KeySet::start(name, config)
            .await
            .map_err(|source| AuthStartError::Keys {
                name: name.to_owned(),
                source,
            })?;
        let introspector =
            Introspector::new(config).map_err(|source| AuthStartError::Introspection {
                name: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            rules: Rules::new(config),
            keys,
            introspector,
        })
    }
}

/// One configuration's identity settings; key sets and the cache are carried
/// over a reload when the issuers did not change.
pub struct Auth {
    section: AuthSection,
    issuers: BTreeMap<String, Arc<Issuer>>,
    cache: Arc<TokenCache>,
    revocations: Arc<Revocations>,
    /// Every header name that carries identity upstream, stripped from clients.
    identity_names: Vec<HeaderName>,
    /// The identity headers' names (subject, issuer, scopes, roles), parsed
    /// once; `None` for a name that is not a valid header name.
    identity_headers: [Option<HeaderName>; 4],
}

impl Auth {
    /// Issuers with a key source but no key yet (the provider was down at start):
    /// their tokens are refused until keys arrive, so `/readyz` names them.
    pub fn issuers_without_keys(&self) -> Vec<&str> {
        self.issuers
            .values()
            .filter(|issuer| {
                issuer.keys.as_ref().is_some_and(|keys| {
                    let current = keys.current();
                    current.by_kid.is_empty() && current.unnamed.is_empty()
                })
            })
            .map(|issuer| issuer.name.as_str())
            .collect()
    }

    /// Builds the issuers (fetching their keys before traffic is accepted).
    pub async fn build(
        section: &AuthSection,
        previous: Option<&Auth>,
        revocations: Arc<Revocations>,
    ) -> Result<Self, AuthStartError> {
        let mut issuers = BTreeMap::new();
        for (name, config) in &section.issuers {
            let reused = previous
                .and_then(|p| p.issuers.get(name))
                .filter(|issuer| issuer.config == *config);
            let issuer = match reused {
                Some(issuer) => {
                    // A reload reads the keys again, so a key removed from the
                    // file (or the provider's set) is retired now.
                    if let Some(keys) = &issuer.keys {
                        keys.reload().await.map_err(|source| AuthStartError::Keys {
                            name: name.clone(),
                            source,
                        })?;
                    }
                    issuer.clone()
                }
                None => Arc::new(Issuer::start(name, config).await?),
            };
            issuers.insert(name.clone(), issuer);
        }
        let cache = match previous {
            Some(p)
                if p.section.issuers == section.issuers
                    && p.section.cache_entries == section.cache_entries
                    && p.section.claim_headers == section.claim_headers =>
            {
                p.cache.clone()
            }
            _ => Arc::new(TokenCache::new(section.cache_entries)),
        };
        for keys in issuers.values().filter_map(|issuer| issuer.keys.as_ref()) {
            keys.watch(&cache);
        }
        let headers = &section.identity_headers;
        let identity_names = [
            &headers.subject,
            &headers.issuer,
            &headers.scopes,
            &headers.roles,
        ]
        .into_iter()
        .chain(section.claim_headers.values())
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
        let identity_headers = [
            &headers.subject,
            &headers.issuer,
            &headers.scopes,
            &headers.roles,
        ]
        .map(|name| HeaderName::from_bytes(name.as_bytes()).ok());
        Ok(Self {
            section: section.clone(),
            issuers,
            cache,
            revocations,
            identity_names,
            identity_headers,
        })
    }

    /// The caller of a request from `client` on a route with `policy`:
    /// `Ok(None)` when the route needs no token and none was sent (or the
    /// route looks at none). `client` is charged for introspection calls.
    pub async fn authenticate(
        &self,
        policy: &RouteAuth,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Arc<Verified>>, AuthError> {
        if policy.mode == AuthMode::None {
            return Ok(None);
        }
        let token = extract_token(policy, headers).map_err(|err| self.refused(&err, None))?;
        let Some(token) = token else {
            return match policy.mode {
                AuthMode::Required => Err(self.refused(&AuthError::MissingToken, None)),
                _ => Ok(None),
            };
        };
        match self.verify(policy, token, client).await {
            Ok(verified) => {
                metrics::counter!("gateway_auth_requests_total", "result" => "ok").increment(1);
                Ok(Some(verified))
            }
            // Hashed for the audit line only: an accepted token was hashed once
            // already, for the cache.
            Err(err) => Err(self.refused(&err, Some(&log_hash(token)))),
        }
    }

    fn refused(&self, err: &AuthError, token: Option<&str>) -> AuthError {
        metrics::counter!("gateway_auth_requests_total", "result" => err.code()).increment(1);
        info!(target: "audit", event = "auth_refused", code = err.code(), reason = %err, token, "request refused at the edge");
        err.clone()
    }

    async fn verify(
        &self,
        policy: &RouteAuth,
        token: &str,
        client: IpAddr,
    ) -> Result<Arc<Verified>, AuthError> {
        let allowed: Vec<&Arc<Issuer>> = self
            .issuers
            .values()
            .filter(|i| policy.issuers.is_empty() || policy.issuers.contains(&i.name))
            .collect();
        let limit = allowed
            .iter()
            .map(|i| i.config.max_token_bytes)
            .max()
            .unwrap_or(0);
        if token.len() > limit {
            return Err(AuthError::InvalidToken("token too large".to_owned()));
        }
        let key = cache::hash(token);
        let verified = match self.cache.get(&key) {
            Some(Cached::Valid(verified)) if self.key_held(&verified) => verified,
            Some(Cached::Valid(_)) => {
                // Its key was retired after it was cached: verify it again.
                self.cache.remove(&key);
                self.verify_cold(&allowed, token, key, client).await?
            }
            Some(Cached::Inactive) => {
                return Err(AuthError::InvalidToken("token inactive".to_owned()));
            }
            None => self.verify_cold(&allowed, token, key, client).await?,
        };
        if !allowed.iter().any(|i| i.name == verified.issuer) {
            return Err(AuthError::InvalidToken(
                "issuer not accepted here".to_owned(),
            ));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if self.revocations.current().is_revoked(
            verified.jti.as_deref(),
            &verified.identity.subject,
            now,
        ) {
            return Err(AuthError::InvalidToken("token revoked".to_owned()));
        }
        policy::authorize(policy, &verified)?;
        Ok(verified)
    }

    /// Whether the key that verified a cached token is still its issuer's.
    fn key_held(&self, verified: &Verified) -> bool {
        let Some(key) = &verified.key else {
            return true;
        };
        self.issuers
            .get(&verified.issuer)
            .and_then(|issuer| issuer.keys.as_ref())
            .is_some_and(|keys| keys.holds(key))
    }

    /// Verifies a token not in the cache, and caches the outcome.
    async fn verify_cold(
        &self,
        allowed: &[&Arc<Issuer>],
        token: &str,
        key: cache::TokenHash,
        client: IpAddr,
    ) -> Result<Arc<Verified>, AuthError> {
        let invalid = |err: JwtError| AuthError::InvalidToken(err.to_string());
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            let claimed = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
                .map_err(|_| invalid(JwtError::Malformed))?;
            let iss = claimed["iss"].as_str().unwrap_or_default();
            let issuer = allowed
                .iter()
                .find(|i| i.keys.is_some() && i.config.issuer == iss)
                .ok_or_else(|| invalid(JwtError::Issuer))?;
            if token.len() > issuer.config.max_token_bytes {
                return Err(AuthError::InvalidToken("token too large".to_owned()));
            }
            let (claims, signer) = verify_jwt(issuer, token).await.map_err(invalid)?;
            let verified = Arc::new(self.verified(issuer, claims, token, Some(signer)));
            let exp = verified.claims["exp"].as_u64().unwrap_or_default();
            let left = exp.saturating_sub(jsonwebtoken::get_current_timestamp());
            self.cache
                .insert_valid(key, verified.clone(), Duration::from_secs(left));
            return Ok(verified);
        }
        let Some(issuer) = allowed.iter().find(|i| i.introspector.is_some()) else {
            return Err(invalid(JwtError::Malformed));
        };
        let Some(introspector) = &issuer.introspector else {
            return Err(invalid(JwtError::Malformed));
        };
        if let Err(over) = introspector.admit(client) {
            let budget = match over {
                OverBudget::Client => "client",
                OverBudget::Global => "global",
            };
            metrics::counter!("gateway_auth_introspection_throttled_total", "issuer" => issuer.name.clone(), "budget" => budget).increment(1);
            return Err(AuthError::InvalidToken(
                "too many unknown tokens; try again later".to_owned(),
            ));
        }
        let answer = introspector.introspect(token).await.map_err(|err| {
            warn!(issuer = %issuer.name, %err, "token introspection failed; refusing with 503 (fail closed)");
            metrics::counter!("gateway_auth_introspection_failures_total", "issuer" => issuer.name.clone()).increment(1);
            AuthError::Unavailable
        })?;
        let inactive = |why: &str| {
            self.cache
                .insert_inactive(key, introspector.config.negative_cache_ttl);
            AuthError::InvalidToken(why.to_owned())
        };
        let Introspected::Active(claims) = answer else {
            return Err(inactive("token inactive"));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let exp = claims["exp"].as_u64();
        if exp.is_some_and(|exp| exp <= now) {
            return Err(inactive("token expired"));
        }
        // An issuer with audiences (validation requires them) accepts only an
        // answer naming one: an answer without `aud` may be for any client of
        // the provider.
        if !issuer.config.audiences.is_empty()
            && !introspection::audience_matches(&claims, &issuer.config.audiences)
        {
            return Err(inactive("wrong audience"));
        }
        let verified = Arc::new(self.verified(issuer, claims, token, None));
        self.cache
            .insert_valid(key, verified.clone(), introspector.positive_ttl(exp));
        Ok(verified)
    }

    fn verified(
        &self,
        issuer: &Issuer,
        claims: Value,
        token: &str,
        key: Option<Fingerprint>,
    ) -> Verified {
        let jti = claims["jti"].as_str().map(str::to_owned);
        let identity = Identity {
            issuer: claims["iss"]
                .as_str()
                .unwrap_or(&issuer.config.issuer)
                .to_owned(),
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            scopes: policy::strings(&claims, &issuer.config.scope_claim),
            roles: policy::strings(&claims, &issuer.config.roles_claim),
            token_id: Some(log_hash(jti.as_deref().unwrap_or(token))),
        };
        let forwarded = self
            .section
            .claim_headers
            .iter()
            .filter_map(|(path, name)| {
                let value = match policy::claim(&claims, path)? {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(&value).ok()?,
                ))
            })
            .collect();
        Verified {
            identity_values: identity_values(&identity),
            identity,
            issuer: issuer.name.clone(),
            claims,
            jti,
            key,
            forwarded,
        }
    }

    /// Sets the identity headers for the upstream. Client-sent headers of those
    /// names are always removed first, on every route, so nobody can claim an
    /// identity; the token itself goes on only where the route says so.
    pub fn forward(
        &self,
        policy: &RouteAuth,
        verified: Option<&Verified>,
        headers: &mut HeaderMap,
    ) {
        for name in &self.identity_names {
            headers.remove(name);
        }
        if policy.mode != AuthMode::None && !policy.forward_authorization {
            headers.remove(header::AUTHORIZATION);
            if let Some(name) = &policy.token_header {
                headers.remove(name.as_str());
            }
        }
        let Some(verified) = verified else { return };
        for (name, value) in self.identity_headers.iter().zip(&verified.identity_values) {
            if let (Some(name), Some(value)) = (name, value) {
                headers.insert(name.clone(), value.clone());
            }
        }
        for (name, value) in &verified.forwarded {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Verifies a JWT, fetching the keys again once for an unknown `kid`; the
/// claims and the key that verified them.
async fn verify_jwt(issuer: &Issuer, token: &str) -> Result<(Value, Fingerprint), JwtError> {
    let Some(keys) = &issuer.keys else {
        return Err(JwtError::NoKey);
    };
    let header = issuer.rules.header(token)?;
    match issuer.rules.verify(token, &header, &keys.current()) {
        Err(JwtError::UnknownKid) => {
            let kid = header.kid.as_deref().unwrap_or_default();
            match keys.refetch_for_unknown_kid(kid).await {
                Some(fresh) => issuer.rules.verify(token, &header, &fresh),
                None => Err(JwtError::UnknownKid),
            }
        }
        other => other,
    }
}

/// The one token of the request: from `Authorization: Bearer`, the route's
/// `token_header` or its `token_cookie`. Credentials in more than one place,
/// several `Authorization` fields (or token headers, or token cookies), or a
/// Bearer value outside RFC 6750 §2.1 are refused rather than guessed at: a
/// component behind the gateway might read another one than the gateway did.
fn extract_token<'a>(
    policy: &RouteAuth,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, AuthError> {
    let one = |values: header::GetAll<'a, HeaderValue>, what| {
        let mut values = values.iter();
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(AuthError::InvalidRequest(what)),
            (value, None) => Ok(value),
        }
    };
    let authorization = one(
        headers.get_all(header::AUTHORIZATION),
        "more than one Authorization header",
    )?;
    let from_header = match policy.token_header.as_deref() {
        Some(name) => one(headers.get_all(name), "more than one token header")?,
        None => None,
    };
    let from_cookie = match policy.token_cookie.as_deref() {
        Some(name) => cookie(headers, name)?,
        None => None,
    };
    let present = [
        authorization.is_some(),
        from_header.is_some(),
        from_cookie.is_some(),
    ];
    if present.iter().filter(|&&p| p).count() > 1 {
        return Err(AuthError::InvalidRequest(
            "credentials in more than one place",
        ));
    }
    if let Some(value) = authorization {
        return bearer(value.as_bytes());
    }
    let token = from_header
        .map(|v| {
            v.to_str()
                .map_err(|_| AuthError::InvalidRequest("a token that is not ASCII"))
        })
        .transpose()?
        .or(from_cookie);
    Ok(token.filter(|t| !t.is_empty()))
}

/// The characters of a b64token before its trailing `=` (RFC 6750 §2.1), as a
/// table: a JWT runs to hundreds of bytes, each checked on every request.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut at = 0;
    while at < table.len() {
        let byte = at as u8;
        table[at] =
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        at += 1;
    }
    table
};

/// `Bearer 1*SP b64token` (RFC 6750 §2.1; the scheme is case-insensitive).
/// `None` for another scheme: the route then has no bearer token.
fn bearer(value: &[u8]) -> Result<Option<&str>, AuthError> {
    let scheme_end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let rest = &value[scheme_end..];
    if !rest.starts_with(b" ") {
        return Err(AuthError::InvalidRequest(
            "Bearer is not followed by a space and a token",
        ));
    }
    let token = &rest[rest.iter().take_while(|&&b| b == b' ').count()..];
    let body = token
        .iter()
        .take_while(|&&b| B64TOKEN[usize::from(b)])
        .count();
    let valid = body > 0 && token[body..].iter().all(|&b| b == b'=');
    if !valid {
        return Err(AuthError::InvalidRequest(
            "a Bearer token outside the b64token grammar",
        ));
    }
    Ok(std::str::from_utf8(token).ok())
}

/// The value of cookie `name`, refusing it more than once.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        });
    match (found.next(), found.next()) {
        (_, Some(_)) => Err(AuthError::InvalidRequest("the token cookie more than once")),
        (value, None) => Ok(value),
    }
}

/// The first 16 hex digits of the SHA-256 of `text` (a token or its `jti`):
/// what logs and abuse evidence carry. Enough to correlate lines and to find
/// a known `jti` (`printf %s JTI | sha256sum | cut -c1-16`), useless for
/// replay or for revoking a token one has only seen in a log.
pub fn log_hash(text: &str) -> String {
    use std::fmt::Write as _;
    cache::hash(text)[..8]
        .iter()
        .fold(String::with_capacity(16), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_hash_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223…
        assert_eq!(log_hash("abc"), "ba7816bf8f01cfea");
        assert_eq!(log_hash("abc").len(), 16);
    }
}
