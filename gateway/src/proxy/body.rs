//! The client's request body on its way upstream: streamed frame by frame, never
//! more than the route allows, never stalled longer than the listener allows.
//! Small bodies are buffered so a failed attempt can be sent again.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::error::ProxyError;
use crate::upstream::{BoxError, ClientBodyError, RequestBody, client_body_error};

impl From<ClientBodyError> for ProxyError {
    fn from(err: ClientBodyError) -> Self {
        match err {
            ClientBodyError::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
            ClientBodyError::Stalled(wait) => ProxyError::BodyTimeout(wait),
        }
    }
}

/// A request body with a size limit and a stall timeout.
pub struct ClientBody {
    inner: Incoming,
    limit: u64,
    received: u64,
    stall: Duration,
    /// The stall clock starts at the first poll, not while the request waits
    /// for an upstream connection.
    polled: bool,
    timer: Pin<Box<Sleep>>,
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64, stall: Duration) -> Self {
        Self {
            inner,
            limit,
            received: 0,
            stall,
            polled: false,
            timer: Box::pin(tokio::time::sleep(stall)),
        }
    }

    /// Checks the declared length, then buffers bodies of at most `buffer`
    /// bytes (replayable) and streams the rest.
    pub async fn prepare(
        inner: Incoming,
        headers: &HeaderMap,
        limit: u64,
        stall: Duration,
        buffer: usize,
    ) -> Result<RequestBody, ProxyError> {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if inner.is_end_stream() {
            // No body (most GETs): nothing to read, so no stall timer to arm.
            return Ok(RequestBody::Replayable(Bytes::new()));
        }
        let body = Self::new(inner, limit, stall);
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|len| len <= buffer as u64);
        if !small {
            return Ok(RequestBody::Streaming(Some(body.boxed_unsync())));
        }
        match body.collect().await {
            Ok(collected) => Ok(RequestBody::Replayable(collected.to_bytes())),
            Err(err) => Err(match client_body_error(err.as_ref()) {
                Some(found) => found.into(),
                None => ProxyError::ClientBody(err.to_string()),
            }),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.polled {
            this.polled = true;
            this.timer.as_mut().reset(Instant::now() + this.stall);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        return Poll::Ready(Some(
                            Err(ClientBodyError::TooLarge(this.limit).into()),
                        ));
                    }
                }
                let deadline = Instant::now() + this.stall;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(ClientBodyError::Stalled(this.stall).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
