//! The active configuration as JSON for `/config`, secrets hidden.
//!
//! Redaction goes by type, not by key name: every secret the config holds is a
//! [`Secret`](crate::config::secret::Secret) or a
//! [`SecretUrl`](crate::config::secret::SecretUrl), whose serialization is
//! already redacted, so a new secret is hidden by giving it that type, and a
//! setting that merely sounds secret (`max_token_bytes`) is shown.

use serde_json::Value;

use crate::config::Config;

/// `config` as `/config` shows it.
pub fn config_view(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::Path};

    use super::*;

    #[test]
    fn secrets_are_hidden_by_type_and_settings_are_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("client_secret");
        std::fs::write(&secret_file, "file-s3cr3t\n").expect("write");
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let text = format!(
            r#"
[xdp]
enabled = false

[[listener]]
name = "public"
address = "198.18.0.1:8443"
[[listener.certificates]]
cert = "/etc/gateway/api.pem"
key = "/etc/gateway/api.key"

[auth]
[auth.issuers.corp]
issuer = "https://login.example"
audiences = ["api"]
ca = "/etc/gateway/idp-ca.pem"
max_token_bytes = 8192
[auth.issuers.corp.introspection]
url = "https://login.example/introspect?tenant=t1"
client_id = "gateway"
client_secret_file = {secret_file:?}
[auth.issuers.inline]
issuer = "https://other.example"
audiences = ["api"]
ca = "/etc/gateway/idp-ca.pem"
[auth.issuers.inline.introspection]
url = "https://other.example/introspect"
client_id = "gateway"
client_secret = "inline-s3cr3t"

[[alert]]
name = "hook"
metric = "gateway_requests_total"
condition = "above"
threshold = 1.0
webhook = "https://ops:hunter2@hooks.example:8443/hook?token=query-s3cr3t"
"#
        );
        let config = Config::parse(Path::new("t.toml"), &text).expect("valid");
        let view = config_view(&config);
        let shown = view.to_string();
        for secret in ["file-s3cr3t", "inline-s3cr3t", "hunter2", "query-s3cr3t"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        let corp = &view["auth"]["issuers"]["corp"];
        assert_eq!(corp["max_token_bytes"], 8192, "not a secret: {shown}");
        assert_eq!(corp["introspection"]["client_secret"], "[redacted]");
        assert_eq!(
            corp["introspection"]["client_secret_file"],
            secret_file.display().to_string(),
            "where a secret lives is not a secret"
        );
        assert_eq!(corp["introspection"]["client_id"], "gateway");
        assert_eq!(
            view["alert"][0]["webhook"],
            "https://hooks.example:8443/hook"
        );
        assert_eq!(
            view["listener"][0]["certificates"][0]["key"],
            "/etc/gateway/api.key"
        );
        // The values reach the code that uses them.
        let introspection = config.auth.issuers["corp"]
            .introspection
            .as_ref()
            .expect("introspection");
        let resolved = introspection.client_secret.as_ref().expect("resolved");
        assert_eq!(resolved.expose(), "file-s3cr3t");
        let webhook = config.alerts[0].webhook.as_ref().expect("webhook");
        assert!(webhook.expose().ends_with("?token=query-s3cr3t"));
        // Nor does Debug of the whole config show them.
        let debug = format!("{config:?}");
        for secret in ["file-s3cr3t", "inline-s3cr3t", "hunter2", "query-s3cr3t"] {
            assert!(!debug.contains(secret), "{secret} in Debug");
        }
    }
}
