//! The request path, top to bottom. [`handle`] is the one place that shows the
//! order of the stages; each stage is a small function that either lets the
//! request on or returns the [`ProxyError`] that answers it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header, request::Parts, uri::PathAndQuery};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tracing::info;

use super::{
    Snapshot, authority,
    body::{ClientBody, Hold, Pace, Prepared},
    client::{self, ClientAddr},
    connections::Connections,
    error::{self, ProxyError},
    framing,
    headers::{self, REQUEST_ID},
    normalize::normalize_path,
    trace::TraceContext,
};
use crate::{
    abuse::{Evidence, Signal},
    auth::Verified,
    config::{Balance, ListenerConfig, Oversize},
    observe,
    policy::{
        quota::Remaining,
        routes::{Route, RouteError},
        waf::{self, Head, RouteWafPolicy},
    },
    upstream::{BoxBody, Forwarded, RequestBody, UpstreamError, balance::hash_key},
};

/// What the connection knows about its client, fixed for its lifetime.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub tls_version: &'static str,
    pub sni: Option<Arc<str>>,
    /// Where the client's requests in flight are counted.
    pub connections: Arc<Connections>,
}

/// What one request did, for the access log.
#[derive(Default)]
struct Outcome<'a> {
    /// The access log is on: copy what only its line needs.
    logging: bool,
    /// The normalized path, once it is known to be valid (only when logging).
    path: Option<String>,
    /// The matched route (its upstream is the pool the request went to).
    route: Option<&'a Route>,
    endpoint: Option<SocketAddr>,
    retries: u32,
    upstream_latency: Option<Duration>,
    error: Option<String>,
    /// The error's stable code (`no_route`, …) when the gateway answered itself.
    code: Option<&'static str>,
    /// The verified caller, once authentication accepted a token (shared with
    /// the token cache, not copied).
    verified: Option<Arc<Verified>>,
    /// The route's tightest quota: what the request was charged, or what is
    /// left when it was not (every answer on a quota route says).
    quota: Option<Remaining>,
    /// The client caused the failure: no upstream is named for it.
    client_fault: bool,
}

impl Outcome<'_> {
    /// `allow` when the fleet answered; `deny` when the gateway refused the
    /// request (4xx), `error` when it could not serve it (5xx).
    fn decision(&self, status: u16) -> &'static str {
        match self.code {
            None => "allow",
            Some(_) if status < 500 => "deny",
            Some(_) => "error",
        }
    }
}

/// Serves one request against the configuration that was active when it
/// arrived (a reload never changes a request in flight).
pub async fn handle(
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Response<BoxBody> {
    let started = Instant::now();
    let request_id = headers::request_id(request.headers());
    let trace = TraceContext::from_headers(request.headers());
    let client = client::resolve(
        &snapshot.proxy.trusted_proxies,
        snapshot.proxy.forwarded_headers,
        conn.client.ip(),
        request.headers(),
    );
    let version = request.version();
    // Copied for the access log only when it is on (tracing caches the answer).
    let logged =
        tracing::enabled!(target: "access", tracing::Level::INFO).then(|| Logged::of(&request));
    // Declared sizes (Content-Length): a streamed body of unknown length counts 0.
    let bytes_in = request.body().size_hint().exact().unwrap_or(0);
    let mut outcome = Outcome {
        logging: logged.is_some(),
        ..Outcome::default()
    };

    let mut response = match proxy(
        &snapshot,
        &conn,
        client,
        request,
        &request_id,
        &trace,
        &mut outcome,
    )
    .await
    {
        Ok(response) => response,
        Err(err) => {
            outcome.error = Some(err.to_string());
            outcome.code = Some(err.code());
            if err.is_client_fault() {
                outcome.client_fault = true;
                outcome.endpoint = None;
                outcome.upstream_latency = None;
            }
            report_abuse(&snapshot, client, &err, &outcome, &request_id);
            let mut response = error::respond(&err, &request_id);
            if err.closes_connection() && version < Version::HTTP_2 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    if let Some(quota) = &outcome.quota {
        let headers = response.headers_mut();
        if !headers.contains_key(error::QUOTA_REMAINING) {
            headers.insert(error::QUOTA_REMAINING, HeaderValue::from(quota.remaining));
            headers.insert(error::QUOTA_RESET, HeaderValue::from(quota.reset_secs));
        }
    }
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id.clone());
    let latency = started.elapsed();
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    let route = outcome.route;
    observe::metrics::record_request(&observe::metrics::RequestRecord {
        listener: &conn.listener,
        route: route.map(|r| &*r.metrics),
        status: response.status().as_u16(),
        error_code: outcome.code,
        latency,
        upstream_latency: outcome.upstream_latency,
        retries: outcome.retries,
        bytes_in,
        bytes_out,
    });

    let Some(Logged {
        method,
        host,
        user_agent,
        raw_path,
    }) = logged
    else {
        return response;
    };
    let status = response.status().as_u16();
    let identity = outcome.verified.as_ref().map(|v| &v.identity);
    let (server_address, server_port) = split_host(host.as_deref());
    // Field names follow OpenTelemetry's semantic conventions where they have
    // one (docs/operations.md has the table).
    info!(
        target: "access",
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = trace.trace_id(),
        span_id = trace.span_id(),
        listener = &*conn.listener,
        client.address = %client.ip,
        network.peer.address = %conn.client.ip().to_canonical(),
        network.protocol.version = protocol_version(version),
        tls.protocol.version = conn.tls_version,
        tls.client.server_name = conn.sni.as_deref(),
        http.request.method = %method,
        server.address = server_address,
        server.port = server_port,
        url.path = outcome.path.as_deref().unwrap_or(&raw_path),
        user_agent.original = user_agent.as_deref(),
        http.route = route.map(|r| r.name.as_str()),
        upstream = route
            .filter(|_| !outcome.client_fault)
            .map(|r| r.upstream.as_str()),
        endpoint = outcome.endpoint.map(|e| e.to_string()),
        http.response.status_code = status,
        decision = outcome.decision(status),
        error.type = outcome.code,
        user.id = identity.map(|i| i.subject.as_str()),
        jti_hash = identity.and_then(|i| i.token_id.as_deref()),
        http.request.body.size = bytes_in,
        http.response.body.size = bytes_out,
        retries = outcome.retries,
        latency_ms = latency.as_secs_f64() * 1e3,
        upstream_ms = outcome.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
        error.message = outcome.error.as_deref(),
    );
    response
}

/// What the access line needs from the request that the pipeline consumes.
struct Logged {
    method: http::Method,
    host: Option<String>,
    user_agent: Option<String>,
    raw_path: String,
}

impl Logged {
    fn of(request: &Request<Incoming>) -> Self {
        Self {
            method: request.method().clone(),
            host: request_host(request).map(str::to_owned),
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .map(|ua| String::from_utf8_lossy(ua.as_bytes()).into_owned()),
            raw_path: request.uri().path().to_owned(),
        }
    }
}

/// The one place where a request's outcome becomes an abuse signal: the
/// answer's code says what the client did (see [`Signal::from_code`]).
fn report_abuse(
    snapshot: &Snapshot,
    client: ClientAddr,
    err: &ProxyError,
    outcome: &Outcome<'_>,
    request_id: &HeaderValue,
) {
    let Some(signal) = Signal::from_code(err.code()) else {
        return;
    };
    snapshot.abuse.record(
        client.ip,
        signal,
        Evidence {
            code: Some(err.code().to_owned()),
            route: outcome.route.map(|r| r.name.clone()),
            rule: err.rule_id().map(str::to_owned),
            token_id: outcome
                .verified
                .as_ref()
                .and_then(|v| v.identity.token_id.clone()),
            request_id: request_id.to_str().ok().map(str::to_owned),
            forwarded_by: client.forwarded_by,
            ..Evidence::new(signal)
        },
    );
}

/// The stages in order: a blocked forwarded client, host rules, head limits
/// and protocol anomalies, normalization, routing, authentication, rate
/// limits (keyed on the verified subject or `client`), the WAF on the head,
/// the body (held back until the part the WAF reads has arrived, and the WAF
/// on it), the quota (charged only for a request every check admitted),
/// forwarding.
async fn proxy<'a>(
    snapshot: &'a Snapshot,
    conn: &ConnInfo,
    client: ClientAddr,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &TraceContext,
    outcome: &mut Outcome<'a>,
) -> Result<Response<BoxBody>, ProxyError> {
    check_blocked(snapshot, client)?;
    let listener = snapshot.listener(&conn.listener);
    framing::check_host(request.uri(), request.headers())?;
    let exempt = snapshot
        .proxy
        .trusted_proxies
        .iter()
        .any(|cidr| cidr.contains(conn.client.ip()));
    let limit = listener.limits.max_requests_per_client;
    let _in_flight = conn
        .connections
        .begin_request(conn.client.ip(), limit, exempt)
        .ok_or(ProxyError::ClientBusy { limit })?;
    check_head_limits(&request, listener)?;
    waf::check_protocol(request.headers())?;
    let (mut parts, body) = request.into_parts();
    // Borrowed from the URI when it is already normal (the usual request).
    let path = normalize_path(parts.uri.path())?;
    if outcome.logging {
        outcome.path = Some(path.clone().into_owned());
    }
    let host = host_of(&parts.uri, &parts.headers);
    if listener.checks_sni_host()
        && !host.is_some_and(|host| authority::covers(listener, conn.sni.as_deref(), host))
    {
        return Err(ProxyError::Misdirected);
    }
    let route = snapshot
        .routes
        .find(host, &path, &parts.method, &conn.listener)
        .map_err(|err| match err {
            RouteError::NotFound => ProxyError::NoRoute,
            RouteError::Misdirected => ProxyError::Misdirected,
            RouteError::MethodNotAllowed { allow } => ProxyError::MethodNotAllowed { allow },
        })?;
    outcome.route = Some(route);

    let client_ip = client.ip;
    let verified = match snapshot
        .auth
        .authenticate(&route.auth, &parts.headers, client_ip)
        .await
    {
        Ok(verified) => verified,
        Err(err) => {
            outcome.quota = snapshot
                .quotas
                .peek(&route.name, client_ip, None, &parts.headers);
            return Err(err.into());
        }
    };
    let identity = verified.as_ref().map(|v| &v.identity);
    outcome.verified = verified.clone();
    outcome.quota = snapshot
        .quotas
        .peek(&route.name, client_ip, identity, &parts.headers);
    snapshot
        .limits
        .check(&route.name, client_ip, identity, &parts.headers)
        .await
        .map_err(ProxyError::RateLimited)?;
    let waf = snapshot.waf.route(&route.name);
    if let Some(waf) = waf {
        waf.check_head(&route.name, &waf_head(&parts, &path))?;
    }
    let pool = snapshot
        .upstreams
        .get(&route.upstream)
        .ok_or_else(|| UpstreamError::Internal(format!("route {} names no pool", route.name)))?;
    let retry_buffer = pool.config().retry.buffer_bytes;
    let hold = match waf {
        Some(waf) => Hold {
            bytes: retry_buffer.max(waf.inspect_body_bytes()),
            refuse_over: (waf.oversize() == Oversize::Refuse || waf.needs_whole_body())
                .then(|| waf.inspect_body_bytes()),
        },
        None => Hold {
            bytes: retry_buffer,
            refuse_over: None,
        },
    };
    let prepared = ClientBody::prepare(
        body,
        route
            .max_body_bytes
            .unwrap_or(listener.limits.max_body_bytes),
        listener.timeouts.body_read,
        Pace {
            min_rate: route.min_body_rate.unwrap_or(listener.limits.min_body_rate),
            window: listener.timeouts.body_rate_window,
            grace: listener.timeouts.body_rate_grace,
        },
        hold,
    )
    .await?;
    if let Some(waf) = waf {
        inspect_body(waf, &route.name, &parts, &path, &prepared)?;
    }
    let charged = snapshot
        .quotas
        .check(&route.name, client_ip, identity, &parts.headers)
        .await?;
    if charged.is_some() {
        outcome.quota = charged;
    }
    snapshot
        .auth
        .forward(&route.auth, verified.as_deref(), &mut parts.headers);

    upstream_request(
        snapshot,
        conn,
        &mut parts.headers,
        &parts.uri,
        route,
        request_id,
        trace,
    );
    parts.version = Version::HTTP_11;
    let upstream_parts = &parts;
    let path_and_query = upstream_path_and_query(route, &path, &upstream_parts.uri);
    let key = affinity_key(
        pool.config().balance,
        pool.config().hash_header.as_deref(),
        conn,
        upstream_parts,
    );

    let fault = match &prepared.body {
        RequestBody::Streaming { fault, .. } => Some(fault.clone()),
        RequestBody::Replayable(_) => None,
    };
    let sent = Instant::now();
    let forwarded = tokio::time::timeout(
        route.timeout,
        pool.send(upstream_parts, &path_and_query, prepared.body, key),
    )
    .await
    .map_err(|_| match fault.as_ref().and_then(|f| f.get()) {
        Some(client) => ProxyError::from(client),
        None => ProxyError::Timeout(route.timeout),
    });
    outcome.upstream_latency = Some(sent.elapsed());
    let forwarded = forwarded.and_then(|result| {
        result.map_err(|err| match err {
            UpstreamError::ClientBody(client) => client.into(),
            other => ProxyError::Upstream(other),
        })
    });
    let Forwarded {
        response,
        endpoint,
        retries,
    } = match forwarded {
        Ok(forwarded) => forwarded,
        Err(err) => {
            // Not forwarded, or broken by the client: not charged.
            let unserved = err.is_client_fault()
                || matches!(
                    err,
                    ProxyError::Upstream(
                        UpstreamError::NoHealthyEndpoint { .. }
                            | UpstreamError::BreakerOpen(_)
                            | UpstreamError::Internal(_)
                    )
                );
            if unserved && let Some(quota) = &mut outcome.quota {
                snapshot.quotas.refund(&route.name, quota);
            }
            return Err(err);
        }
    };
    outcome.endpoint = Some(endpoint);
    outcome.retries = retries;

    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// A client behind a trusted proxy is out of the kernel's reach, so its
/// abuse block is enforced here, before any other work. Direct clients are
/// dropped in XDP (or, with XDP off, only recorded: a dry run).
fn check_blocked(snapshot: &Snapshot, client: ClientAddr) -> Result<(), ProxyError> {
    if client.forwarded_by.is_none() {
        return Ok(());
    }
    match snapshot.abuse.blocked(client.ip) {
        Some(block) => Err(ProxyError::Blocked {
            client: client.ip,
            block,
        }),
        None => Ok(()),
    }
}

/// What the WAF reads of a request head. The path is the normalized one the
/// upstream gets: dot segments are already resolved inside the route, so only
/// what survives normalization (`%252e`, overlong UTF-8) can still climb.
fn waf_head<'a>(parts: &'a Parts, path: &'a str) -> Head<'a> {
    Head {
        method: &parts.method,
        path,
        query: parts.uri.query(),
        headers: &parts.headers,
    }
}

/// The WAF's look at the body read before forwarding: all of it, or (only
/// with `oversize = "inspect_prefix"`) its first `inspect_body_bytes`, with
/// the rest streaming on uninspected (counted, so an operator sees how many).
fn inspect_body(
    waf: &RouteWafPolicy,
    route: &str,
    parts: &Parts,
    path: &str,
    body: &Prepared,
) -> Result<(), ProxyError> {
    if !body.complete {
        metrics::counter!("gateway_waf_bodies_uninspected_total", "route" => route.to_owned())
            .increment(1);
    }
    if body.seen.is_empty() {
        return Ok(());
    }
    Ok(waf.check_body(route, &waf_head(parts, path), &body.seen)?)
}

/// `1.1`, `2`: the `network.protocol.version` of the client's request.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "unknown",
    }
}

/// A `Host` value as `server.address` and `server.port` (the port only when
/// the client named one).
fn split_host(host: Option<&str>) -> (Option<&str>, Option<u16>) {
    let Some(host) = host else {
        return (None, None);
    };
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && (!name.contains(':') || name.ends_with(']')) => {
            match port.parse() {
                Ok(port) => (Some(name), Some(port)),
                Err(_) => (Some(host), None),
            }
        }
        _ => (Some(host), None),
    }
}

/// The `Host` header (HTTP/1.1) or the `:authority` (HTTP/2).
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    host_of(request.uri(), request.headers())
}

/// [`request_host`] of a request taken apart.
fn host_of<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// URI length, header count and header bytes; HTTP/1.1 heads over the buffer
/// size never get here (hyper answers 431 itself).
fn check_head_limits<B>(request: &Request<B>, listener: &ListenerConfig) -> Result<(), ProxyError> {
    let limits = &listener.limits;
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            len: uri_len,
            max: limits.max_uri_bytes,
        });
    }
    let headers = request.headers();
    if headers.len() > limits.max_header_count {
        return Err(ProxyError::TooManyHeaders {
            count: headers.len(),
            max: limits.max_header_count,
        });
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            bytes,
            max: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// The request as the fleet sees it: no hop-by-hop headers, forwarding
/// headers set by the gateway, the route's `Host` (the caller sets HTTP/1.1).
fn upstream_request(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    headers: &mut http::HeaderMap,
    uri: &http::Uri,
    route: &Route,
    request_id: &HeaderValue,
    trace: &TraceContext,
) {
    let client_host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::remove_hop_by_hop(headers);
    let trusted = snapshot
        .proxy
        .trusted_proxies
        .iter()
        .any(|cidr| cidr.contains(conn.client.ip()));
    headers::set_forwarded(
        headers,
        snapshot.proxy.forwarded_headers,
        conn.client.ip(),
        client_host.as_ref(),
        trusted,
    );
    if let Some(host) = route.upstream_host.clone().or(client_host) {
        headers.insert(header::HOST, host);
    }
    // The upstream client frames the body itself, from what it holds.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(REQUEST_ID, request_id.clone());
    trace.apply(headers);
}

/// The path and query the upstream gets: the route's rewrite of the normalized
/// path, and the client's query. When neither changed the path, the client's
/// own (already parsed) path and query is shared rather than copied.
fn upstream_path_and_query(
    route: &Route,
    path: &str,
    uri: &http::Uri,
) -> Result<PathAndQuery, String> {
    let rewritten = route.rewrite(path);
    if let Some(original) = uri.path_and_query()
        && original
            .as_str()
            .strip_prefix(&*rewritten)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
    {
        return Ok(original.clone());
    }
    let joined = match uri.query() {
        Some(query) => format!("{rewritten}?{query}"),
        None => rewritten.into_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(joined)).map_err(|err| err.to_string())
}

/// The consistent-hashing key: the configured header, or the client address.
fn affinity_key(
    balance: Balance,
    header: Option<&str>,
    conn: &ConnInfo,
    parts: &Parts,
) -> Option<u64> {
    if balance != Balance::ConsistentHash {
        return None;
    }
    match header {
        Some(name) => parts.headers.get(name).map(|v| hash_key(v.as_bytes())),
        None => Some(hash_key(conn.client.ip().to_string().as_bytes())),
    }
}
