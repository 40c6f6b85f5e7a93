//! The proxy's part of the configuration: listeners, routes and upstream pools.
//! Defaults live in the `Default` impls; [`problems`] checks what serde cannot.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{byte_rate::ByteRate, duration};
use crate::addr::Cidr;

/// `[proxy]`: settings shared by every listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySection {
    /// On SIGTERM, how long in-flight requests may take to finish before the
    /// gateway exits anyway.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Clients whose own `X-Forwarded-*`/`Forwarded` headers are kept (other load
    /// balancers in front of the gateway); everyone else's are replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// Which forwarding headers the gateway sets for the upstream.
    pub forwarded_headers: ForwardedStyle,
    /// How often certificate and key files are checked for changes (SIGHUP reloads
    /// them at once).
    #[serde(with = "duration")]
    pub certificate_check_interval: Duration,
    /// File descriptors kept out of the listeners' reach (admin endpoint,
    /// health checks, logs, BPF maps): the default `max_connections` of all
    /// listeners together is half of what `RLIMIT_NOFILE` leaves after these,
    /// the other half being room for upstream connections.
    pub reserved_descriptors: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            forwarded_headers: ForwardedStyle::XForwarded,
            certificate_check_interval: Duration::from_secs(5),
            reserved_descriptors: 256,
        }
    }
}

/// `X-Forwarded-For/-Proto/-Host` or the standard `Forwarded` (RFC 7239).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedStyle {
    XForwarded,
    Forwarded,
}

/// `[[listener]]`: one TLS socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind.
    pub address: SocketAddr,
    /// Certificates offered by SNI; the first is the default for clients that send
    /// no name or an unknown one.
    pub certificates: Vec<CertificateConfig>,
    /// Verify client certificates against this CA bundle (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` refuses clients without a valid certificate,
    /// `optional` accepts them but still rejects invalid ones.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Whether a request's host must be covered by the connection's SNI (the
    /// name itself, or the `server_names` of the certificate it selected, so
    /// HTTP/2 connection coalescing keeps working) → 421 otherwise. Absent: on
    /// when the listener requires client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_host_match: Option<bool>,
    /// Timeouts against slow or idle clients.
    #[serde(default)]
    pub timeouts: ListenerTimeouts,
    /// Request size limits.
    #[serde(default)]
    pub limits: ListenerLimits,
}

impl ListenerConfig {
    /// Whether every client must present a valid certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some() && self.client_auth == ClientAuth::Required
    }

    /// Whether requests must name a host their connection's SNI covers.
    pub fn checks_sni_host(&self) -> bool {
        self.sni_host_match
            .unwrap_or_else(|| self.requires_client_certificates())
    }
}

/// One certificate chain and key for a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate answers: exact (`api.example.com`) or one
    /// leading wildcard label (`*.example.com`).
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// `[listener.timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerTimeouts {
    /// From accept to a finished TLS handshake.
    #[serde(with = "duration")]
    pub tls_handshake: Duration,
    /// To receive a whole request head (slowloris defence, HTTP/1.1).
    #[serde(with = "duration")]
    pub request_header: Duration,
    /// Longest pause between two pieces of a request body.
    #[serde(with = "duration")]
    pub body_read: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "duration")]
    pub idle: Duration,
    /// `min_body_rate` is checked over windows of this much time spent
    /// waiting for the client (time the upstream makes the body wait is not
    /// the client's and does not count).
    #[serde(with = "duration")]
    pub body_rate_window: Duration,
    /// Waiting time a body gets before its first window is checked.
    #[serde(with = "duration")]
    pub body_rate_grace: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            request_header: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            body_rate_window: Duration::from_secs(10),
            body_rate_grace: Duration::from_secs(5),
        }
    }
}

/// `[listener.limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Longest request target (path and query) → 414.
    pub max_uri_bytes: usize,
    /// Most header fields in a request → 431.
    pub max_header_count: usize,
    /// Most bytes of header names and values together → 431.
    pub max_header_bytes: usize,
    /// Largest request body unless a route says otherwise → 413.
    pub max_body_bytes: u64,
    /// A request body arriving slower than this (per `body_rate_window`) is
    /// cut off → 408; routes may override; `"off"` disables.
    pub min_body_rate: ByteRate,
    /// Open connections; at the cap the oldest connection with no request in
    /// flight is closed for the new one, or the new one is refused if every
    /// connection is busy. Absent: derived from `RLIMIT_NOFILE` (see
    /// `proxy.reserved_descriptors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Open connections from one client address (IPv6: one /64); more are
    /// refused at accept. Clients in `proxy.trusted_proxies` are exempt.
    pub max_connections_per_client: u64,
    /// Requests in flight from one client address (IPv6: one /64) → 429.
    /// Clients in `proxy.trusted_proxies` are exempt.
    pub max_requests_per_client: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_header_count: 100,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            min_body_rate: ByteRate(1024),
            max_connections: None,
            max_connections_per_client: 256,
            max_requests_per_client: 128,
        }
    }
}

/// `[[route]]`: which requests go to which pool, and how they are rewritten.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Hosts this route serves: exact or `*.example.com`; empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Names of the listeners that serve this route; empty means all. A host
    /// whose matching routes are all on other listeners gets 421.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Path prefix matched against the normalized path; the longest one wins.
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
    /// Allowed methods; empty means any. Others get 405 with `Allow`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The upstream pool (a key of `[upstream]`).
    pub upstream: String,
    /// Replace the matched prefix with this one before forwarding (`"/"` strips it).
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// `Host` sent upstream; absent keeps the client's.
    #[serde(default)]
    pub upstream_host: Option<String>,
    /// Overrides the listener's `max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Overrides the listener's `min_body_rate` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_body_rate: Option<ByteRate>,
    /// Whole-request deadline, retries included → 504.
    #[serde(default = "default_route_timeout", with = "duration")]
    pub timeout: Duration,
    /// `[route.auth]`: who may call this route (default: anyone).
    #[serde(default)]
    pub auth: super::RouteAuth,
    /// `[route.waf]`: inspection of this route's requests.
    #[serde(default)]
    pub waf: super::waf::RouteWaf,
    /// `[[route.limits]]`: L7 rate limits, each with its own key.
    #[serde(default)]
    pub limits: Vec<super::limits::LimitConfig>,
    /// `[[route.quotas]]`: requests per calendar hour, day or month.
    #[serde(default)]
    pub quotas: Vec<super::limits::QuotaConfig>,
}

fn root_prefix() -> String {
    "/".to_owned()
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[upstream.NAME]`: a pool of endpoints reached over mutual TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `ip:port` or `dns-name:port`; names are resolved again every
    /// `resolve_interval`.
    pub endpoints: Vec<String>,
    /// Name every endpoint's certificate must carry.
    pub server_name: String,
    /// The fleet's private CA (PEM); endpoints must chain to it.
    pub ca: PathBuf,
    /// Client certificate chain the gateway presents (PEM).
    pub client_cert: PathBuf,
    /// Its private key (PEM).
    pub client_key: PathBuf,
    /// How requests are spread over healthy endpoints.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "consistent_hash"`: hash this request header; absent hashes
    /// the client address.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// Offer HTTP/2 to endpoints (ALPN); HTTP/1.1 otherwise.
    #[serde(default)]
    pub http2: bool,
    /// How often DNS names are resolved again.
    #[serde(default = "default_resolve_interval", with = "duration")]
    pub resolve_interval: Duration,
    /// TCP connect plus TLS handshake to one endpoint.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "default_pool_idle", with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Retries.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_pool_idle() -> Duration {
    Duration::from_secs(90)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Same key, same endpoint, while the set of healthy endpoints holds.
    ConsistentHash,
}

/// `[upstream.NAME.health]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed with GET over the same mutual TLS; empty disables probing.
    pub path: String,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take it out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/healthz".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// `[upstream.NAME.outlier]`: endpoints that keep failing real requests are
/// ejected for `base_ejection` × the number of times they were ejected before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures (5xx, connect failures, resets, attempt timeouts,
    /// broken response bodies); 0 disables.
    pub consecutive_failures: u32,
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// Panic routing: when fewer than this percentage of the healthy endpoints
    /// are left after ejection, ejection is ignored and every healthy endpoint
    /// takes traffic (Envoy's `healthy_panic_threshold`). 0 (the default) never
    /// ignores it: with every endpoint ejected, requests get 503 at once.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            panic_threshold_percent: 0,
        }
    }
}

/// `[upstream.NAME.breaker]`: bounds what one pool may hold, so a slow pool
/// fails fast instead of piling up requests, and stops sending to a pool that
/// keeps failing (see `upstream::circuit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Requests in flight to the pool.
    pub max_concurrent: usize,
    /// Requests waiting for one of those slots; more get 503 at once.
    pub max_pending: usize,
    /// Longest wait for a slot.
    #[serde(with = "duration")]
    pub pending_timeout: Duration,
    /// The circuit opens when at least this percentage of the requests that
    /// ended within `window` failed…
    pub failure_percent: u32,
    /// …and at least this many ended (0 turns the ratio trigger off).
    pub min_requests: u32,
    #[serde(with = "duration")]
    pub window: Duration,
    /// Or after this many failed requests in a row (0: off).
    pub consecutive_failures: u32,
    /// How long an open circuit refuses every request.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// Requests let through after `open_for`; the circuit closes when they all
    /// succeed and opens again at the first failure.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 1024,
            max_pending: 1024,
            pending_timeout: Duration::from_secs(1),
            failure_percent: 50,
            min_requests: 20,
            window: Duration::from_secs(10),
            consecutive_failures: 0,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// `[upstream.NAME.retry]`: only idempotent requests, or requests that never
/// reached an endpoint, are tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Further attempts after the first.
    pub attempts: u32,
    /// Retries may add at most this share of the pool's requests…
    pub budget_percent: u32,
    /// …but this many per second are always allowed.
    pub min_per_second: u32,
    /// Bodies up to this size are kept so they can be sent again; larger ones
    /// stream and are not retried.
    pub buffer_bytes: usize,
    /// Bounds each attempt (connect to the first byte of the answer's body); an
    /// idempotent request whose attempt times out is tried again elsewhere
    /// within the route's timeout. Unset: each attempt may take the whole route
    /// timeout.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Retries wait a random time up to `backoff_base × 2^(retry - 1)`, at most
    /// `backoff_max` (full jitter), so that retries do not arrive in step.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            min_per_second: 10,
            buffer_bytes: 64 * 1024,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

/// Every problem in the proxy sections, each with its key path.
pub fn problems(
    proxy: &ProxySection,
    listeners: &[ListenerConfig],
    routes: &[RouteConfig],
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if proxy.certificate_check_interval.is_zero() {
        problems.push("proxy.certificate_check_interval: must be above zero".to_owned());
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, listener) in listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        if listener.name.is_empty() || !names.insert(&listener.name) {
            problems.push(format!("{key}.name: must be set and unique"));
        }
        if !addresses.insert(listener.address) {
            problems.push(format!(
                "{key}.address: {} is used by another listener",
                listener.address
            ));
        }
        if listener.certificates.is_empty() {
            problems.push(format!(
                "{key}.certificates: at least one [[listener.certificates]] with cert and key"
            ));
        }
        for (j, certificate) in listener.certificates.iter().enumerate() {
            for name in &certificate.server_names {
                if let Err(why) = check_host_pattern(name) {
                    problems.push(format!(
                        "{key}.certificates[{j}].server_names: {name:?} {why}"
                    ));
                }
            }
        }
        let t = &listener.timeouts;
        for (field, value) in [
            ("tls_handshake", t.tls_handshake),
            ("request_header", t.request_header),
            ("body_read", t.body_read),
            ("idle", t.idle),
            ("body_rate_window", t.body_rate_window),
        ] {
            if value.is_zero() {
                problems.push(format!("{key}.timeouts.{field}: must be above zero"));
            }
        }
        let l = &listener.limits;
        for (field, value) in [
            ("max_uri_bytes", l.max_uri_bytes),
            ("max_header_count", l.max_header_count),
            ("max_header_bytes", l.max_header_bytes),
        ] {
            if value == 0 {
                problems.push(format!("{key}.limits.{field}: must be at least 1"));
            }
        }
        for (field, value) in [
            ("max_connections", l.max_connections.unwrap_or(1)),
            ("max_connections_per_client", l.max_connections_per_client),
            ("max_requests_per_client", l.max_requests_per_client),
        ] {
            if value == 0 {
                problems.push(format!("{key}.limits.{field}: must be at least 1"));
            }
        }
    }

    let mut route_names = HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        let key = format!("route[{i}]");
        problems.extend(route.waf.problems(&format!("{key}.waf")));
        problems.extend(super::limits::problems(&key, &route.limits));
        problems.extend(super::limits::quota_problems(&key, &route.quotas));
        if route.name.is_empty() || !route_names.insert(&route.name) {
            problems.push(format!("{key}.name: must be set and unique"));
        }
        if !route.path_prefix.starts_with('/') {
            problems.push(format!(
                "{key}.path_prefix: {:?} must start with '/'",
                route.path_prefix
            ));
        }
        if let Some(rewrite) = &route.rewrite_prefix
            && !rewrite.starts_with('/')
        {
            problems.push(format!(
                "{key}.rewrite_prefix: {rewrite:?} must start with '/'"
            ));
        }
        for host in &route.hosts {
            if let Err(why) = check_host_pattern(host) {
                problems.push(format!("{key}.hosts: {host:?} {why}"));
            }
        }
        for name in &route.listeners {
            if !listeners.iter().any(|l| l.name == *name) {
                let known: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                problems.push(format!(
                    "{key}.listeners: no listener named {name:?} (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        for method in &route.methods {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                problems.push(format!("{key}.methods: {method:?} is not an HTTP method"));
            } else if *method != method.to_ascii_uppercase() {
                problems.push(format!(
                    "{key}.methods: {method:?} would never match (methods are case-sensitive); write {:?}",
                    method.to_ascii_uppercase()
                ));
            }
        }
        if let Some(host) = &route.upstream_host
            && http::HeaderValue::from_str(host).is_err()
        {
            problems.push(format!(
                "{key}.upstream_host: {host:?} is not a valid header value"
            ));
        }
        if route.timeout.is_zero() {
            problems.push(format!("{key}.timeout: must be above zero"));
        }
        if !upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            problems.push(format!(
                "{key}.upstream: no [upstream.{}] (defined: {})",
                route.upstream,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[..i] {
            if a.path_prefix == b.path_prefix
                && a.hosts == b.hosts
                && share_a_listener(a, b, listeners)
            {
                problems.push(format!(
                    "route {:?}: same hosts and path_prefix as route {:?}; only one can match",
                    a.name, b.name
                ));
            }
        }
    }

    for (name, upstream) in upstreams {
        let key = format!("upstream.{name}");
        if upstream.endpoints.is_empty() {
            problems.push(format!(
                "{key}.endpoints: at least one \"ip:port\" or \"name:port\""
            ));
        }
        for endpoint in &upstream.endpoints {
            if let Err(why) = check_endpoint(endpoint) {
                problems.push(format!("{key}.endpoints: {endpoint:?} {why}"));
            }
        }
        if rustls_pki_types::ServerName::try_from(upstream.server_name.as_str()).is_err() {
            problems.push(format!(
                "{key}.server_name: {:?} is not a DNS name or IP address",
                upstream.server_name
            ));
        }
        if let Some(header) = &upstream.hash_header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            problems.push(format!(
                "{key}.hash_header: {header:?} is not a header name"
            ));
        }
        if upstream.hash_header.is_some() && upstream.balance != Balance::ConsistentHash {
            problems.push(format!(
                "{key}.hash_header: only used with balance = \"consistent_hash\""
            ));
        }
        for (field, value) in [
            ("connect_timeout", upstream.connect_timeout),
            ("resolve_interval", upstream.resolve_interval),
            ("health.interval", upstream.health.interval),
            ("health.timeout", upstream.health.timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("{key}.{field}: must be above zero"));
            }
        }
        if !upstream.health.path.is_empty() && !upstream.health.path.starts_with('/') {
            problems.push(format!(
                "{key}.health.path: {:?} must start with '/' (or be \"\" to disable)",
                upstream.health.path
            ));
        }
        if upstream.health.healthy_threshold == 0 || upstream.health.unhealthy_threshold == 0 {
            problems.push(format!(
                "{key}.health: healthy_threshold and unhealthy_threshold must be at least 1"
            ));
        }
        if upstream.outlier.base_ejection > upstream.outlier.max_ejection {
            problems.push(format!(
                "{key}.outlier.base_ejection: longer than max_ejection"
            ));
        }
        if upstream.breaker.max_concurrent == 0 {
            problems.push(format!("{key}.breaker.max_concurrent: must be at least 1"));
        }
        for (field, percent) in [
            ("retry.budget_percent", upstream.retry.budget_percent),
            ("breaker.failure_percent", upstream.breaker.failure_percent),
            (
                "outlier.panic_threshold_percent",
                upstream.outlier.panic_threshold_percent,
            ),
        ] {
            if percent > 100 {
                problems.push(format!("{key}.{field}: {percent} is above 100"));
            }
        }
        if upstream.retry.per_try_timeout.is_some_and(|t| t.is_zero()) {
            problems.push(format!(
                "{key}.retry.per_try_timeout: must be longer than 0 (leave it out for the route timeout)"
            ));
        }
        for (field, value, max) in [
            (
                "breaker.open_for",
                upstream.breaker.open_for,
                Duration::from_secs(86_400),
            ),
            (
                "breaker.window",
                upstream.breaker.window,
                Duration::from_secs(3_600),
            ),
            (
                "retry.backoff_max",
                upstream.retry.backoff_max,
                Duration::from_secs(60),
            ),
        ] {
            if value > max {
                problems.push(format!(
                    "{key}.{field}: {} is longer than the maximum of {}",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ));
            }
        }
        if upstream.retry.backoff_base > upstream.retry.backoff_max {
            problems.push(format!("{key}.retry.backoff_base: longer than backoff_max"));
        }
        if upstream.connect_timeout.is_zero() {
            problems.push(format!("{key}.connect_timeout: must be longer than 0"));
        }
    }
    problems
}

/// Whether some listener serves both routes (empty `listeners` means all).
fn share_a_listener(a: &RouteConfig, b: &RouteConfig, listeners: &[ListenerConfig]) -> bool {
    listeners
        .iter()
        .any(|l| a.serves(&l.name) && b.serves(&l.name))
        || (listeners.is_empty() && a.listeners.is_empty() && b.listeners.is_empty())
}

impl RouteConfig {
    /// Whether the listener called `listener` serves this route.
    pub fn serves(&self, listener: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener)
    }
}

/// Host patterns are lower-case-insensitive DNS names with at most one leading
/// `*.` label.
fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() || name.contains('*') {
        return Err("must be a DNS name, optionally starting with \"*.\"");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("may only hold letters, digits, '-' and '.'");
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("needs a port, e.g. \"10.0.0.5:8443\"");
    };
    if port.parse::<u16>().map_or(true, |port| port == 0) {
        return Err("has no valid port");
    }
    check_host_pattern(host)
        .ok()
        .filter(|()| !host.starts_with("*."))
        .ok_or("is not an address or a DNS name")
}
