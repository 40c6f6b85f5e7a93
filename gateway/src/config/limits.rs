//! `[[route.limits]]`: L7 rate limits, GCRA with a burst, keyed per client
//! address, per verified subject, per header value (an API key) or per route.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Who shares one budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LimitKey {
    /// Each client address.
    Client,
    /// Each verified token subject; requests without one share the client
    /// address's budget.
    Subject,
    /// Each value of this header; requests without it share one budget.
    Header(String),
    /// The whole route.
    Route,
}

impl TryFrom<String> for LimitKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "client" => Ok(Self::Client),
            "subject" => Ok(Self::Subject),
            "route" => Ok(Self::Route),
            other => match other.strip_prefix("header:") {
                Some(name) if http::HeaderName::try_from(name).is_ok() => {
                    Ok(Self::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "{other:?} is not a limit key; use \"client\", \"subject\", \"route\" or \"header:NAME\""
                )),
            },
        }
    }
}

impl From<LimitKey> for String {
    fn from(key: LimitKey) -> Self {
        match key {
            LimitKey::Client => "client".to_owned(),
            LimitKey::Subject => "subject".to_owned(),
            LimitKey::Route => "route".to_owned(),
            LimitKey::Header(name) => format!("header:{name}"),
        }
    }
}

/// One limit: `requests` per `per`, up to `burst` back to back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The policy name in the `RateLimit-Policy` header.
    pub name: String,
    pub key: LimitKey,
    /// Requests per `per`.
    pub requests: u32,
    #[serde(with = "duration")]
    pub per: Duration,
    /// Requests allowed back to back; default `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Problems of one route's limits, under `route` (e.g. `route[1]`).
pub fn problems(route: &str, limits: &[LimitConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let key = format!("{route}.limits[{i}]");
        problems.extend(name_problem(&key, &limit.name));
        if limit.requests == 0 {
            problems.push(format!("{key}.requests: must be at least 1"));
        }
        if limit.per.is_zero() {
            problems.push(format!("{key}.per: must be longer than zero"));
        }
        if limit.burst == Some(0) {
            problems.push(format!("{key}.burst: must be at least 1"));
        }
    }
    problems
}

/// A calendar period in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// A quota: at most `requests` per calendar `period` per key, counted in the
/// state directory so a restart neither forgets nor double-counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Names the quota in headers and in the state file.
    pub name: String,
    /// Usually `subject`; `client`, `header:NAME` and `route` work as for limits.
    #[serde(default = "subject")]
    pub key: LimitKey,
    pub requests: u64,
    pub period: Period,
}

fn subject() -> LimitKey {
    LimitKey::Subject
}

/// Problems of one route's quotas, under `route` (e.g. `route[1]`).
pub fn quota_problems(route: &str, quotas: &[QuotaConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, quota) in quotas.iter().enumerate() {
        let key = format!("{route}.quotas[{i}]");
        problems.extend(name_problem(&key, &quota.name));
        if quota.requests == 0 {
            problems.push(format!("{key}.requests: must be at least 1"));
        }
    }
    problems
}

/// Limit and quota names appear in response headers and state-file keys.
fn name_problem(key: &str, name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (!valid).then(|| format!("{key}.name: {name:?} must be letters, digits, '-' or '_'"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn policy_problems_name_their_keys() {
        let text = r#"
[xdp]
enabled = false
[abuse]
threshold = 0
block_ttl = "10m"
max_block_ttl = "5m"
[[listener]]
name = "public"
address = "127.0.0.1:8443"
[[listener.certificates]]
cert = "a.pem"
key = "a.key"
server_names = ["api.test"]
[[route]]
name = "api"
upstream = "fleet"
[[route.limits]]
name = "per client"
key = "client"
requests = 0
per = "0s"
[[route.quotas]]
name = "daily"
requests = 0
period = "day"
[route.waf]
disabled_rules = ["sqli-999"]
[[route.waf.rules]]
id = "xss-001"
field = "cookie"
operator = "regex"
value = "("
[upstream.fleet]
endpoints = ["127.0.0.1:9000"]
server_name = "fleet.internal"
ca = "ca.pem"
client_cert = "c.pem"
client_key = "c.key"
"#;
        let err = Config::parse(Path::new("t.toml"), text).expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "abuse.threshold",
            "abuse.max_block_ttl",
            "route[0].limits[0].name",
            "route[0].limits[0].requests",
            "route[0].limits[0].per",
            "route[0].quotas[0].requests",
            "route[0].waf: no built-in WAF rule \"sqli-999\"",
            "route[0].waf.rules[0].id",
            "route[0].waf.rules[0].field",
            "route[0].waf.rules[0].value: not a valid regex",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let bad_key = Config::parse(
            Path::new("t.toml"),
            "[xdp]\ninterface = \"eth0\"\n[[route]]\nname = \"a\"\nupstream = \"f\"\n[[route.limits]]\nname = \"x\"\nkey = \"ip\"\nrequests = 1\nper = \"1s\"\n",
        )
        .expect_err("bad key");
        assert!(
            bad_key.to_string().contains("\"ip\" is not a limit key"),
            "{bad_key}"
        );
    }
}
