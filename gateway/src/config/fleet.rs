//! `[fleet]`: the Redis link several gateways share blocks, revocations, abuse
//! scores, quotas and rate limits through. Absent, the gateway is an island and
//! behaves exactly as it would without this section.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{duration, secret::SecretUrl};

/// The environment variable read for the Redis password when `password_file`
/// is not set.
pub const PASSWORD_ENV: &str = "GATEWAY_FLEET_PASSWORD";

/// Where Redis is and what goes through it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// `redis://host:port` or `rediss://host:port` (TLS). In cluster mode one
    /// seed node, in sentinel mode one sentinel; more go in `more_nodes`.
    pub redis_url: SecretUrl,
    /// How the URLs are used.
    #[serde(default)]
    pub mode: RedisMode,
    /// Further cluster seed nodes or sentinels, same form as `redis_url`.
    #[serde(default)]
    pub more_nodes: Vec<SecretUrl>,
    /// The master's name as the sentinels know it (sentinel mode only).
    #[serde(default)]
    pub sentinel_master: Option<String>,
    /// The CA that signs the Redis server's certificate (`rediss://` only);
    /// without it the system's roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for Redis servers that require one (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The ACL user (Redis 6+); absent: the default user.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password. Without it the password comes
    /// from the `GATEWAY_FLEET_PASSWORD` environment variable, if set. Kept out of
    /// the config itself so `/config`, logs and backups never hold it.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This gateway's name in the fleet: the provenance of what it shares and
    /// its heartbeat's key. Default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// Keys are `{key_prefix}:...`, so several fleets can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The longest a request waits on Redis before deciding locally.
    #[serde(default = "default_budget", with = "duration")]
    pub budget: Duration,
    /// The longest the link waits for a connection, and for background work
    /// (resynchronisation, publishing) before it retries.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How often this gateway announces itself (and checks the link).
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat: Duration,
    /// What is shared; each is on by default.
    #[serde(default)]
    pub share: Sharing,
    /// Whether a shared quota admits (`open`) or refuses (`closed`) a request
    /// when Redis cannot be asked within the budget.
    #[serde(default)]
    pub quota_when_unreachable: Unreachable,
    /// The widest IPv4 prefix a shared block may cover: a wider one read from
    /// Redis (another writer, a mistake) is refused, so no entry there can
    /// block everyone. Local blocks are not limited by this.
    #[serde(default = "default_widest_v4")]
    pub widest_block_v4: u8,
    /// The same for IPv6.
    #[serde(default = "default_widest_v6")]
    pub widest_block_v6: u8,
}

fn default_widest_v4() -> u8 {
    16
}

fn default_widest_v6() -> u8 {
    32
}

/// How `redis_url` and `more_nodes` are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One Redis server (or a proxy in front of several).
    #[default]
    Standalone,
    /// A Redis Cluster; the URLs are seed nodes.
    Cluster,
    /// A master found through Redis Sentinel; the URLs are sentinels.
    Sentinel,
}

/// Per feature, whether it goes through Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sharing {
    /// Blocklist entries (abuse loop, `gateway blocklist add --fleet`).
    pub blocks: bool,
    /// Token revocations.
    pub revocations: bool,
    /// Abuse signal scores, summed over the fleet.
    pub abuse: bool,
    /// Quota counters.
    pub quotas: bool,
    /// L7 rate limit state.
    pub rate_limits: bool,
}

impl Default for Sharing {
    fn default() -> Self {
        Self {
            blocks: true,
            revocations: true,
            abuse: true,
            quotas: true,
            rate_limits: true,
        }
    }
}

/// What a shared quota does when Redis does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unreachable {
    /// Count locally and admit: availability over exactness.
    #[default]
    Open,
    /// Refuse (429): exactness over availability.
    Closed,
}

fn default_node() -> String {
    hostname()
}

/// The kernel's host name, or `gateway` if it has none.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

fn default_key_prefix() -> String {
    "gateway".to_owned()
}

fn default_budget() -> Duration {
    Duration::from_millis(5)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

/// The longest budget accepted: beyond this Redis would be in the way.
const MAX_BUDGET: Duration = Duration::from_secs(1);

impl FleetSection {
    /// Every problem, each with its key path.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, url) in std::iter::once(("fleet.redis_url", &self.redis_url))
            .chain(self.more_nodes.iter().map(|url| ("fleet.more_nodes", url)))
        {
            if let Some(problem) = url_problem(url.expose()) {
                problems.push(format!("{key}: {problem}"));
            }
        }
        let tls = self.uses_tls();
        if self
            .more_nodes
            .iter()
            .any(|url| url.expose().starts_with("rediss://") != tls)
        {
            problems.push(
                "fleet.more_nodes: mixes redis:// and rediss:// with fleet.redis_url".to_owned(),
            );
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            problems
                .push("fleet.ca_file / fleet.cert_file: only used with a rediss:// URL".to_owned());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push("fleet.cert_file and fleet.key_file: set both or neither".to_owned());
        }
        match (self.mode, &self.sentinel_master) {
            (RedisMode::Sentinel, None) => problems
                .push("fleet.sentinel_master: required when fleet.mode = \"sentinel\"".to_owned()),
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => problems
                .push("fleet.sentinel_master: only used when fleet.mode = \"sentinel\"".to_owned()),
            _ => {}
        }
        if self.mode == RedisMode::Standalone && !self.more_nodes.is_empty() {
            problems.push(
                "fleet.more_nodes: only used in cluster or sentinel mode; a standalone link has one server"
                    .to_owned(),
            );
        }
        if self.widest_block_v4 > 32 {
            problems.push("fleet.widest_block_v4: a prefix length, 0 to 32".to_owned());
        }
        if self.widest_block_v6 > 128 {
            problems.push("fleet.widest_block_v6: a prefix length, 0 to 128".to_owned());
        }
        if !valid_name(&self.node) {
            problems.push(format!(
                "fleet.node: {:?} must be 1-64 characters of letters, digits, '.', '-' or '_'",
                self.node
            ));
        }
        if !valid_name(&self.key_prefix) {
            problems.push(format!(
                "fleet.key_prefix: {:?} must be 1-64 characters of letters, digits, '.', '-' or '_'",
                self.key_prefix
            ));
        }
        if self.budget.is_zero() || self.budget > MAX_BUDGET {
            problems.push(format!(
                "fleet.budget: {} must be above zero and at most 1s",
                humantime::format_duration(self.budget)
            ));
        }
        if self.connect_timeout < Duration::from_millis(10) {
            problems.push("fleet.connect_timeout: must be at least 10ms".to_owned());
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            problems.push("fleet.heartbeat: must be between 100ms and 60s".to_owned());
        }
        problems
    }

    /// What is allowed but probably not meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.password_in_url() {
            warnings.push(
                "fleet.redis_url: carries a password; put it in fleet.password_file instead"
                    .to_owned(),
            );
        }
        warnings
    }

    /// Whether the link speaks TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.redis_url.expose().starts_with("rediss://")
    }

    fn password_in_url(&self) -> bool {
        std::iter::once(&self.redis_url)
            .chain(&self.more_nodes)
            .any(|url| {
                url.expose()
                    .split_once("://")
                    .and_then(|(_, rest)| rest.split_once('@'))
                    .is_some_and(|(userinfo, _)| userinfo.contains(':'))
            })
    }
}

fn url_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("{url:?} is not a URL; write redis://host:6379"));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Some(format!(
            "scheme {scheme:?} is not redis or rediss (unix sockets are not supported)"
        ));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if host.is_empty() || host.starts_with('/') || host.starts_with(':') {
        return Some("names no host".to_owned());
    }
    None
}

/// A node name: 1 to 64 of `A-Za-z0-9._-`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            &format!("[xdp]\ninterface = \"eth0\"\n{text}"),
        )
    }

    #[test]
    fn absent_means_no_fleet_and_present_has_safe_defaults() {
        assert!(parse("").expect("valid").fleet.is_none());
        let config = parse("[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\n").expect("valid");
        let fleet = config.fleet.expect("fleet");
        assert_eq!(fleet.budget, Duration::from_millis(5));
        assert_eq!(fleet.mode, RedisMode::Standalone);
        assert_eq!(fleet.share, Sharing::default());
        assert!(fleet.share.blocks && fleet.share.revocations);
        assert_eq!(fleet.quota_when_unreachable, Unreachable::Open);
        assert!(!fleet.node.is_empty());
    }

    #[test]
    fn problems_name_their_keys() {
        let text = parse(
            "[fleet]\nredis_url = \"http://x\"\nnode = \"a b\"\nbudget = \"0s\"\nmode = \"sentinel\"\n\
             more_nodes = [\"rediss://y\"]\ncert_file = \"/c\"\n",
        )
        .expect_err("invalid")
        .to_string();
        for needle in [
            "fleet.redis_url: scheme \"http\"",
            "fleet.node",
            "fleet.budget",
            "fleet.sentinel_master: required",
            "fleet.more_nodes: mixes",
            "fleet.cert_file and fleet.key_file",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let text = parse("[fleet]\nredis_url = \"redis://x\"\nshare = { blockz = true }\n")
            .expect_err("unknown")
            .to_string();
        assert!(text.contains("blockz"), "{text}");
    }

    #[test]
    fn a_password_in_the_url_is_a_warning_and_never_shown() {
        let config =
            parse("[fleet]\nredis_url = \"redis://u:hunter2@127.0.0.1\"\n").expect("valid");
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("password_file"))
        );
        let shown = crate::observe::redact::config_view(&config).to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
