//! One named pool of endpoints: which endpoint gets a request (health, outlier
//! ejection, load balancing), how many requests it may hold and whether it takes
//! any at all (breaker, circuit), when a failed attempt is tried again (retry
//! policy and budget), and how long each attempt may take.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    Request, Response, StatusCode, Uri,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use smallvec::SmallVec;
use tracing::{debug, warn};

use super::{
    BodyFault, BoxBody, BoxError, ClientBodyError, UpstreamError,
    balance::{Balancer, Candidate, endpoint_id},
    breaker::Breaker,
    circuit::Circuit,
    conn::{Busy, Connections, SendError},
    outlier::Outlier,
    retry::{RetryBudget, is_idempotent},
    tls::{self, TimedConnector},
};
use crate::{config::UpstreamConfig, tls::TlsFileError};

/// How long an answer's first body bytes may lag behind its head and still be
/// read before the head goes to the client. A body that breaks within it (an
/// endpoint that closes right after the head) becomes a 502, or a retry, instead
/// of a bare disconnect; a body that starts later (a stream) is not held up.
const FIRST_FRAME_GRACE: Duration = Duration::from_millis(200);

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
    connections: Connections,
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
            connections: Connections::new(config.pool_idle_timeout),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has taken it out of rotation now.
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected(Instant::now())
    }

    /// Closes the connections kept idle past `pool_idle_timeout`.
    pub(super) fn reap_idle(&self) {
        self.connections.reap();
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

    /// A real request failed here (5xx, connect, reset, timeout, broken body).
    fn record_failure(&self, pool: &str, what: &str) {
        if let Some(ejected_for) = self.outlier.record_failure(Instant::now()) {
            warn!(
                pool,
                endpoint = %self.addr,
                failure = what,
                ejected_for = %humantime::format_duration(ejected_for),
                "endpoint ejected after consecutive failures"
            );
        }
    }

    fn uri<P>(&self, path_and_query: P) -> Result<Uri, http::Error>
    where
        PathAndQuery: TryFrom<P>,
        <PathAndQuery as TryFrom<P>>::Error: Into<http::Error>,
    {
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
    Streaming {
        /// `None` once sent.
        body: Option<BoxBody>,
        /// Set by the body if the client fails it.
        fault: BodyFault,
    },
}

impl RequestBody {
    /// How the client failed its body, if it did.
    fn fault(&self) -> Option<ClientBodyError> {
        match self {
            Self::Replayable(_) => None,
            Self::Streaming { fault, .. } => fault.get(),
        }
    }

    fn take(&mut self) -> Option<BoxBody> {
        match self {
            Self::Replayable(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            Self::Streaming { body, .. } => body.take(),
        }
    }
}

/// The answer of the pool, with where it came from.
pub struct Forwarded {
    pub response: Response<UpstreamBody>,
    pub endpoint: SocketAddr,
    pub retries: u32,
}

pub struct Pool {
    pub name: String,
    /// `name` again, shared with the answers' bodies for their failure reports.
    label: Arc<str>,
    pub(super) config: UpstreamConfig,
    pub(super) tls_fingerprint: Vec<Option<(SystemTime, u64)>>,
    connector: TimedConnector,
    pub(super) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    breaker: Breaker,
    circuit: Circuit,
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
        Ok(Self {
            name: name.to_owned(),
            label: name.into(),
            config: config.clone(),
            tls_fingerprint: tls::fingerprint(config),
            connector,
            endpoints: ArcSwap::from_pointee(
                addrs
                    .iter()
                    .map(|&a| Arc::new(Endpoint::new(a, config)))
                    .collect(),
            ),
            balancer: Balancer::new(config.balance),
            breaker: Breaker::new(config.breaker),
            circuit: Circuit::new(config.breaker),
            budget: RetryBudget::new(&config.retry),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// The pool's concurrency limit, read-only for metrics.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The pool's circuit on errors, read-only for metrics.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
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

    /// An endpoint for the next attempt: healthy, not ejected (unless too few
    /// are left and panic routing is on), and not tried before — or, for a retry
    /// when every candidate was tried (a pool of one), tried again.
    fn choose(&self, key: Option<u64>, tried: &[u64]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let now = Instant::now();
        let healthy = endpoints.iter().filter(|e| e.is_healthy()).count();
        let available = endpoints
            .iter()
            .filter(|e| e.is_healthy() && !e.outlier.is_ejected(now))
            .count();
        let threshold = self.config.outlier.panic_threshold_percent as usize;
        let panic = available * 100 < healthy * threshold;
        // On the stack for pools of up to 16 endpoints.
        let candidates = |skip_tried: bool| -> SmallVec<[Candidate; 16]> {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.is_healthy()
                        && !(skip_tried && tried.contains(&e.id))
                        && (panic || !e.outlier.is_ejected(now))
                })
                .map(|(index, e)| Candidate {
                    index,
                    id: e.id,
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                })
                .collect()
        };
        let mut list = candidates(true);
        if list.is_empty() && !tried.is_empty() {
            list = candidates(false);
        }
        let index = self.balancer.pick(&list, key)?;
        endpoints.get(index).cloned()
    }

    /// Sends `parts` + `body` to the pool: past the circuit and one slot of the
    /// breaker, retries where safe (on an endpoint not tried before while there
    /// is one), each attempt within `retry.per_try_timeout`. `path_and_query`
    /// is parsed by the caller (shared by every attempt); a value that did not
    /// parse fails the request here, as any URI the pool cannot build.
    pub async fn send(
        &self,
        parts: &Parts,
        path_and_query: &Result<PathAndQuery, String>,
        mut body: RequestBody,
        key: Option<u64>,
    ) -> Result<Forwarded, UpstreamError> {
        let ticket = self.circuit.admit(Instant::now())?;
        let _permit = self
            .breaker
            .acquire()
            .await
            .map_err(UpstreamError::BreakerOpen)?;
        self.budget.record_request(Instant::now());
        let idempotent = is_idempotent(&parts.method);
        let mut tried: SmallVec<[u64; 4]> = SmallVec::new();
        let mut retries = 0;
        // The outcome of the last attempt that was worth retrying: it is the
        // answer when no endpoint is left.
        let mut last: Option<Result<Forwarded, UpstreamError>> = None;
        let result = loop {
            let Some(endpoint) = self.choose(key, &tried) else {
                break last.unwrap_or_else(|| {
                    Err(UpstreamError::NoHealthyEndpoint {
                        pool: self.name.clone(),
                        retry_after: self.config.health.interval,
                    })
                });
            };
            if retries > 0 {
                tokio::time::sleep(self.backoff(retries)).await;
            }
            tried.push(endpoint.id);
            let Some(attempt_body) = body.take() else {
                break Err(UpstreamError::Internal(
                    "request body already sent".to_owned(),
                ));
            };
            let mut request = Request::from_parts(parts.clone(), attempt_body);
            let uri = match path_and_query {
                Ok(path_and_query) => endpoint
                    .uri(path_and_query.clone())
                    .map_err(|err| err.to_string()),
                Err(err) => Err(err.clone()),
            };
            match uri {
                Ok(uri) => *request.uri_mut() = uri,
                Err(err) => break Err(UpstreamError::Internal(format!("upstream URI: {err}"))),
            }

            let attempt = self.attempt(&endpoint, request);
            let result = match self.config.retry.per_try_timeout {
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or(Err(Attempt::TimedOut(limit))),
                None => attempt.await,
            };

            let replayable = matches!(body, RequestBody::Replayable(_));
            let may_retry = |safe: bool| {
                safe && replayable
                    && retries < self.config.retry.attempts
                    && self.budget.try_retry(Instant::now())
            };
            // Whatever the endpoint said, a request whose body the client
            // broke is the client's: nothing is counted against the endpoint.
            if let Some(client) = body.fault() {
                break Err(UpstreamError::ClientBody(client));
            }
            let (failure, nothing_sent) = match result {
                Ok(response) => {
                    let status = response.status();
                    if status.is_server_error() {
                        endpoint.record_failure(&self.name, status.as_str());
                    } else {
                        endpoint.outlier.record_success();
                    }
                    let forwarded = Forwarded {
                        response,
                        endpoint: endpoint.addr,
                        retries,
                    };
                    if is_retriable_status(status) && may_retry(idempotent) {
                        debug!(pool = %self.name, endpoint = %endpoint.addr, %status, "retrying");
                        retries += 1;
                        last = Some(Ok(forwarded));
                        continue;
                    }
                    break Ok(forwarded);
                }
                Err(Attempt::Client(err)) => {
                    let connect = err.is_connect();
                    endpoint
                        .record_failure(&self.name, if connect { "connect" } else { "request" });
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
                    // Nothing reached an endpoint that could not be connected to,
                    // so any method may go elsewhere.
                    (failure, connect)
                }
                Err(Attempt::BrokenBody(err)) => {
                    endpoint.record_failure(&self.name, "response body");
                    let failure = UpstreamError::Request {
                        endpoint: endpoint.addr,
                        reason: format!("the answer's body broke before its first byte: {err}"),
                    };
                    (failure, false)
                }
                Err(Attempt::TimedOut(after)) => {
                    endpoint.record_failure(&self.name, "attempt timeout");
                    let failure = UpstreamError::AttemptTimeout {
                        endpoint: endpoint.addr,
                        after,
                    };
                    (failure, false)
                }
            };
            if may_retry(nothing_sent || idempotent) {
                debug!(pool = %self.name, error = %failure, "retrying");
                retries += 1;
                last = Some(Err(failure));
                continue;
            }
            break Err(failure);
        };
        match &result {
            Ok(forwarded) => ticket.finish(!forwarded.response.status().is_server_error()),
            // The client's fault says nothing about the fleet.
            Err(UpstreamError::ClientBody(_) | UpstreamError::Internal(_)) => drop(ticket),
            Err(_) => ticket.finish(false),
        }
        result
    }

    /// One attempt at `endpoint`: the answer's head and, if it follows within
    /// [`FIRST_FRAME_GRACE`], its first body frame. The endpoint counts the
    /// attempt as in flight until it ends, however it ends (cancelled included).
    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<BoxBody>,
    ) -> Result<Response<UpstreamBody>, Attempt> {
        let _in_flight = InFlight::start(endpoint);
        let (response, busy) = endpoint
            .connections
            .send(&self.connector, request)
            .await
            .map_err(Attempt::Client)?;
        let (parts, mut body) = response.into_parts();
        // `ended`: the body is known to be over (a connection under it can be kept).
        let (first, ended) = if body.is_end_stream() {
            (None, true)
        } else {
            match tokio::time::timeout(FIRST_FRAME_GRACE, body.frame()).await {
                Ok(Some(Ok(frame))) => (Some(frame), false),
                Ok(Some(Err(err))) => return Err(Attempt::BrokenBody(err)),
                Ok(None) => (None, true),
                Err(_) => (None, false),
            }
        };
        Ok(Response::from_parts(
            parts,
            UpstreamBody {
                first,
                rest: body,
                endpoint: Arc::clone(endpoint),
                pool: self.label.clone(),
                relayed: 0,
                busy,
                ended,
            },
        ))
    }

    /// The wait before retry number `retry` (1, 2, …): full jitter up to
    /// `backoff_base × 2^(retry - 1)`, at most `backoff_max`.
    fn backoff(&self, retry: u32) -> Duration {
        let retry_config = &self.config.retry;
        let ceiling = retry_config
            .backoff_base
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(retry_config.backoff_max);
        ceiling.mul_f64(fastrand::f64())
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
        let sent = endpoint.connections.send(&self.connector, request);
        let (response, busy) = tokio::time::timeout(self.config.health.timeout, sent)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|err| error_chain(&err))?;
        let status = response.status();
        // The whole body, within the same timeout: an endpoint whose answers
        // break after the head is not healthy.
        tokio::time::timeout(self.config.health.timeout, response.into_body().collect())
            .await
            .map_err(|_| "body timed out".to_owned())?
            .map_err(|err| format!("body: {}", error_chain(&err)))?;
        if let Some(busy) = busy {
            endpoint.connections.checkin(busy);
        }
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

/// How one attempt failed.
enum Attempt {
    /// No answer: connect, TLS, reset, or the request's own body failed.
    Client(SendError),
    /// The head arrived, then the body failed before its first byte.
    BrokenBody(hyper::Error),
    /// `retry.per_try_timeout` passed.
    TimedOut(Duration),
}

/// Counts one attempt in its endpoint's in-flight number (least-request balancing,
/// the metric) for as long as it lives: completion, error, timeout and a cancelled
/// request (route timeout, client gone) all give the count back.
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn start(endpoint: &'a Endpoint) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body on its way to the client: the frame read ahead (if any),
/// then the rest. A failure while it streams (reset, early close, bad chunk,
/// shorter than its `Content-Length`) counts against the endpoint, is metered as
/// `gateway_upstream_body_errors_total` and logged with the bytes that got
/// through; the error itself makes hyper close the client's HTTP/1.1 connection
/// or reset its HTTP/2 stream, so the client never takes a cut body for whole.
pub struct UpstreamBody {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
    endpoint: Arc<Endpoint>,
    pool: Arc<str>,
    relayed: u64,
    /// The HTTP/1.1 connection this body comes on: kept for the next request if
    /// the body is read to its end, closed with it otherwise.
    busy: Option<Busy>,
    ended: bool,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(busy) = self.busy.take()
            && (self.ended || (self.first.is_none() && self.rest.is_end_stream()))
        {
            self.endpoint.connections.checkin(busy);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match this.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.relayed += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                metrics::counter!("gateway_upstream_body_errors_total", "upstream" => this.pool.to_string())
                    .increment(1);
                warn!(
                    pool = &*this.pool,
                    endpoint = %this.endpoint.addr,
                    bytes_relayed = this.relayed,
                    error = %error_chain(&err),
                    "upstream_body_error: the answer's body broke while streaming to the client"
                );
                this.endpoint.record_failure(&this.pool, "response body");
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(ahead));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint
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
