//! What operators watch: the admin listener (`[admin]`), where the access and
//! audit logs go (`[log]`), and alert rules (`[[alert]]`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    ListenerConfig, duration,
    secret::{SecretUrl, resolve_into},
};
use crate::addr::Cidr;

/// `[admin]`: the listener serving `/metrics`, `/healthz`, `/readyz` and
/// `/config`. Plain HTTP: it belongs on loopback or a management network,
/// never on the public listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Off turns the admin listener (and with it metrics and `gateway top`) off.
    pub enabled: bool,
    /// `ip:port` to bind.
    pub address: SocketAddr,
    /// Client networks that may connect; others are closed at accept. Required
    /// (or `allow_non_loopback`) when `address` is not a loopback address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Serve anyone who can reach a non-loopback `address` (a management
    /// network fenced off by other means): the explicit opt-out of `allow`.
    pub allow_non_loopback: bool,
}

impl AdminSection {
    /// Whether `client` may use the admin endpoint: anyone when `allow` is
    /// empty (validation made sure that is loopback or was opted into).
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(client))
    }
}

/// The admin port when the config names none.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enabled: true,
            address: DEFAULT_ADMIN_ADDRESS,
            allow: Vec::new(),
            allow_non_loopback: false,
        }
    }
}

/// `[log]`: where each stream goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Access log (one line per request): `"stdout"`, a file path, or `"off"`
    /// (no line is built at all: for benchmarks, or where a load balancer in
    /// front already logs every request).
    pub access: LogOutput,
    /// Access log line format: `json` or `clf` (Common Log Format).
    pub access_format: AccessFormat,
    /// Audit log (security decisions, administrative changes): `"stdout"` or a
    /// file path.
    pub audit: LogOutput,
    /// Everything else (the daemon's own messages): `"stdout"` or a file path.
    pub daemon: LogOutput,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            access: LogOutput::Stdout,
            access_format: AccessFormat::Json,
            audit: LogOutput::Stdout,
            daemon: LogOutput::Stdout,
        }
    }
}

/// Where a log stream is written. Files are opened for appending and reopened
/// on SIGUSR1, so logrotate can move them away (`postrotate: kill -USR1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    File(PathBuf),
    /// Not written (the audit log cannot be off).
    Off,
}

impl Serialize for LogOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Stdout => serializer.serialize_str("stdout"),
            Self::Off => serializer.serialize_str("off"),
            Self::File(path) => path.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for LogOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "stdout" => Self::Stdout,
            "off" => Self::Off,
            _ => Self::File(PathBuf::from(text)),
        })
    }
}

/// The access log's line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessFormat {
    /// One JSON object per line with every field.
    Json,
    /// `host ident user [time] "request" status bytes`, for people who grep.
    Clf,
}

/// `[[alert]]`: a condition on any metric `/metrics` shows. While it holds
/// (for at least `for`), the alert fires once: a WARN or ERROR log line and a
/// JSON POST to `webhook`; when it stops holding, a resolved notice follows.
///
/// Examples: XDP drops per second (`metric = "gateway_xdp_packets_total"`,
/// `labels = { verdict = "drop" }`, `condition = "rate_above"`); a pool with no
/// healthy endpoint (`gateway_upstream_healthy_endpoints`, `below`, 1); a
/// block added (`gateway_xdp_map_entries`, `labels = { map = "BLOCKLIST4" }`,
/// `increased`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Name in log lines and webhook payloads.
    pub name: String,
    /// The metric watched, as `/metrics` names it.
    pub metric: String,
    /// Only series carrying all these labels count.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How the metric is judged.
    pub condition: AlertCondition,
    /// The limit for `rate_above`, `above` and `below`.
    #[serde(default)]
    pub threshold: f64,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "duration")]
    pub hold: Duration,
    /// `warning` logs at WARN, `critical` at ERROR.
    #[serde(default)]
    pub severity: Severity,
    /// `http://` or `https://` URL that receives a JSON POST on firing and on
    /// resolving; none: log lines only. It may carry credentials
    /// (`user:password@`, a `?token=`), so it is a secret: also
    /// `webhook_file` or `webhook_env`; after loading, `webhook` holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<SecretUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_env: Option<String>,
    /// CA bundle for an `https://` webhook (default: the system bundle).
    #[serde(default)]
    pub webhook_ca: Option<PathBuf>,
    /// Per-attempt timeout of a webhook POST.
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub webhook_timeout: Duration,
    /// Attempts after the first when a POST fails or answers non-2xx.
    #[serde(default = "default_webhook_retries")]
    pub webhook_retries: u32,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_webhook_retries() -> u32 {
    3
}

/// How an alert judges its metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCondition {
    /// The per-second increase of the matching counters' sum exceeds `threshold`.
    RateAbove,
    /// A matching series is above `threshold` (each series alerts on its own).
    Above,
    /// A matching series is below `threshold` (each series alerts on its own).
    Below,
    /// The matching series' sum grew since the last evaluation (one second).
    Increased,
}

/// How loud an alert is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Warning,
    Critical,
}

/// Reads each alert's webhook URL from its key, file or variable.
pub(super) fn resolve_secrets(alerts: &mut [AlertRule], problems: &mut Vec<String>) {
    for (i, alert) in alerts.iter_mut().enumerate() {
        resolve_into(
            format!("alert[{i}].webhook"),
            &mut alert.webhook,
            alert.webhook_file.as_ref(),
            alert.webhook_env.as_ref(),
            problems,
        );
    }
}

/// The files holding webhook URLs, by key.
pub(super) fn secret_files(alerts: &[AlertRule]) -> impl Iterator<Item = (String, &Path)> {
    alerts.iter().enumerate().filter_map(|(i, alert)| {
        Some((
            format!("alert[{i}].webhook"),
            alert.webhook_file.as_deref()?,
        ))
    })
}

/// Problems of the `[[alert]]` rules, with key paths.
pub fn alert_problems(alerts: &[AlertRule]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, alert) in alerts.iter().enumerate() {
        if alert.name.is_empty() || !names.insert(alert.name.as_str()) {
            problems.push(format!(
                "alert[{i}].name: {:?} is empty or used twice; give each alert its own name",
                alert.name
            ));
        }
        if !alert.metric.starts_with("gateway_") {
            problems.push(format!(
                "alert[{i}].metric: {:?} is not a gateway metric (they start with gateway_; see /metrics)",
                alert.metric
            ));
        }
        if let Some(url) = &alert.webhook
            && !(url.expose().starts_with("http://") || url.expose().starts_with("https://"))
        {
            problems.push(format!(
                "alert[{i}].webhook: {url} must be an http:// or https:// URL"
            ));
        }
        if alert.webhook_timeout.is_zero() {
            problems.push(format!("alert[{i}].webhook_timeout: must be above zero"));
        }
    }
    problems
}

/// What is wrong with `[admin]` and `[log]`, with key paths.
pub fn problems(
    admin: &AdminSection,
    log: &LogSection,
    listeners: &[ListenerConfig],
) -> Vec<String> {
    let mut problems = Vec::new();
    if admin.enabled && !admin.allow_non_loopback {
        // An IPv4-mapped loopback (::ffff:127.0.0.1) is loopback too; 0.0.0.0
        // and :: are not. A /0 in `allow` admits everyone: no control at all.
        let loopback = admin.address.ip().to_canonical().is_loopback();
        let controlled = !admin.allow.is_empty() && admin.allow.iter().all(|n| n.prefix_len() > 0);
        if !loopback && !controlled {
            problems.push(format!(
                "admin.address: {} is not a loopback address and the admin endpoint (metrics,                  config) has no access control: list the client networks in admin.allow, or set                  admin.allow_non_loopback = true if the network itself is fenced off",
                admin.address
            ));
        }
    }
    for (i, net) in admin.allow.iter().enumerate() {
        if net.prefix_len() == 0 && !admin.allow_non_loopback {
            problems.push(format!(
                "admin.allow[{i}]: {net} admits every address; that is no access control (set                  admin.allow_non_loopback = true to mean it)"
            ));
        }
    }
    if admin.enabled {
        for (i, listener) in listeners.iter().enumerate() {
            let same_port = listener.address.port() == admin.address.port();
            let overlaps = listener.address.ip() == admin.address.ip()
                || listener.address.ip().is_unspecified()
                || admin.address.ip().is_unspecified();
            if same_port && overlaps {
                problems.push(format!(
                    "admin.address: {} would share listener[{i}] ({})'s socket {}; the admin \
                     endpoint must never be on a public listener: pick another port",
                    admin.address, listener.name, listener.address
                ));
            }
        }
    }
    if log.audit == LogOutput::Off {
        problems.push(
            "log.audit: the audit log cannot be off (it records who changed what); use \"stdout\" \
             or an absolute path"
                .to_owned(),
        );
    }
    for (key, output) in [
        ("log.access", &log.access),
        ("log.audit", &log.audit),
        ("log.daemon", &log.daemon),
    ] {
        if let LogOutput::File(path) = output
            && !path.is_absolute()
        {
            problems.push(format!(
                "{key}: {} is relative; use \"stdout\" or an absolute path",
                path.display()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_example_production_config_is_valid() {
        let text = include_str!("../../../deploy/gateway.example.toml");
        let config = Config::parse(Path::new("deploy/gateway.example.toml"), text)
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(config.admin.address, DEFAULT_ADMIN_ADDRESS);
        assert_eq!(config.alerts.len(), 3);
        assert_eq!(
            config.log.access,
            LogOutput::File("/var/log/gateway/access.log".into())
        );
    }

    #[test]
    fn the_admin_endpoint_may_not_share_a_listener_socket() {
        let text = include_str!("../../../deploy/gateway.example.toml")
            .replace(
                "address = \"127.0.0.1:9090\"",
                "address = \"127.0.0.1:443\"",
            )
            .replace("access = \"/var/log", "access = \"var/log");
        let err = Config::parse(Path::new("x.toml"), &text).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("admin.address: 127.0.0.1:443"), "{text}");
        assert!(
            text.contains("log.access: var/log/gateway/access.log is relative"),
            "{text}"
        );
    }

    #[test]
    fn the_access_log_may_be_off_but_the_audit_log_may_not() {
        let example = include_str!("../../../deploy/gateway.example.toml");
        let text = example.replace(
            "access = \"/var/log/gateway/access.log\"",
            "access = \"off\"",
        );
        let config =
            Config::parse(Path::new("x.toml"), &text).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(config.log.access, LogOutput::Off);

        let text = example.replace("audit = \"/var/lib/gateway/audit.log\"", "audit = \"off\"");
        let err = Config::parse(Path::new("x.toml"), &text).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("log.audit: the audit log cannot be off"),
            "{err}"
        );
    }
}
