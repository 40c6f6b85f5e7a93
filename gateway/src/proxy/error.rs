//! The one place where a failed request becomes a response. Every error knows
//! its status and a message safe to show a client; upstream details go to the
//! log, never to the client.

use std::{net::IpAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};

use super::{framing::FramingError, normalize::PathError};
use crate::{
    abuse::ActiveBlock,
    auth::AuthError,
    config::byte_rate::ByteRate,
    policy::{
        quota::{Exhausted, Refusal},
        ratelimit::Rejection,
        waf::Verdict,
    },
    upstream::{BoxBody, ClientBodyError, UpstreamError, breaker::BreakerOpen},
};

/// What is left of the tightest quota of the route, on every answer.
pub const QUOTA_REMAINING: &str = "quota-remaining";
/// Seconds until that quota's calendar period ends.
pub const QUOTA_RESET: &str = "quota-reset";
/// The code of a request refused for its framing or host (400, closed).
pub const MALFORMED_REQUEST: &str = "malformed_request";

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Exhausted(spent) => Self::QuotaExceeded(spent),
            Refusal::Unavailable { quota } => Self::QuotaUnavailable { quota },
        }
    }
}

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request target is {len} bytes; the limit is {max}")]
    UriTooLong { len: usize, max: usize },
    #[error("{count} header fields; the limit is {max}")]
    TooManyHeaders { count: usize, max: usize },
    #[error("header fields hold {bytes} bytes; the limit is {max}")]
    HeadersTooLarge { bytes: usize, max: usize },
    #[error("invalid path: {0}")]
    BadPath(#[from] PathError),
    #[error("no route for this host and path")]
    NoRoute,
    #[error(
        "this host is not served on this connection; connect to it by its own name and listener"
    )]
    Misdirected,
    #[error("more than {limit} requests in flight from this client")]
    ClientBusy { limit: u64 },
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: String },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request body stalled for {0:?}")]
    BodyTimeout(Duration),
    #[error("request body slower than {0}")]
    BodyTooSlow(ByteRate),
    #[error("{0}")]
    ClientBody(ClientBodyError),
    #[error("malformed request: {0}")]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("no response from the upstream within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("rate limit {} exceeded; retry in {} s", .0.policy, .0.retry_secs())]
    RateLimited(Rejection),
    #[error("quota {} of {} requests is spent; it resets in {} s", .0.quota, .0.limit, .0.reset_secs)]
    QuotaExceeded(Exhausted),
    #[error("quota {quota} is shared and the fleet's Redis did not answer in time")]
    QuotaUnavailable { quota: String },
    #[error("request blocked by WAF rule {rule}")]
    WafBlocked { rule: String, class: &'static str },
    #[error("request refused: {0}")]
    ProtocolAnomaly(&'static str),
    #[error("content type {0:?} is not accepted on this route")]
    ContentTypeNotAllowed(String),
    #[error("the request body does not match the route's schema at {path:?}: {message}")]
    SchemaInvalid { path: String, message: String },
    /// A client behind a trusted proxy that the abuse loop blocked: the
    /// kernel cannot drop it, so the proxy refuses its requests.
    #[error("client {client} is blocked for abuse: {} offence {}, {}", .block.cidr, .block.offence, .block.signals)]
    Blocked { client: IpAddr, block: ActiveBlock },
}

impl From<Verdict> for ProxyError {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Block { rule, class } => Self::WafBlocked { rule, class },
            Verdict::Anomaly(what) => Self::ProtocolAnomaly(what),
            Verdict::ContentType(media) => Self::ContentTypeNotAllowed(media),
            Verdict::Schema { path, message } => Self::SchemaInvalid { path, message },
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::TooManyHeaders { .. } | Self::HeadersTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::BadPath(_) | Self::ClientBody(_) | Self::Framing(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::ClientBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) | Self::BodyTooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Upstream(
                UpstreamError::NoHealthyEndpoint { .. }
                | UpstreamError::BreakerOpen(_)
                | UpstreamError::CircuitOpen(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(UpstreamError::AttemptTimeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(UpstreamError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Upstream(UpstreamError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Auth(AuthError::MissingToken | AuthError::InvalidToken(_)) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Auth(AuthError::InsufficientScope { .. }) => StatusCode::FORBIDDEN,
            Self::Auth(AuthError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(AuthError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            Self::RateLimited(_) | Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::WafBlocked { .. } | Self::Blocked { .. } => StatusCode::FORBIDDEN,
            Self::ProtocolAnomaly(_) | Self::SchemaInvalid { .. } => StatusCode::BAD_REQUEST,
            Self::ContentTypeNotAllowed(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// A short machine-readable code for the body and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UriTooLong { .. } => "uri_too_long",
            Self::TooManyHeaders { .. } | Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::BadPath(_) => "invalid_path",
            Self::NoRoute => "no_route",
            Self::Misdirected => "misdirected_request",
            Self::ClientBusy { .. } => "too_many_client_requests",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyTooSlow(_) => "body_too_slow",
            Self::ClientBody(_) => "bad_body",
            Self::Framing(_) => MALFORMED_REQUEST,
            Self::Upstream(UpstreamError::NoHealthyEndpoint { .. }) => "no_healthy_upstream",
            Self::Upstream(UpstreamError::BreakerOpen(_)) => "upstream_overloaded",
            Self::Upstream(UpstreamError::CircuitOpen(_)) => "circuit_open",
            Self::Upstream(UpstreamError::AttemptTimeout { .. }) => "upstream_timeout",
            Self::Upstream(UpstreamError::Internal(_)) => "internal_error",
            Self::Upstream(UpstreamError::ClientBody(_)) => "bad_body",
            Self::Upstream(_) => "upstream_error",
            Self::Timeout(_) => "upstream_timeout",
            Self::Auth(err) => err.code(),
            Self::RateLimited(_) => "rate_limited",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::QuotaUnavailable { .. } => "quota_unavailable",
            Self::WafBlocked { .. } => "waf_blocked",
            Self::ProtocolAnomaly(_) => "protocol_anomaly",
            Self::ContentTypeNotAllowed(_) => "content_type_not_allowed",
            Self::SchemaInvalid { .. } => "schema_invalid",
            Self::Blocked { .. } => "blocked",
        }
    }

    /// Whether the client, not the gateway or the fleet, is at fault: such
    /// an answer names no upstream in metrics and logs.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            Self::BodyTooLarge { .. }
                | Self::BodyTimeout(_)
                | Self::BodyTooSlow(_)
                | Self::ClientBody(_)
                | Self::Framing(_)
                | Self::Upstream(UpstreamError::ClientBody(_))
        )
    }

    /// Whether the connection must close after this answer: what follows
    /// the request on an HTTP/1.1 connection cannot be trusted to be framed
    /// as the client meant.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::Framing(_) | Self::ClientBody(_))
    }

    /// The WAF rule that refused the request, for the response and the abuse
    /// loop's evidence.
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            Self::WafBlocked { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// What the client may read: the client's own mistakes in full, the
    /// fleet's only by kind.
    fn public_message(&self) -> String {
        match self {
            Self::Upstream(UpstreamError::NoHealthyEndpoint { .. }) => {
                "no healthy upstream endpoint; try again later".to_owned()
            }
            Self::Upstream(UpstreamError::BreakerOpen(_)) => {
                "upstream overloaded; try again later".to_owned()
            }
            Self::Upstream(UpstreamError::CircuitOpen(_)) => {
                "the upstream keeps failing; try again later".to_owned()
            }
            Self::Upstream(UpstreamError::AttemptTimeout { .. }) => {
                "the upstream did not answer in time".to_owned()
            }
            Self::Upstream(UpstreamError::Internal(_)) => "internal gateway error".to_owned(),
            Self::Upstream(_) => "the upstream could not be reached or failed".to_owned(),
            Self::Timeout(_) => "the upstream did not answer in time".to_owned(),
            Self::Blocked { .. } => "this client is blocked for abuse".to_owned(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Upstream(UpstreamError::NoHealthyEndpoint { retry_after, .. }) => {
                Some(retry_after.as_secs().max(1))
            }
            Self::Upstream(UpstreamError::BreakerOpen(BreakerOpen::PendingTimeout(wait))) => {
                Some(wait.as_secs().max(1))
            }
            Self::Upstream(UpstreamError::CircuitOpen(open)) => {
                Some(open.retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Upstream(UpstreamError::BreakerOpen(_))
            | Self::Auth(AuthError::Unavailable)
            | Self::QuotaUnavailable { .. } => Some(1),
            Self::RateLimited(rejection) => Some(rejection.retry_secs()),
            Self::ClientBusy { .. } => Some(1),
            Self::QuotaExceeded(spent) => Some(spent.reset_secs.max(1)),
            Self::Blocked { block, .. } => Some(
                block
                    .until
                    .saturating_duration_since(std::time::Instant::now())
                    .as_secs()
                    .max(1),
            ),
            _ => None,
        }
    }
}

/// The response for `error`: a small JSON body naming the request id.
pub fn respond(error: &ProxyError, request_id: &HeaderValue) -> Response<BoxBody> {
    let status = error.status();
    let mut body = serde_json::json!({
        "status": status.as_u16(),
        "error": error.code(),
        "message": error.public_message(),
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    if let Some(rule) = error.rule_id() {
        body["rule"] = rule.into();
    }
    if let ProxyError::SchemaInvalid { path, .. } = error {
        body["path"] = path.as_str().into();
    }
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let ProxyError::MethodNotAllowed { allow } = error
        && let Ok(value) = HeaderValue::from_str(allow)
    {
        headers.insert(header::ALLOW, value);
    }
    if let ProxyError::Auth(auth) = error
        && let Some(challenge) = auth.challenge()
        && let Ok(value) = HeaderValue::from_str(&challenge)
    {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    if let ProxyError::RateLimited(rejection) = error {
        for (name, value) in [
            ("ratelimit-policy", rejection.policy_header()),
            ("ratelimit", rejection.limit_header()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    if let ProxyError::QuotaExceeded(spent) = error {
        headers.insert(QUOTA_REMAINING, HeaderValue::from(0u64));
        headers.insert(QUOTA_RESET, HeaderValue::from(spent.reset_secs));
    }
    if let Some(seconds) = error.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
