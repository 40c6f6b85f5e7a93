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

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock},
    time::{Duration, Instant},
};

use gateway_common::consts::{Reason, map_names};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    upstream::Upstreams,
    xdp::{KernelMaps, XdpError},
};

/// Latency buckets in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The maps whose fill is exported.
const FILLED_MAPS: &[&str] = &[
    map_names::BLOCKLIST,
    map_names::CIDR_BLOCKLIST,
    map_names::ALLOWLIST,
    map_names::RATE_LIMIT,
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
