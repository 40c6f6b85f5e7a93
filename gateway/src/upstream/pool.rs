//! One named pool of endpoints: which endpoint gets a request (health, outlier
//! ejection, load balancing), how many requests it may hold (circuit breaker),
//! and when a failed attempt is tried again (retry policy and budget).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    Request, Response, StatusCode, Uri,
    request::Parts,
    uri::{Authority, Scheme},
};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tracing::{debug, warn};

use super::{
    BoxBody, UpstreamError,
    balance::{Balancer, Candidate, endpoint_id},
    breaker::Breaker,
    client_body_error,
    outlier::Outlier,
    retry::{RetryBudget, is_idempotent},
    tls,
};
use crate::{config::UpstreamConfig, tls::TlsFileError};

pub(super) type HttpsClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// One address of the pool and what the gateway knows about it.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, formatted once rather than per request.
    authority: Authority,
    id: u64,
    healthy: AtomicBool,
    /// Consecutive active health-check results: (successes, failures).
    streak: Mutex<(u32, u32)>,
    in_flight: AtomicUsize,
    outlier: Outlier,
}

impl Endpoint {
    #[expect(
        clippy::expect_used,
        reason = "a socket address always formats as a valid URI authority"
    )]
    fn new(addr: SocketAddr, config: &UpstreamConfig) -> Self {
        Self {
            addr,
            authority: Authority::from_maybe_shared(Bytes::from(addr.to_string()))
                .expect("a socket address is a valid authority"),
            id: endpoint_id(&addr),
            healthy: AtomicBool::new(true),
            streak: Mutex::new((0, 0)),
            in_flight: AtomicUsize::new(0),
            outlier: Outlier::new(config.outlier),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests this endpoint is serving now (for metrics).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Applies one active health-check result against the thresholds; returns
    /// the new state when it changed.
    pub(super) fn record_check(&self, ok: bool, config: &UpstreamConfig) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(PoisonError::into_inner);
        *streak = if ok {
            (streak.0.saturating_add(1), 0)
        } else {
            (0, streak.1.saturating_add(1))
        };
        let healthy = self.is_healthy();
        let flip = if healthy {
            streak.1 >= config.health.unhealthy_threshold
        } else {
            streak.0 >= config.health.healthy_threshold
        };
        flip.then(|| {
            self.healthy.store(!healthy, Ordering::Relaxed);
            !healthy
        })
    }

    /// The first check decides alone, so a dead endpoint never gets traffic
    /// before the listener opens.
    pub(super) fn set_initial_health(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// A request body that can be sent again (buffered) or only once (streamed).
pub enum RequestBody {
    Replayable(Bytes),
    /// `None` once sent.
    Streaming(Option<BoxBody>),
}

impl RequestBody {
    fn take(&mut self) -> Option<BoxBody> {
        match self {
            Self::Replayable(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            Self::Streaming(body) => body.take(),
        }
    }
}

/// The answer of the pool, with where it came from.
pub struct Forwarded {
    pub response: Response<Incoming>,
    pub endpoint: SocketAddr,
    pub retries: u32,
}

pub struct Pool {
    pub name: String,
    pub(super) config: UpstreamConfig,
    pub(super) tls_fingerprint: Vec<Option<(SystemTime, u64)>>,
    pub(super) client: HttpsClient,
    pub(super) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    breaker: Breaker,
    budget: RetryBudget,
}

impl Pool {
    /// Builds the pool with the endpoints that are addresses; names are
    /// resolved by the caller ([`super::resolve`]).
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        addrs: &[SocketAddr],
    ) -> Result<Self, TlsFileError> {
        let connector = tls::connector(config)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .set_host(false)
            .build(connector);
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            tls_fingerprint: tls::fingerprint(config),
            client,
            endpoints: ArcSwap::from_pointee(
                addrs
                    .iter()
                    .map(|&a| Arc::new(Endpoint::new(a, config)))
                    .collect(),
            ),
            balancer: Balancer::new(config.balance),
            breaker: Breaker::new(config.breaker),
            budget: RetryBudget::new(&config.retry),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// The pool's circuit breaker, read-only for metrics.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Replaces the endpoint set (after DNS answered differently), keeping the
    /// state of addresses that stay.
    pub(super) fn set_addrs(&self, addrs: &[SocketAddr]) {
        let old = self.endpoints.load();
        let next = addrs
            .iter()
            .map(|addr| {
                old.iter()
                    .find(|e| e.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(*addr, &self.config)))
            })
            .collect();
        self.endpoints.store(Arc::new(next));
    }

    /// Endpoints that may take a request now: healthy and not ejected; if every
    /// healthy one is ejected, ejection is ignored rather than failing the pool.
    fn choose(&self, key: Option<u64>, tried: &[u64]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let now = Instant::now();
        let candidates = |skip_ejected: bool| -> Vec<Candidate> {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.is_healthy()
                        && !tried.contains(&e.id)
                        && !(skip_ejected && e.outlier.is_ejected(now))
                })
                .map(|(index, e)| Candidate {
                    index,
                    id: e.id,
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                })
                .collect()
        };
        let mut list = candidates(true);
        if list.is_empty() {
            list = candidates(false);
        }
        let index = self.balancer.pick(&list, key)?;
        endpoints.get(index).cloned()
    }

    /// Sends `parts` + `body` to the pool: at most one slot in the breaker,
    /// retries where safe, each on an endpoint not tried before.
    pub async fn send(
        &self,
        parts: &Parts,
        path_and_query: &str,
        mut body: RequestBody,
        key: Option<u64>,
    ) -> Result<Forwarded, UpstreamError> {
        let _permit = self
            .breaker
            .acquire()
            .await
            .map_err(UpstreamError::BreakerOpen)?;
        self.budget.record_request(Instant::now());
        let idempotent = is_idempotent(&parts.method);
        let mut tried = Vec::new();
        let mut retries = 0;
        // The outcome of the last attempt that was worth retrying: it is the
        // answer when no untried endpoint is left.
        let mut last: Option<Result<Forwarded, UpstreamError>> = None;
        loop {
            let Some(endpoint) = self.choose(key, &tried) else {
                return last.unwrap_or_else(|| {
                    Err(UpstreamError::NoHealthyEndpoint {
                        pool: self.name.clone(),
                        retry_after: self.config.health.interval,
                    })
                });
            };
            tried.push(endpoint.id);
            let Some(attempt_body) = body.take() else {
                return Err(UpstreamError::Internal(
                    "request body already sent".to_owned(),
                ));
            };
            let mut request = Request::from_parts(parts.clone(), attempt_body);
            *request.uri_mut() = endpoint
                .uri(path_and_query)
                .map_err(|err| UpstreamError::Internal(format!("upstream URI: {err}")))?;

            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = self.client.request(request).await;
            endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);

            let replayable = matches!(body, RequestBody::Replayable(_));
            let may_retry = |safe: bool| {
                safe && replayable
                    && retries < self.config.retry.attempts
                    && self.budget.try_retry(Instant::now())
            };
            match result {
                Ok(response) => {
                    let status = response.status();
                    if status.is_server_error() {
                        self.record_failure(&endpoint, status.as_str());
                    } else {
                        endpoint.outlier.record_success();
                    }
                    let forwarded = Forwarded {
                        response,
                        endpoint: endpoint.addr,
                        retries,
                    };
                    if is_retriable_status(status) && may_retry(idempotent) {
                        debug!(pool = %self.name, endpoint = %endpoint.addr, %status, "retrying on another endpoint");
                        retries += 1;
                        last = Some(Ok(forwarded));
                        continue;
                    }
                    return Ok(forwarded);
                }
                Err(err) => {
                    if let Some(client) = client_body_error(&err) {
                        return Err(UpstreamError::ClientBody(client));
                    }
                    let connect = err.is_connect();
                    self.record_failure(&endpoint, if connect { "connect" } else { "request" });
                    let reason = error_chain(&err);
                    let failure = if connect {
                        UpstreamError::Connect {
                            endpoint: endpoint.addr,
                            reason,
                        }
                    } else {
                        UpstreamError::Request {
                            endpoint: endpoint.addr,
                            reason,
                        }
                    };
                    if may_retry(connect || idempotent) {
                        debug!(pool = %self.name, error = %failure, "retrying on another endpoint");
                        retries += 1;
                        last = Some(Err(failure));
                        continue;
                    }
                    return Err(failure);
                }
            }
        }
    }

    fn record_failure(&self, endpoint: &Endpoint, what: &str) {
        if let Some(ejected_for) = endpoint.outlier.record_failure(Instant::now()) {
            warn!(
                pool = %self.name,
                endpoint = %endpoint.addr,
                failure = what,
                ejected_for = %humantime::format_duration(ejected_for),
                "endpoint ejected after consecutive failures"
            );
        }
    }

    /// One GET of the health path with the pool's own client (same mutual TLS).
    pub(super) async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        let uri = endpoint
            .uri(&self.config.health.path)
            .map_err(|err| err.to_string())?;
        let request = Request::get(uri)
            .header(http::header::HOST, &self.config.server_name)
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .map_err(|err| err.to_string())?;
        let response =
            tokio::time::timeout(self.config.health.timeout, self.client.request(request))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|err| error_chain(&err))?;
        let status = response.status();
        // Drain the small body so the connection goes back to the pool.
        let _ =
            tokio::time::timeout(self.config.health.timeout, response.into_body().collect()).await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

/// Responses that say "this endpoint, not this request": worth another endpoint
/// for idempotent requests.
fn is_retriable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The error and its causes on one line ("connect: tls: invalid certificate: …").
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
