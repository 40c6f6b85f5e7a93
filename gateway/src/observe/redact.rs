//! The active configuration as JSON with secrets hidden, for `/config`.
//!
//! Redaction goes by key name, not by type, so a field added later (an OAuth
//! client secret, an API token, a webhook password) is hidden without anyone
//! remembering to mark it. Paths to key files are shown: a path is not a secret.

use serde::Serialize;
use serde_json::Value;

/// What a hidden value reads as.
pub const REDACTED: &str = "<redacted>";

/// Key name fragments that mark a value as secret.
const SECRET_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "api_key",
    "apikey",
    "bearer",
    "authorization",
    "cookie",
];

/// `value` as JSON with every secret-looking field replaced by [`REDACTED`].
pub fn redacted<T: Serialize>(value: &T) -> Value {
    let mut json = serde_json::to_value(value).unwrap_or(Value::Null);
    redact(&mut json);
    json
}

/// Whether a field called `key` holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // A path to a file holding a secret is not itself secret.
    if key.ends_with("_file") || key.ends_with("_path") {
        return false;
    }
    SECRET_WORDS.iter().any(|word| key.contains(word))
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if is_secret_key(key) && !value.is_null() {
                    *value = Value::String(REDACTED.to_owned());
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Some(hidden) = redact_userinfo(text) {
                *text = hidden;
            }
        }
        _ => {}
    }
}

/// `https://user:pass@host/…` with the password hidden.
fn redact_userinfo(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, _) = rest[..authority_end].rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    let after = &rest[userinfo.len()..];
    Some(format!("{scheme}://{user}:{REDACTED}{after}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hides_secret_keys_at_any_depth_and_keeps_paths() {
        let config = json!({
            "auth": {"client_secret": "s3cr3t", "client_secret_file": "/etc/s", "issuers": [{"token": "abc"}]},
            "upstream": {"fleet": {"client_key": "/etc/gateway/gateway.key"}},
            "alert": [{"webhook": "https://ops:hunter2@hooks.example/x"}],
        });
        let out = redacted(&config);
        let text = out.to_string();
        for secret in ["s3cr3t", "abc", "hunter2"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(out["auth"]["client_secret_file"], "/etc/s");
        assert_eq!(
            out["upstream"]["fleet"]["client_key"],
            "/etc/gateway/gateway.key"
        );
        assert_eq!(
            out["alert"][0]["webhook"],
            "https://ops:<redacted>@hooks.example/x"
        );
    }
}
