//! The daemon's configuration file (TOML). Unknown keys are errors, every field has a
//! default where a safe one exists, and [`Config::validate`] reports every problem
//! with its key path at once.

pub mod abuse;
pub mod auth;
pub mod byte_rate;
mod duration;
pub mod fleet;
pub mod limits;
pub mod observe;
pub mod proxy;
pub mod secret;
pub mod waf;
pub mod xdp;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use self::{
    abuse::AbuseSection,
    auth::{AuthMode, AuthSection, IntrospectionConfig, IssuerConfig, RouteAuth},
    fleet::{FleetSection, RedisMode, Sharing, Unreachable},
    limits::{LimitConfig, LimitKey, Period, QuotaConfig},
    observe::{
        AccessFormat, AdminSection, AlertCondition, AlertRule, LogOutput, LogSection, Severity,
    },
    proxy::{
        Balance, BreakerConfig, CertificateConfig, ClientAuth, ForwardedStyle, HealthConfig,
        ListenerConfig, ListenerLimits, ListenerTimeouts, OutlierConfig, ProxySection, RetryConfig,
        RouteConfig, UpstreamConfig,
    },
    waf::{CustomRule, Operator, Oversize, RouteWaf, WafMode},
    xdp::{Monitor, XdpSection, rate_limit_problems},
};

/// The configuration could not be used; the binary exits with code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Each problem on its own: the list of an invalid file, or the one
    /// reason a file could not be read or parsed.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The kernel plane.
    #[serde(default)]
    pub xdp: XdpSection,
    /// Settings shared by every listener.
    #[serde(default)]
    pub proxy: ProxySection,
    /// `[[listener]]`: TLS sockets; none means the daemon only runs the kernel plane.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[[route]]`: matched by host and longest path prefix.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[upstream.NAME]`: the fleet's pools.
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Token issuers and the identity sent upstream.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[admin]`: metrics, health and the active config on a private address.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[log]`: where the access, audit and daemon logs go.
    #[serde(default)]
    pub log: LogSection,
    /// `[[alert]]`: conditions on metrics that notify a webhook.
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertRule>,
    /// `[abuse]`: when misbehaving clients are pushed into the XDP blocklist.
    #[serde(default)]
    pub abuse: AbuseSection,
    /// `[fleet]`: the Redis link shared with the other gateways; absent, this
    /// gateway shares nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSection>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read(path)?)
    }

    /// Like [`Config::load`], and also opens every certificate, key and CA file
    /// the config names: what `gateway check`, `gateway run` and a reload use, so
    /// a file problem is found before anything starts or changes.
    pub fn load_checked(path: &Path) -> Result<Self, ConfigError> {
        Self::checked(path, &read(path)?, crate::proxy::tls_problems)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::checked(path, text, |_| Vec::new())
    }

    fn checked(
        path: &Path,
        text: &str,
        more_problems: impl FnOnce(&Config) -> Vec<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        let mut problems = config.resolve_secrets();
        problems.extend(config.validate());
        problems.extend(more_problems(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// What is allowed but probably not meant: `gateway check` prints these,
    /// `gateway run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = crate::policy::routes::listener_warnings(&self.listeners, &self.routes);
        if let Some(fleet) = &self.fleet {
            warnings.extend(fleet.warnings());
        }
        warnings.extend(
            self.auth
                .secret_files()
                .chain(observe::secret_files(&self.alerts))
                .filter_map(|(key, path)| secret::file_mode_warning(&key, path)),
        );
        warnings
    }

    /// Reads every secret given by file or environment variable into its inline
    /// key (see [`secret`]); the problems of those that cannot be read.
    fn resolve_secrets(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        self.auth.resolve_secrets(&mut problems);
        observe::resolve_secrets(&mut self.alerts, &mut problems);
        problems
    }

    /// Every problem, each with its key path.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.xdp.problems();
        problems.extend(proxy::problems(
            &self.proxy,
            &self.listeners,
            &self.routes,
            &self.upstreams,
        ));
        problems.extend(auth::problems(&self.auth, &self.routes));
        problems.extend(observe::problems(&self.admin, &self.log, &self.listeners));
        problems.extend(self.abuse.problems());
        if let Some(fleet) = &self.fleet {
            problems.extend(fleet.problems());
        }
        if !self.xdp.enabled && self.listeners.is_empty() {
            problems.push(
                "xdp.enabled is false and there is no [[listener]]: nothing to run".to_owned(),
            );
        }
        problems
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::RateLimit;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn minimal_config_has_safe_defaults() {
        let config = parse("[xdp]\ninterface = \"eth0\"\n").expect("valid");
        assert_eq!(config.xdp.ipv6_rate_limit_prefix, 64);
        assert_eq!(config.xdp.rate_limit, RateLimit::default());
        assert!(config.xdp.capacity.rate_limit_entries >= 1 << 20);
        assert!(config.xdp.capacity.blocklist_entries >= 100_000);
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let err = parse(
            "[xdp]\nipv6_rate_limit_prefix = 0\nblocklist = [\"198.18.0.1\"]\nallowlist = [\"198.18.0.1\"]\n\
             [xdp.rate_limit]\npps = 10\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "xdp.interface",
            "xdp.ipv6_rate_limit_prefix",
            "xdp.rate_limit.burst",
            "also in xdp.allowlist",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_cidrs_are_rejected() {
        let err = parse("[xdp]\ninterface = \"eth0\"\nintreface = \"x\"\n").expect_err("unknown");
        assert!(err.to_string().contains("intreface"), "{err}");
        let err =
            parse("[xdp]\ninterface = \"eth0\"\nblocklist = [\"10.0.0.300\"]\n").expect_err("cidr");
        assert!(err.to_string().contains("10.0.0.300"), "{err}");
    }

    const FLEET: &str = r#"
[xdp]
enabled = false

[[listener]]
name = "public"
address = "0.0.0.0:8443"
[[listener.certificates]]
cert = "/etc/gateway/api.pem"
key = "/etc/gateway/api.key"
server_names = ["api.example.com", "*.example.com"]

[[route]]
name = "api"
hosts = ["api.example.com"]
path_prefix = "/api/"
methods = ["GET", "POST"]
upstream = "fleet"
rewrite_prefix = "/"
timeout = "5s"

[upstream.fleet]
endpoints = ["198.18.1.10:8443", "198.18.1.11:8443", "backend.internal:8443"]
server_name = "fleet.internal"
ca = "/etc/gateway/fleet-ca.pem"
client_cert = "/etc/gateway/gateway.pem"
client_key = "/etc/gateway/gateway.key"
balance = "least_request"
"#;

    #[test]
    fn proxy_config_parses_with_defaults() {
        let config = parse(FLEET).expect("valid");
        let route = &config.routes[0];
        assert_eq!(route.timeout, std::time::Duration::from_secs(5));
        let fleet = &config.upstreams["fleet"];
        assert_eq!(fleet.balance, Balance::LeastRequest);
        assert_eq!(fleet.health.path, "/healthz");
        assert_eq!(config.listeners[0].limits.max_header_count, 100);
    }

    #[test]
    fn proxy_problems_name_their_keys() {
        let broken = FLEET
            .replace("upstream = \"fleet\"", "upstream = \"flet\"")
            .replace("path_prefix = \"/api/\"", "path_prefix = \"api\"")
            .replace("\"198.18.1.11:8443\"", "\"198.18.1.11\"")
            .replace("timeout = \"5s\"", "timeout = \"0s\"");
        let text = parse(&broken).expect_err("invalid").to_string();
        for needle in [
            "route[0].upstream: no [upstream.flet] (defined: fleet)",
            "route[0].path_prefix",
            "route[0].timeout",
            "upstream.fleet.endpoints: \"198.18.1.11\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let text = parse(&FLEET.replace("\"5s\"", "\"5 parsecs\"")).expect_err("duration");
        assert!(text.to_string().contains("5 parsecs"), "{text}");
    }
}
