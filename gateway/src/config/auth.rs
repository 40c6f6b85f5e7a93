//! The identity part of the configuration: `[auth]` with its issuers
//! (`[auth.issuers.NAME]`) and the per-route `[route.auth]` policy. Defaults
//! live in the `Default` impls; [`problems`] checks what serde cannot.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    RouteConfig, duration,
    secret::{Secret, SecretUrl, resolve_into},
};

/// `[auth]`: the identity providers the gateway trusts and what it tells the
/// fleet about a verified caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// `[auth.issuers.NAME]`: one identity provider each.
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// Most verified tokens remembered, so a reused token skips the signature check.
    pub cache_entries: usize,
    /// Headers carrying the verified identity to the upstream. Any header of
    /// these names a client sends is removed on every route, always.
    pub identity_headers: IdentityHeaders,
    /// Claim → header: further claims forwarded upstream (`email = "x-auth-email"`),
    /// stripped from client requests like the identity headers.
    pub claim_headers: BTreeMap<String, String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            issuers: BTreeMap::new(),
            cache_entries: 10_000,
            identity_headers: IdentityHeaders::default(),
            claim_headers: BTreeMap::new(),
        }
    }
}

/// `[auth.identity_headers]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityHeaders {
    /// The caller (`sub`).
    pub subject: String,
    /// The issuer (`iss`).
    pub issuer: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// Granted roles, comma-separated.
    pub roles: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: "x-auth-subject".to_owned(),
            issuer: "x-auth-issuer".to_owned(),
            scopes: "x-auth-scopes".to_owned(),
            roles: "x-auth-roles".to_owned(),
        }
    }
}

/// `[auth.issuers.NAME]`: one identity provider. Give exactly one key source
/// (`jwks_file`, `jwks_url` or `discovery`) for JWTs, and/or `introspection`
/// for opaque tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value tokens must carry.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// A JWKS file on disk (read at start and at reload).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document over HTTPS.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// An OIDC discovery document (`…/.well-known/openid-configuration`) whose
    /// `jwks_uri` names the key set.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// CA bundle (PEM) for HTTPS to this provider; absent: no HTTPS source may
    /// be used (the gateway ships no public roots on purpose).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Accepted signature algorithms. `none` and HMAC are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Refuse tokens whose `exp - iat` (or `exp - now` without `iat`) is longer.
    #[serde(default, with = "duration::option")]
    pub max_lifetime: Option<Duration>,
    /// Require this JOSE `typ` header (e.g. `at+jwt`, RFC 9068).
    #[serde(default)]
    pub typ: Option<String>,
    /// Longest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Key set refresh when the provider sends no usable `Cache-Control: max-age`.
    #[serde(default = "default_refresh", with = "duration")]
    pub refresh_interval: Duration,
    /// Bounds for a provider's `max-age`.
    #[serde(default = "default_min_refresh", with = "duration")]
    pub min_refresh_interval: Duration,
    #[serde(default = "default_max_refresh", with = "duration")]
    pub max_refresh_interval: Duration,
    /// After a fetch for an unknown `kid`, no other such fetch for this long;
    /// unknown `kid`s are refused meanwhile (the negative cache).
    #[serde(default = "default_unknown_kid_interval", with = "duration")]
    pub unknown_kid_interval: Duration,
    /// Timeout for one request to the provider.
    #[serde(default = "default_fetch_timeout", with = "duration")]
    pub fetch_timeout: Duration,
    /// Claim path holding the scopes: a space-separated string or an array.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Dotted claim path holding the roles (e.g. `realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// RFC 7662 introspection for opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

/// `[auth.issuers.NAME.introspection]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (HTTPS). Its query may carry a token, so it
    /// is shown and logged without one.
    pub url: SecretUrl,
    /// Client credentials for HTTP Basic authentication at the endpoint. The
    /// secret comes from exactly one of `client_secret`, `client_secret_file`
    /// and `client_secret_env`; after loading, `client_secret` holds it.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Longest an active result is reused (never past the token's `exp`).
    #[serde(default = "default_introspection_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// How long an inactive result is reused.
    #[serde(default = "default_negative_ttl", with = "duration")]
    pub negative_cache_ttl: Duration,
    /// Calls to the endpoint for tokens not in the cache, per second, on behalf
    /// of one client address (an IPv6 client by its /64); a burst may use one
    /// second's worth at once. Beyond it the token is refused (401) without a
    /// call, and the refusal counts as the client's auth failure.
    #[serde(default = "default_client_calls")]
    pub client_calls_per_second: u32,
    /// The same for all clients together: what the provider ever sees from
    /// this gateway, however many addresses send garbage.
    #[serde(default = "default_calls")]
    pub calls_per_second: u32,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(str::to_owned).to_vec()
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_max_refresh() -> Duration {
    Duration::from_secs(86_400)
}
fn default_unknown_kid_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_scope_claim() -> String {
    "scope".to_owned()
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_introspection_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_client_calls() -> u32 {
    5
}
fn default_calls() -> u32 {
    100
}

/// Algorithms an issuer may allow: asymmetric only, so a public key can never
/// be used as an HMAC secret.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[route.auth]`: who may call a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteAuth {
    /// `none` (no token looked at), `optional` (a token, if sent, must be
    /// valid) or `required`.
    pub mode: AuthMode,
    /// Accepted issuers (keys of `[auth.issuers]`); empty: all of them.
    pub issuers: Vec<String>,
    /// The token must carry every one of these scopes.
    pub scopes_all: Vec<String>,
    /// The token must carry at least one of these scopes.
    pub scopes_any: Vec<String>,
    /// The caller must have at least one of these roles.
    pub roles_any: Vec<String>,
    /// Claims (dotted paths) that must equal these values exactly.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// Also take the token from this request header (after `Authorization`).
    pub token_header: Option<String>,
    /// Also take the token from this cookie.
    pub token_cookie: Option<String>,
    /// Forward the client's `Authorization` header upstream.
    pub forward_authorization: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Optional,
    Required,
}

/// Every problem with `[auth]` and the routes' `auth` tables, with key paths.
pub fn problems(auth: &AuthSection, routes: &[RouteConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    if auth.cache_entries == 0 {
        problems.push("auth.cache_entries: must be at least 1".to_owned());
    }
    let mut names = HashSet::new();
    let headers = &auth.identity_headers;
    for (key, name) in [
        ("identity_headers.subject", &headers.subject),
        ("identity_headers.issuer", &headers.issuer),
        ("identity_headers.scopes", &headers.scopes),
        ("identity_headers.roles", &headers.roles),
    ]
    .into_iter()
    .chain(auth.claim_headers.values().map(|v| ("claim_headers", v)))
    {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!("auth.{key}: {name:?} is not a header name"));
        } else if !names.insert(name.to_ascii_lowercase()) {
            problems.push(format!("auth.{key}: header {name:?} is used twice"));
        } else if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("host") {
            problems.push(format!("auth.{key}: {name:?} cannot carry the identity"));
        }
    }
    for (name, issuer) in &auth.issuers {
        issuer_problems(&format!("auth.issuers.{name}"), issuer, &mut problems);
    }
    for (index, route) in routes.iter().enumerate() {
        let key = format!("route[{index}].auth");
        let policy = &route.auth;
        for issuer in &policy.issuers {
            if !auth.issuers.contains_key(issuer) {
                problems.push(format!(
                    "{key}.issuers: no [auth.issuers.{issuer}] (defined: {})",
                    auth.issuers.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if policy.mode != AuthMode::None && auth.issuers.is_empty() {
            problems.push(format!(
                "{key}.mode: {:?} needs at least one [auth.issuers.NAME]",
                policy.mode
            ));
        }
        if let Some(header) = &policy.token_header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            problems.push(format!(
                "{key}.token_header: {header:?} is not a header name"
            ));
        }
    }
    problems
}

impl AuthSection {
    /// Reads each introspection client secret from its key, file or variable.
    pub(super) fn resolve_secrets(&mut self, problems: &mut Vec<String>) {
        for (name, issuer) in &mut self.issuers {
            let Some(introspection) = &mut issuer.introspection else {
                continue;
            };
            let key = format!("auth.issuers.{name}.introspection.client_secret");
            if introspection.client_secret.is_none()
                && introspection.client_secret_file.is_none()
                && introspection.client_secret_env.is_none()
            {
                problems.push(format!("{key}: required (or {key}_file, {key}_env)"));
            }
            resolve_into(
                key,
                &mut introspection.client_secret,
                introspection.client_secret_file.as_ref(),
                introspection.client_secret_env.as_ref(),
                problems,
            );
        }
    }

    /// The files holding secrets, by key.
    pub(super) fn secret_files(&self) -> impl Iterator<Item = (String, &std::path::Path)> {
        self.issuers.iter().filter_map(|(name, issuer)| {
            let path = issuer
                .introspection
                .as_ref()?
                .client_secret_file
                .as_deref()?;
            Some((
                format!("auth.issuers.{name}.introspection.client_secret"),
                path,
            ))
        })
    }
}

fn issuer_problems(key: &str, issuer: &IssuerConfig, problems: &mut Vec<String>) {
    if issuer.issuer.is_empty() {
        problems.push(format!("{key}.issuer: must name the token issuer (iss)"));
    }
    if issuer.audiences.is_empty() {
        problems.push(format!(
            "{key}.audiences: list at least one audience (the token's aud must contain one)"
        ));
    }
    let sources = [
        issuer.jwks_file.is_some(),
        issuer.jwks_url.is_some(),
        issuer.discovery_url.is_some(),
    ]
    .into_iter()
    .filter(|&set| set)
    .count();
    if sources > 1 {
        problems.push(format!(
            "{key}: give only one of jwks_file, jwks_url and discovery_url"
        ));
    }
    if let Some(introspection) = &issuer.introspection {
        for (field, value) in [
            (
                "client_calls_per_second",
                introspection.client_calls_per_second,
            ),
            ("calls_per_second", introspection.calls_per_second),
        ] {
            if value == 0 {
                problems.push(format!("{key}.introspection.{field}: must be at least 1"));
            }
        }
    }
    if sources == 0 && issuer.introspection.is_none() {
        problems.push(format!(
            "{key}: give a key source (jwks_file, jwks_url or discovery_url) or introspection"
        ));
    }
    let urls = [
        ("jwks_url", issuer.jwks_url.as_deref()),
        ("discovery_url", issuer.discovery_url.as_deref()),
        (
            "introspection.url",
            issuer.introspection.as_ref().map(|i| i.url.expose()),
        ),
    ];
    for (field, url) in urls {
        let Some(url) = url else { continue };
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                if issuer.ca.is_none() {
                    problems.push(format!(
                        "{key}.ca: {field} is HTTPS; name the CA bundle that signs the provider's certificate"
                    ));
                }
            }
            _ => problems.push(format!("{key}.{field}: {url:?} is not an https:// URL")),
        }
    }
    if issuer.algorithms.is_empty() {
        problems.push(format!("{key}.algorithms: list at least one algorithm"));
    }
    for alg in &issuer.algorithms {
        if !ALLOWED_ALGORITHMS.contains(&alg.as_str()) {
            problems.push(format!(
                "{key}.algorithms: {alg:?} is not allowed (use {})",
                ALLOWED_ALGORITHMS.join(", ")
            ));
        }
    }
    if issuer.max_token_bytes == 0 {
        problems.push(format!("{key}.max_token_bytes: must be at least 1"));
    }
    if issuer.min_refresh_interval.is_zero()
        || issuer.min_refresh_interval > issuer.max_refresh_interval
    {
        problems.push(format!(
            "{key}.min_refresh_interval: must be positive and at most max_refresh_interval"
        ));
    }
    if issuer.refresh_interval.is_zero() {
        problems.push(format!("{key}.refresh_interval: must be positive"));
    }
    if issuer.fetch_timeout.is_zero() {
        problems.push(format!("{key}.fetch_timeout: must be positive"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = r#"
[xdp]
enabled = false

[[listener]]
name = "public"
address = "127.0.0.1:8443"
[[listener.certificates]]
cert = "/etc/gateway/api.pem"
key = "/etc/gateway/api.key"

[[route]]
name = "payments"
path_prefix = "/payments/"
upstream = "fleet"
[route.auth]
mode = "required"
issuers = ["corp"]
scopes_all = ["payments:write"]

[upstream.fleet]
endpoints = ["198.18.1.10:8443"]
server_name = "fleet.internal"
ca = "/etc/gateway/fleet-ca.pem"
client_cert = "/etc/gateway/gateway.pem"
client_key = "/etc/gateway/gateway.key"

[auth.issuers.corp]
issuer = "https://login.example.com/"
audiences = ["payments-api"]
discovery_url = "https://login.example.com/.well-known/openid-configuration"
ca = "/etc/gateway/idp-ca.pem"
"#;

    #[test]
    fn a_payment_route_parses_with_safe_defaults() {
        let config = Config::parse(Path::new("t.toml"), BASE).expect("valid");
        let corp = &config.auth.issuers["corp"];
        assert_eq!(corp.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(corp.leeway, std::time::Duration::from_secs(60));
        assert_eq!(config.routes[0].auth.scopes_all, ["payments:write"]);
    }

    #[test]
    fn problems_name_their_keys() {
        let broken = BASE
            .replace("issuers = [\"corp\"]", "issuers = [\"crop\"]")
            .replace(
                "audiences = [\"payments-api\"]",
                "audiences = []\nalgorithms = [\"HS256\", \"none\"]\njwks_url = \"http://login.example.com/jwks\"",
            );
        let text = Config::parse(Path::new("t.toml"), &broken)
            .expect_err("invalid")
            .to_string();
        for needle in [
            "route[0].auth.issuers: no [auth.issuers.crop]",
            "auth.issuers.corp.audiences",
            "auth.issuers.corp.algorithms: \"HS256\" is not allowed",
            "auth.issuers.corp.algorithms: \"none\" is not allowed",
            "auth.issuers.corp: give only one of",
            "auth.issuers.corp.jwks_url: \"http://login.example.com/jwks\" is not an https:// URL",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }
}
