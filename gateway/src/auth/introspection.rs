//! RFC 7662 token introspection for opaque tokens: the gateway asks the
//! provider, authenticating itself with HTTP Basic. `active`, `exp`, `scope`,
//! `sub` and `aud` are honoured. An unreachable endpoint fails closed (503).
//!
//! Every never-seen token costs the provider a call, so calls are budgeted
//! per client address and in total ([`Introspector::admit`]): a flood of
//! random tokens costs the provider at most the budget, not one call each.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quick_cache::sync::Cache;
use serde::Deserialize;
use serde_json::Value;

use super::fetch::{FetchError, Fetcher};
use crate::config::{
    IntrospectionConfig, IssuerConfig,
    secret::{Secret, redacted_url},
};

/// The answer for one token.
pub enum Introspected {
    /// Active, with its claims (as the response gave them).
    Active(Value),
    Inactive,
}

#[derive(Deserialize)]
struct Response {
    active: bool,
}

/// Client addresses whose budget is remembered; a client evicted from here
/// starts with a fresh budget, which the global budget still bounds.
const BUDGET_CLIENTS: usize = 65_536;

/// Which budget refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    Client,
    Global,
}

/// One issuer's introspection endpoint.
pub struct Introspector {
    fetcher: Fetcher,
    url: String,
    /// The `Authorization` header value: the client secret in Basic form.
    basic: Secret,
    pub config: IntrospectionConfig,
    budget: Budget,
}

/// Calls left for never-seen tokens: per client address and in total.
struct Budget {
    global: DefaultDirectRateLimiter,
    per_client: Quota,
    clients: Cache<IpAddr, Arc<DefaultDirectRateLimiter>>,
}

impl Budget {
    fn new(global: Quota, per_client: Quota, clients: usize) -> Self {
        Self {
            global: RateLimiter::direct(global),
            per_client,
            clients: Cache::new(clients),
        }
    }

    /// Takes one call from `client`'s budget, then from the global one (so a
    /// client over its own budget spends nobody else's).
    fn admit(&self, client: IpAddr) -> Result<(), OverBudget> {
        let limiter = self
            .clients
            .get_or_insert_with(&budget_key(client), || {
                Ok::<_, Infallible>(Arc::new(RateLimiter::direct(self.per_client)))
            })
            .unwrap_or_else(|never| match never {});
        limiter.check().map_err(|_| OverBudget::Client)?;
        self.global.check().map_err(|_| OverBudget::Global)
    }
}

impl Introspector {
    pub fn new(issuer: &IssuerConfig) -> Result<Option<Self>, FetchError> {
        let (Some(config), Some(ca)) = (&issuer.introspection, &issuer.ca) else {
            return Ok(None);
        };
        let credentials = format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(config.client_secret.as_ref().map_or("", Secret::expose))
        );
        Ok(Some(Self {
            fetcher: Fetcher::new(ca, issuer.fetch_timeout)?,
            url: config.url.expose().to_owned(),
            basic: Secret::new(format!("Basic {}", STANDARD.encode(credentials.as_bytes()))),
            config: config.clone(),
            budget: Budget::new(
                per_second(config.calls_per_second),
                per_second(config.client_calls_per_second),
                BUDGET_CLIENTS,
            ),
        }))
    }

    /// May a never-seen token from `client` cost the provider a call now?
    pub fn admit(&self, client: IpAddr) -> Result<(), OverBudget> {
        self.budget.admit(client)
    }

    /// Asks the provider about `token`.
    pub async fn introspect(&self, token: &str) -> Result<Introspected, FetchError> {
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let fetched = self
            .fetcher
            .post_form(&self.url, form, self.basic.expose())
            .await?;
        let invalid = |message: String| FetchError::Failed {
            url: redacted_url(&self.url),
            message,
        };
        let claims: Value = serde_json::from_slice(&fetched.body)
            .map_err(|err| invalid(format!("invalid introspection response: {err}")))?;
        let response: Response = serde_json::from_value(claims.clone())
            .map_err(|err| invalid(format!("introspection response without active: {err}")))?;
        Ok(if response.active {
            Introspected::Active(claims)
        } else {
            Introspected::Inactive
        })
    }

    /// How long an active answer may be reused.
    pub fn positive_ttl(&self, exp: Option<u64>) -> Duration {
        let ttl = self.config.cache_ttl;
        match exp {
            Some(exp) => {
                let left = exp.saturating_sub(jsonwebtoken::get_current_timestamp());
                ttl.min(Duration::from_secs(left))
            }
            None => ttl,
        }
    }
}

/// Whether an answer's `aud` (one string, or an array of strings) names one
/// of `accepted`. A string is one audience, never split.
pub fn audience_matches(claims: &Value, accepted: &[String]) -> bool {
    let accepted = |aud: &str| accepted.iter().any(|a| a == aud);
    match &claims["aud"] {
        Value::String(aud) => accepted(aud),
        Value::Array(items) => items.iter().filter_map(Value::as_str).any(accepted),
        _ => false,
    }
}

fn per_second(calls: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(calls).unwrap_or(NonZeroU32::MIN))
}

/// The address a budget belongs to: IPv6 clients by their /64, as one host
/// owns at least that much.
fn budget_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// `application/x-www-form-urlencoded` for one value (RFC 6749 §2.3.1 uses it
/// for the Basic credentials too).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(STANDARD.encode(b"gateway:s3cret"), "Z2F0ZXdheTpzM2NyZXQ=");
        assert_eq!(STANDARD.encode(b"ab"), "YWI=");
        assert_eq!(STANDARD.encode(b"abc"), "YWJj");
        assert_eq!(form_encode("a b/+"), "a%20b%2F%2B");
    }

    #[test]
    fn audiences_match_exactly() {
        use serde_json::json;
        let accepted = ["payments-api".to_owned()];
        for (aud, ok) in [
            (json!("payments-api"), true),
            (json!(["other", "payments-api"]), true),
            (json!("other payments-api"), false),
            (json!("Payments-API"), false),
            (json!(["other"]), false),
            (json!([["payments-api"]]), false),
            (json!({"payments-api": true}), false),
            (json!(null), false),
            (json!(7), false),
        ] {
            assert_eq!(
                audience_matches(&json!({"aud": aud}), &accepted),
                ok,
                "{aud}"
            );
        }
        assert!(!audience_matches(&json!({"active": true}), &accepted));
    }

    #[test]
    fn budgets_per_client_and_global() {
        let hour = |n| Quota::per_hour(NonZeroU32::new(n).expect("non-zero"));
        let introspector = Budget::new(hour(5), hour(3), 4);
        let one: IpAddr = "198.18.0.1".parse().expect("address");
        let admitted = (0..10).filter(|_| introspector.admit(one).is_ok()).count();
        assert_eq!(admitted, 3, "one client gets its own budget");
        assert_eq!(introspector.admit(one), Err(OverBudget::Client));
        // Two addresses in one /64 share a budget.
        let a: IpAddr = "2001:2::1".parse().expect("address");
        let b: IpAddr = "2001:2::ffff:1".parse().expect("address");
        assert!(introspector.admit(a).is_ok() && introspector.admit(b).is_ok());
        // The global budget (5) is spent: a fresh client is refused too.
        let fresh: IpAddr = "198.18.0.9".parse().expect("address");
        assert_eq!(introspector.admit(fresh), Err(OverBudget::Global));
    }
}
