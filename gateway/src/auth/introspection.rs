//! RFC 7662 token introspection for opaque tokens: the gateway asks the
//! provider, authenticating itself with HTTP Basic. `active`, `exp`, `scope`,
//! `sub` and `aud` are honoured. An unreachable endpoint fails closed (503).

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Deserialize;
use serde_json::Value;

use super::fetch::{FetchError, Fetcher};
use crate::config::{IntrospectionConfig, IssuerConfig};

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

/// One issuer's introspection endpoint.
pub struct Introspector {
    fetcher: Fetcher,
    url: String,
    basic: String,
    pub config: IntrospectionConfig,
}

impl Introspector {
    pub fn new(issuer: &IssuerConfig) -> Result<Option<Self>, FetchError> {
        let (Some(config), Some(ca)) = (&issuer.introspection, &issuer.ca) else {
            return Ok(None);
        };
        let credentials = format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(&config.client_secret)
        );
        Ok(Some(Self {
            fetcher: Fetcher::new(ca, issuer.fetch_timeout)?,
            url: config.url.clone(),
            basic: format!("Basic {}", STANDARD.encode(credentials.as_bytes())),
            config: config.clone(),
        }))
    }

    /// Asks the provider about `token`.
    pub async fn introspect(&self, token: &str) -> Result<Introspected, FetchError> {
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let fetched = self.fetcher.post_form(&self.url, form, &self.basic).await?;
        let invalid = |message: String| FetchError::Failed {
            url: self.url.clone(),
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
}
