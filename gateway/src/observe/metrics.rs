//! Prometheus metrics. The recorder is installed once per process; requests
//! record through the `metrics` facade as they finish, and what the gateway
//! can read at any moment (endpoint health, breaker slots, the XDP counters and
//! map fill) is read when `/metrics` is scraped, so it is never stale and costs
//! nothing between scrapes.
//!
//! Names: `gateway_<area>_<what>[_total|_seconds]`; labels are bounded sets
//! (routes, pools and endpoints from the config, status codes, error codes,
//! XDP reasons), never a client address, token or path. Histograms have fixed
//! buckets and an upkeep thread folds their samples in, so memory does not
//! depend on whether anyone scrapes.
//!
//! Every metric is listed once in [`DESCRIPTIONS`] with its type, unit and
//! help text, which become the exposition's `# HELP` and `# TYPE` lines (and
//! the metric table in docs/operations.md). The process metrics
//! (`process_*`) are described by `metrics-process` itself.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime},
};

use gateway_common::consts::{Reason, map_names};
use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    config::{Config, ListenerConfig},
    upstream::Upstreams,
    xdp::{KernelMaps, XdpError},
};

/// A metric's Prometheus type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric the gateway exports: what `# HELP` and `# TYPE` say about it.
#[derive(Debug)]
pub struct Description {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The labels its series carry (for the docs; the code sets them).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn describe(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Description {
    Description {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};
use Unit::{Bytes as B, Count as N, Seconds as S};

/// Every `gateway_*` metric, the one place that names them all.
#[rustfmt::skip]
pub const DESCRIPTIONS: &[Description] = &[
    describe("gateway_build_info", G, N, &["version", "commit"], "Always 1; the labels say which build runs."),
    describe("gateway_reload_last_success", G, N, &[], "1 if the last configuration load (start or SIGHUP) was applied, 0 if it was rejected."),
    describe("gateway_reload_last_timestamp_seconds", G, S, &[], "Unix time of the last configuration load (start or SIGHUP), applied or not."),
    describe("gateway_certificate_expiry_seconds", G, S, &["role", "name", "path", "subject"], "Unix time at which a certificate in use expires (notAfter of the leaf); role is listener or upstream (the client certificate)."),
    describe("gateway_requests_total", C, N, &["listener", "route", "status"], "Requests answered, by listener, route (none: no route matched) and status code."),
    describe("gateway_request_errors_total", C, N, &["route", "code"], "Requests the gateway answered itself, by error code (no_route, invalid_token, waf_blocked, ...)."),
    describe("gateway_request_duration_seconds", H, S, &["route"], "Time from the request head to the response head."),
    describe("gateway_request_bytes_total", C, B, &["route"], "Request body bytes declared by Content-Length."),
    describe("gateway_response_bytes_total", C, B, &["route"], "Response body bytes declared by Content-Length."),
    describe("gateway_upstream_duration_seconds", H, S, &["route", "upstream"], "Time the upstream took to answer, retries included."),
    describe("gateway_upstream_retries_total", C, N, &["upstream"], "Retries sent to another endpoint of the pool."),
    describe("gateway_upstream_body_errors_total", C, N, &["upstream"], "Upstream response bodies that broke off mid-stream."),
    describe("gateway_upstream_endpoints", G, N, &["upstream"], "Endpoints in the pool."),
    describe("gateway_upstream_healthy_endpoints", G, N, &["upstream"], "Endpoints of the pool passing health checks."),
    describe("gateway_upstream_endpoint_healthy", G, N, &["upstream", "endpoint"], "1 if the endpoint passes its health checks."),
    describe("gateway_upstream_endpoint_in_flight", G, N, &["upstream", "endpoint"], "Requests in flight to the endpoint."),
    describe("gateway_upstream_endpoint_ejected", G, N, &["upstream", "endpoint"], "1 while outlier detection keeps the endpoint out."),
    describe("gateway_upstream_breaker_open", G, N, &["upstream"], "1 while the pool's concurrency breaker refuses requests."),
    describe("gateway_upstream_breaker_in_flight", G, N, &["upstream"], "Requests holding one of the breaker's slots."),
    describe("gateway_upstream_breaker_pending", G, N, &["upstream"], "Requests waiting for a breaker slot."),
    describe("gateway_upstream_circuit_open", G, N, &["upstream"], "1 while the pool's circuit is open (failing fast)."),
    describe("gateway_listener_connections", G, N, &["listener"], "Client connections open on the listener."),
    describe("gateway_listener_connections_refused_total", C, N, &["listener", "reason"], "Connections refused at accept, by reason (limit, per_client, accept_error, ...)."),
    describe("gateway_listener_connections_evicted_total", C, N, &["listener"], "Idle connections closed to make room for new ones."),
    describe("gateway_auth_requests_total", C, N, &["result"], "Token checks, by result (ok or the refusal code); refusals are auth_refused audit events."),
    describe("gateway_auth_unknown_kid_total", C, N, &["issuer", "fetched"], "Tokens signed with a key id the issuer's key set lacks; fetched: whether that triggered a refetch."),
    describe("gateway_auth_jwks_fetch_failures_total", C, N, &["issuer"], "Failed fetches of an issuer's key set (the last good keys stay)."),
    describe("gateway_auth_jwks_keys", G, N, &["issuer"], "Keys in the issuer's current key set."),
    describe("gateway_auth_introspection_failures_total", C, N, &["issuer"], "Token introspection calls that failed."),
    describe("gateway_auth_introspection_throttled_total", C, N, &["issuer", "budget"], "Introspection calls not made because a budget was spent."),
    describe("gateway_auth_revocations", G, N, &[], "Entries in the token denylist."),
    describe("gateway_waf_matches_total", C, N, &["rule", "action"], "WAF rule matches; action block answered 403, monitor let the request pass."),
    describe("gateway_waf_bodies_uninspected_total", C, N, &["route"], "Bodies larger than the WAF reads, streamed on with only their prefix inspected."),
    describe("gateway_ratelimit_rejected_total", C, N, &["route", "policy"], "Requests refused 429 by an L7 rate limit."),
    describe("gateway_quota_exhausted_total", C, N, &["route", "quota"], "Requests refused because a quota was spent."),
    describe("gateway_abuse_signals_total", C, N, &["signal"], "Abuse signals charged to a client (auth failures, WAF hits, rate-limit hits, ...)."),
    describe("gateway_abuse_signals_ignored_total", C, N, &["signal", "reason"], "Abuse signals not charged (a source that did not prove its address)."),
    describe("gateway_abuse_blocks_total", C, N, &["applied"], "Clients the abuse loop blocked; applied: whether the block reached the kernel map."),
    describe("gateway_abuse_not_blocked_total", C, N, &["reason"], "Blocks the abuse loop decided but did not make (exempt_overlap: an allowlisted range)."),
    describe("gateway_abuse_untracked_total", C, N, &[], "Signals dropped because the tracker was full."),
    describe("gateway_xdp_packets_total", C, N, &["reason", "verdict"], "Packets the XDP program judged, by verdict (drop, pass, monitor) and reason."),
    describe("gateway_xdp_bytes_total", C, B, &["reason", "verdict"], "Bytes of the packets the XDP program judged."),
    describe("gateway_xdp_map_entries", G, N, &["map"], "Entries in a kernel map."),
    describe("gateway_xdp_map_capacity", G, N, &["map"], "Capacity of a kernel map."),
];

/// The process metrics `metrics-process` exports on Linux (it describes them).
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// The `process_*` metrics, collected from /proc on every scrape.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Publishes every description (the recorder must exist).
fn describe_all() {
    for d in DESCRIPTIONS {
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
    PROCESS.describe();
}

/// Latency buckets in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The maps whose fill is exported.
const FILLED_MAPS: &[&str] = &[
    map_names::BLOCKLIST_V4,
    map_names::BLOCKLIST_V6,
    map_names::CIDR_V4,
    map_names::CIDR_V6,
    map_names::RATE_LIMIT_V4,
    map_names::RATE_LIMIT_V6,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. A process that
/// already has another global recorder (a test harness) gets a detached one,
/// so rendering still works.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        };
        let handle = builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle());
        describe_all();
        metrics::gauge!(
            "gateway_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("GATEWAY_COMMIT"),
        )
        .set(1.0);
        // The recorder keeps every histogram sample until it folds them into
        // the buckets, which it does only at a scrape or at upkeep: without
        // upkeep, memory grows with every request while nobody scrapes.
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = started {
            tracing::error!(%err, "no metrics upkeep thread; histograms grow until /metrics is scraped");
        }
        handle
    })
}

/// The per-request metrics of one route, registered once when the route is
/// built: registering a labelled metric allocates its label strings and hashes
/// its key, which on every request cost more than the update itself.
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    /// The upstream's latency and retries; `None` for requests no route took.
    upstream: Option<(Histogram, Counter)>,
    /// `gateway_requests_total` by listener and status, registered on first
    /// use (a bounded set: listeners from the config, status codes).
    requests: RwLock<Vec<(Arc<str>, u16, Counter)>>,
}

/// The metrics of requests that matched no route (`route="none"`).
static NO_ROUTE: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("none", None));

impl RouteMetrics {
    /// The handles of route `route`, forwarding to the pool `upstream`.
    pub fn new(route: &str, upstream: Option<&str>) -> Self {
        // Handles taken before the recorder exists would record nowhere.
        handle();
        let label = || route.to_owned();
        Self {
            duration: metrics::histogram!("gateway_request_duration_seconds", "route" => label()),
            bytes_in: metrics::counter!("gateway_request_bytes_total", "route" => label()),
            bytes_out: metrics::counter!("gateway_response_bytes_total", "route" => label()),
            upstream: upstream.map(|upstream| {
                (
                    metrics::histogram!(
                        "gateway_upstream_duration_seconds",
                        "route" => label(),
                        "upstream" => upstream.to_owned(),
                    ),
                    metrics::counter!(
                        "gateway_upstream_retries_total",
                        "upstream" => upstream.to_owned()
                    ),
                )
            }),
            route: label(),
            requests: RwLock::new(Vec::new()),
        }
    }

    fn requests(&self, listener: &Arc<str>, status: u16) -> Counter {
        let find = |list: &[(Arc<str>, u16, Counter)]| {
            list.iter()
                .find(|(l, s, _)| *s == status && l == listener)
                .map(|(_, _, counter)| counter.clone())
        };
        if let Some(counter) = find(&self.requests.read().unwrap_or_else(PoisonError::into_inner)) {
            return counter;
        }
        let mut list = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = find(&list) {
            return counter;
        }
        let counter = metrics::counter!(
            "gateway_requests_total",
            "listener" => listener.to_string(),
            "route" => self.route.clone(),
            "status" => status.to_string(),
        );
        list.push((listener.clone(), status, counter.clone()));
        counter
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// One finished request, as [`record_request`] needs it.
pub struct RequestRecord<'a> {
    pub listener: &'a Arc<str>,
    /// The matched route's metrics; `None` when no route matched.
    pub route: Option<&'a RouteMetrics>,
    pub status: u16,
    /// The gateway's error code when it answered itself (`no_route`, …).
    pub error_code: Option<&'static str>,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    pub retries: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Records one request: called once, from the request's outcome.
pub fn record_request(record: &RequestRecord<'_>) {
    let route = record.route.unwrap_or(&NO_ROUTE);
    route.requests(record.listener, record.status).increment(1);
    route.duration.record(record.latency.as_secs_f64());
    route.bytes_in.increment(record.bytes_in);
    route.bytes_out.increment(record.bytes_out);
    if let Some(code) = record.error_code {
        metrics::counter!(
            "gateway_request_errors_total",
            "route" => route.route.clone(),
            "code" => code,
        )
        .increment(1);
    }
    if let Some((upstream_duration, retries)) = &route.upstream {
        if let Some(latency) = record.upstream_latency {
            upstream_duration.record(latency.as_secs_f64());
        }
        // Recorded at zero too, so the series exists before the first retry.
        retries.increment(u64::from(record.retries));
    }
}

/// Sets the pool gauges from the pools as they are now.
pub fn record_upstreams(upstreams: &Upstreams) {
    for pool in upstreams.iter() {
        let endpoints = pool.endpoints();
        let mut healthy = 0;
        for endpoint in endpoints.iter() {
            let up = endpoint.is_healthy();
            healthy += usize::from(up);
            let labels = [
                ("upstream", pool.name.clone()),
                ("endpoint", endpoint.addr.to_string()),
            ];
            metrics::gauge!("gateway_upstream_endpoint_healthy", &labels)
                .set(f64::from(u8::from(up)));
            metrics::gauge!("gateway_upstream_endpoint_in_flight", &labels)
                .set(endpoint.in_flight() as f64);
            metrics::gauge!("gateway_upstream_endpoint_ejected", &labels)
                .set(f64::from(u8::from(endpoint.is_ejected())));
        }
        let name = pool.name.clone();
        metrics::gauge!("gateway_upstream_endpoints", "upstream" => name.clone())
            .set(endpoints.len() as f64);
        metrics::gauge!("gateway_upstream_healthy_endpoints", "upstream" => name.clone())
            .set(healthy as f64);
        let breaker = pool.breaker();
        metrics::gauge!("gateway_upstream_breaker_open", "upstream" => name.clone())
            .set(f64::from(u8::from(breaker.is_open())));
        metrics::gauge!("gateway_upstream_breaker_in_flight", "upstream" => name.clone())
            .set(breaker.in_flight() as f64);
        metrics::gauge!("gateway_upstream_breaker_pending", "upstream" => name.clone())
            .set(breaker.pending() as f64);
        metrics::gauge!("gateway_upstream_circuit_open", "upstream" => name)
            .set(f64::from(u8::from(pool.circuit().is_open(Instant::now()))));
    }
}

/// Reads the process's CPU time, memory and descriptors from /proc.
pub fn record_process() {
    PROCESS.collect();
}

/// Records the outcome of a configuration load (at start and on SIGHUP).
pub fn record_reload(applied: bool) {
    metrics::gauge!("gateway_reload_last_success").set(f64::from(u8::from(applied)));
    metrics::gauge!("gateway_reload_last_timestamp_seconds").set(unix_now());
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sets the expiry gauges of every certificate `config` uses: the listeners'
/// and each pool's client certificate.
pub fn record_certificates(config: &Config) {
    for listener in &config.listeners {
        record_listener_certificates(listener);
    }
    for (name, upstream) in &config.upstreams {
        record_certificate("upstream", name, &upstream.client_cert);
    }
}

/// Sets the expiry gauges of one listener's certificates (after they were
/// loaded, at start, reload, or when their files changed).
pub fn record_listener_certificates(listener: &ListenerConfig) {
    for certificate in &listener.certificates {
        record_certificate("listener", &listener.name, &certificate.cert);
    }
}

/// The leaf's notAfter as a gauge. A file that cannot be read or parsed
/// here was already refused (or accepted) by the loader; it is only logged.
fn record_certificate(role: &'static str, name: &str, path: &Path) {
    match certificate_expiry(path) {
        Ok((not_after, subject)) => metrics::gauge!(
            "gateway_certificate_expiry_seconds",
            "role" => role,
            "name" => name.to_owned(),
            "path" => path.display().to_string(),
            "subject" => subject,
        )
        .set(not_after as f64),
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "no expiry metric for this certificate")
        }
    }
}

/// The leaf certificate's notAfter (Unix seconds) and subject.
pub fn certificate_expiry(path: &Path) -> Result<(i64, String), String> {
    let chain = crate::tls::load_certs(path).map_err(|err| err.to_string())?;
    let leaf = chain.first().ok_or("no certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|err| format!("not X.509: {err}"))?;
    Ok((
        cert.validity().not_after.timestamp(),
        cert.subject().to_string(),
    ))
}

/// Copies the XDP verdict counters (summed over CPUs) and the map fill.
pub fn record_xdp(maps: &KernelMaps) -> Result<(), XdpError> {
    for (reason, counter) in Reason::ALL.iter().zip(maps.counters()?) {
        let name = reason.name();
        // `drop`, `pass` or `monitor`, so one label picks every drop.
        let verdict = name.split('_').next().unwrap_or(name);
        let labels = [("reason", name), ("verdict", verdict)];
        metrics::counter!("gateway_xdp_packets_total", &labels).absolute(counter.packets);
        metrics::counter!("gateway_xdp_bytes_total", &labels).absolute(counter.bytes);
    }
    for &name in FILLED_MAPS {
        if let Some(entries) = maps.entry_count(name)? {
            metrics::gauge!("gateway_xdp_map_entries", "map" => name).set(entries as f64);
        }
        metrics::gauge!("gateway_xdp_map_capacity", "map" => name)
            .set(f64::from(maps.capacity(name)?));
    }
    Ok(())
}

/// A metric's samples by their label sets.
pub type Series = BTreeMap<Vec<(String, String)>, f64>;

/// The samples of a Prometheus text exposition, by name and label set.
pub fn parse_text(text: &str) -> BTreeMap<String, Series> {
    let mut metrics: BTreeMap<String, Series> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.trim_end_matches('}')
                    .split("\",")
                    .filter_map(|pair| {
                        let (key, value) = pair.split_once("=\"")?;
                        Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                    })
                    .collect(),
            ),
            None => (series, Vec::new()),
        };
        metrics
            .entry(name.to_owned())
            .or_default()
            .insert(labels, value);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_the_ones_listed() {
        let handle = handle();
        record_process();
        let text = handle.render();
        for name in PROCESS_METRICS {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut names: Vec<&str> = DESCRIPTIONS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTIONS.len(), "a metric described twice");
        for d in DESCRIPTIONS {
            assert!(d.name.starts_with("gateway_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            assert!(!d.help.is_empty(), "{}", d.name);
        }
    }

    /// The metric names in a PromQL expression (identifiers before `{`, `[`,
    /// `)` or an operator; label names and functions are not metrics).
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find(|c: char| c.is_ascii_lowercase()) {
            let word: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + word.len()..];
            if word.starts_with("gateway_") || word.starts_with("process_") {
                names.push(word);
            }
        }
        names
    }

    #[test]
    fn the_dashboard_queries_exported_metrics_through_its_datasource_input() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/gateway.json"
        );
        let text = std::fs::read_to_string(path).expect("reading the Grafana dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let input = &dashboard["__inputs"][0];
        assert_eq!(input["name"], "DS_PROMETHEUS");
        assert_eq!(input["pluginId"], "prometheus");
        let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
        let known = |name: &str| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| {
                    DESCRIPTIONS
                        .iter()
                        .any(|d| d.name == *base && d.kind == Kind::Histogram)
                })
                .unwrap_or(name);
            DESCRIPTIONS.iter().any(|d| d.name == family) || PROCESS_METRICS.contains(&family)
        };
        let mut queried = Vec::new();
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let title = &panel["title"];
            assert_eq!(panel["datasource"], datasource, "panel {title}");
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {title} queries nothing");
            for target in targets {
                assert_eq!(target["datasource"], datasource, "panel {title}");
                let expr = target["expr"].as_str().expect("expr");
                let names = metric_names(expr);
                assert!(!names.is_empty(), "panel {title}: no metric in {expr}");
                for name in names {
                    assert!(
                        known(&name),
                        "panel {title} queries {name}, which the gateway does not export"
                    );
                    queried.push(name);
                }
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
        {
            if let Some(source) = variable.get("datasource") {
                assert_eq!(*source, datasource, "variable {}", variable["name"]);
            }
        }
        for needed in [
            "gateway_auth_requests_total",
            "gateway_waf_matches_total",
            "gateway_abuse_blocks_total",
            "gateway_certificate_expiry_seconds",
        ] {
            assert!(
                queried.iter().any(|q| q == needed),
                "no panel shows {needed}"
            );
        }
    }
}
