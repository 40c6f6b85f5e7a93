//! L7 rate limits: GCRA (the `governor` crate) per route, each limit with its
//! own key. A rejected request gets 429 with `Retry-After` and the IETF draft
//! `RateLimit-Policy` / `RateLimit` headers. A reload keeps the limiter (and
//! so every key's budget) of each limit whose route and settings are unchanged.
//!
//! With `[fleet]` and `share.rate_limits`, the fleet's Redis decides (one
//! atomic GCRA script for all of a route's limits, see [`super::shared`]), so
//! N gateways admit what one would. A request waits on Redis for at most
//! `fleet.budget`; without an answer the local limiter decides, which is kept
//! charged with every request this gateway admitted, so it takes over where
//! the fleet's budget stood as far as this gateway's own traffic goes.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DashMapStateStore,
};
use http::HeaderMap;

use super::shared::{self, Cell, CellVerdict};
use crate::{
    auth::Identity,
    config::{LimitConfig, LimitKey, RouteConfig},
    fleet::Link,
};

type Keyed =
    RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Keys idle long enough to have a full budget again are forgotten after this
/// many checks of one limiter.
const RETAIN_EVERY: u32 = 10_000;

/// One configured limit and its budgets.
struct Limit {
    config: LimitConfig,
    limiter: Arc<Keyed>,
    checks: Arc<AtomicU32>,
}

/// Why a request was refused, with what the headers say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The limit's name.
    pub policy: String,
    pub requests: u32,
    pub window: Duration,
    /// When the next request of this key may pass.
    pub retry_after: Duration,
}

impl Rejection {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.policy,
            self.requests,
            self.window.as_secs().max(1)
        )
    }

    /// `RateLimit`: nothing remains until `t` seconds from now.
    pub fn limit_header(&self) -> String {
        format!("\"{}\";r=0;t={}", self.policy, self.retry_secs())
    }

    /// `Retry-After` in whole seconds, never 0.
    pub fn retry_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The limits of every route.
#[derive(Default)]
pub struct RateLimits {
    routes: HashMap<String, Vec<Limit>>,
    /// The fleet's Redis, when rate limits are shared.
    fleet: Option<Link>,
}

impl RateLimits {
    /// Builds the limiters for `routes`, reusing those of `previous` whose
    /// route name and settings are the same; `fleet` shares them.
    pub fn new(
        routes: &[RouteConfig],
        previous: Option<&RateLimits>,
        fleet: Option<&Link>,
    ) -> Self {
        let routes = routes
            .iter()
            .map(|route| {
                let limits = route
                    .limits
                    .iter()
                    .filter_map(|config| {
                        let kept = previous
                            .and_then(|p| p.routes.get(&route.name))
                            .and_then(|limits| limits.iter().find(|l| l.config == *config));
                        match kept {
                            Some(limit) => Some(Limit {
                                config: config.clone(),
                                limiter: limit.limiter.clone(),
                                checks: limit.checks.clone(),
                            }),
                            None => Some(Limit {
                                config: config.clone(),
                                limiter: Arc::new(
                                    RateLimiter::keyed(quota(config)?)
                                        .with_middleware::<StateInformationMiddleware>(),
                                ),
                                checks: Arc::new(AtomicU32::new(0)),
                            }),
                        }
                    })
                    .collect();
                (route.name.clone(), limits)
            })
            .collect();
        Self {
            routes,
            fleet: fleet.filter(|link| link.share().rate_limits).cloned(),
        }
    }

    /// Takes one request from every limit of `route`; the first limit that
    /// has nothing left refuses it. Shared limits ask the fleet first.
    pub async fn check(
        &self,
        route: &str,
        client: IpAddr,
        identity: Option<&Identity>,
        headers: &HeaderMap,
    ) -> Result<(), Rejection> {
        let Some(limits) = self.routes.get(route) else {
            return Ok(());
        };
        let keys: Vec<String> = limits
            .iter()
            .map(|limit| key_for(&limit.config.key, client, identity, headers))
            .collect();
        if let Some(link) = &self.fleet {
            let cells: Vec<Cell> = limits
                .iter()
                .zip(&keys)
                .map(|(limit, key)| cell(link, route, &limit.config, key))
                .collect();
            match link
                .within_budget(|mut conn| async move { shared::gcra(&mut conn, &cells).await })
                .await
            {
                Ok(CellVerdict::Allowed) => {
                    // The local limiter learns what this gateway admitted, to
                    // decide from there when the fleet cannot.
                    for (limit, key) in limits.iter().zip(&keys) {
                        let _ = local_check(limit, key);
                    }
                    return Ok(());
                }
                Ok(CellVerdict::Refused { index, retry_after }) => {
                    let limit = &limits[index.min(limits.len() - 1)];
                    return Err(rejected(route, &limit.config, retry_after));
                }
                Err(err) => {
                    metrics::counter!("gateway_fleet_fallback_total", "feature" => "rate_limits", "reason" => err.reason()).increment(1);
                }
            }
        }
        for (limit, key) in limits.iter().zip(&keys) {
            if let Err(retry_after) = local_check(limit, key) {
                return Err(rejected(route, &limit.config, retry_after));
            }
        }
        Ok(())
    }
}

/// Takes one request from `limit`'s local budget for `key`; the wait until
/// the next one may pass when there is none.
fn local_check(limit: &Limit, key: &str) -> Result<(), Duration> {
    if limit.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
        limit.limiter.retain_recent();
    }
    limit
        .limiter
        .check_key(&key.to_owned())
        .map(|_| ())
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

fn rejected(route: &str, config: &LimitConfig, retry_after: Duration) -> Rejection {
    metrics::counter!("gateway_ratelimit_rejected_total", "route" => route.to_owned(), "policy" => config.name.clone()).increment(1);
    Rejection {
        policy: config.name.clone(),
        requests: config.requests,
        window: config.per,
        retry_after,
    }
}

/// The fleet's budget of `key` under `config`: the settings are in the name,
/// so changed settings start a new budget (as a reload does locally), and the
/// route is the Cluster hash tag, so one script reaches all its limits.
fn cell(link: &Link, route: &str, config: &LimitConfig, key: &str) -> Cell {
    let burst = config.burst.unwrap_or(config.requests).max(1);
    Cell {
        key: link.spread_key(
            route,
            &format!(
                "rl:{}:{}/{}ms/{burst}:{}",
                config.name,
                config.requests,
                config.per.as_millis(),
                shared::key_part(key)
            ),
        ),
        interval: config.per / config.requests.max(1),
        burst,
    }
}

/// The budget a request draws on: its client address, its verified subject
/// (the address when there is none), a header's value, or the route's one.
pub fn key_for(
    key: &LimitKey,
    client: IpAddr,
    identity: Option<&Identity>,
    headers: &HeaderMap,
) -> String {
    match key {
        LimitKey::Client => client.to_canonical().to_string(),
        LimitKey::Subject => match identity {
            Some(identity) => format!("sub:{}", identity.subject),
            None => client.to_canonical().to_string(),
        },
        LimitKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        LimitKey::Route => String::new(),
    }
}

/// `requests` per `per` with `burst`; `None` for settings validation refuses.
fn quota(config: &LimitConfig) -> Option<Quota> {
    let interval = config.per / config.requests.max(1);
    let burst = NonZeroU32::new(config.burst.unwrap_or(config.requests))?;
    Some(Quota::with_period(interval)?.allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(limits: &str) -> Vec<RouteConfig> {
        vec![
            toml::from_str(&format!(
                "name = \"api\"\npath_prefix = \"/\"\nupstream = \"fleet\"\n{limits}"
            ))
            .expect("route"),
        ]
    }

    const PER_CLIENT: &str =
        "[[limits]]\nname = \"per-client\"\nkey = \"client\"\nrequests = 3\nper = \"1h\"\n";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[tokio::test]
    async fn burst_then_refused_with_headers_per_key() {
        let limits = RateLimits::new(&routes(PER_CLIENT), None, None);
        let headers = HeaderMap::new();
        for _ in 0..3 {
            assert!(
                limits
                    .check("api", ip("198.18.0.1"), None, &headers)
                    .await
                    .is_ok()
            );
        }
        let rejection = limits
            .check("api", ip("198.18.0.1"), None, &headers)
            .await
            .expect_err("fourth request in the hour");
        assert_eq!(rejection.policy_header(), "\"per-client\";q=3;w=3600");
        assert!(rejection.retry_secs() > 1000, "{rejection:?}");
        assert_eq!(
            rejection.limit_header(),
            format!("\"per-client\";r=0;t={}", rejection.retry_secs())
        );
        assert!(
            limits
                .check("api", ip("198.18.0.2"), None, &headers)
                .await
                .is_ok(),
            "other clients have their own budget"
        );
        assert!(
            limits
                .check("other", ip("198.18.0.1"), None, &headers)
                .await
                .is_ok(),
            "routes without limits pass"
        );
    }

    #[tokio::test]
    async fn subject_header_and_route_keys() {
        let limits = RateLimits::new(
            &routes(
                "[[limits]]\nname = \"sub\"\nkey = \"subject\"\nrequests = 1\nper = \"1h\"\n\
                 [[limits]]\nname = \"api-key\"\nkey = \"header:X-Api-Key\"\nrequests = 2\nper = \"1h\"\n",
            ),
            None,
            None,
        );
        let alice = Identity {
            subject: "alice".to_owned(),
            ..Identity::default()
        };
        let bob = Identity {
            subject: "bob".to_owned(),
            ..Identity::default()
        };
        let mut key_a = HeaderMap::new();
        key_a.insert("x-api-key", "a".parse().expect("value"));
        let client = ip("198.18.0.1");
        assert!(
            limits
                .check("api", client, Some(&alice), &key_a)
                .await
                .is_ok()
        );
        assert_eq!(
            limits
                .check("api", client, Some(&alice), &key_a)
                .await
                .expect_err("alice spent")
                .policy,
            "sub"
        );
        assert!(
            limits
                .check("api", client, Some(&bob), &key_a)
                .await
                .is_ok(),
            "bob has his own budget"
        );
        let carol = Identity {
            subject: "carol".to_owned(),
            ..Identity::default()
        };
        assert_eq!(
            limits
                .check("api", client, Some(&carol), &key_a)
                .await
                .expect_err("key a spent")
                .policy,
            "api-key"
        );
        let route = RateLimits::new(
            &routes("[[limits]]\nname = \"all\"\nkey = \"route\"\nrequests = 1\nper = \"1h\"\n"),
            None,
            None,
        );
        assert!(
            route
                .check("api", ip("198.18.0.1"), None, &key_a)
                .await
                .is_ok()
        );
        assert!(
            route
                .check("api", ip("198.18.0.2"), None, &key_a)
                .await
                .is_err(),
            "one budget for everyone"
        );
    }

    #[tokio::test]
    async fn reload_keeps_budgets_of_unchanged_limits_only() {
        let first = RateLimits::new(&routes(PER_CLIENT), None, None);
        let headers = HeaderMap::new();
        for _ in 0..3 {
            assert!(
                first
                    .check("api", ip("198.18.0.1"), None, &headers)
                    .await
                    .is_ok()
            );
        }
        let same = RateLimits::new(&routes(PER_CLIENT), Some(&first), None);
        assert!(
            same.check("api", ip("198.18.0.1"), None, &headers)
                .await
                .is_err(),
            "budget survived"
        );
        let changed = RateLimits::new(&routes(&PER_CLIENT.replace("3", "4")), Some(&same), None);
        assert!(
            changed
                .check("api", ip("198.18.0.1"), None, &headers)
                .await
                .is_ok(),
            "new settings, new budget"
        );
    }
}
