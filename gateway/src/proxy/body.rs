//! The client's request body on its way upstream: streamed frame by frame, never
//! more than the route allows, never stalled longer than the listener allows,
//! never slower than the minimum rate. The first bytes of every body, whatever
//! its framing, are buffered before the request asks the pool for a slot, so a
//! slow client holds no upstream capacity while it has not even sent that much;
//! bodies no larger than the buffer can also be sent again.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::error::ProxyError;
use crate::{
    config::byte_rate::ByteRate,
    upstream::{BoxError, ClientBodyError, RequestBody, client_body_error},
};

impl From<ClientBodyError> for ProxyError {
    fn from(err: ClientBodyError) -> Self {
        match err {
            ClientBodyError::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
            ClientBodyError::Stalled(wait) => ProxyError::BodyTimeout(wait),
            ClientBodyError::TooSlow(rate) => ProxyError::BodyTooSlow(rate),
        }
    }
}

/// The minimum data rate of a body: at least `min_rate` × `window` bytes per
/// `window` of time spent waiting for the client, after `grace`.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub min_rate: ByteRate,
    pub window: Duration,
    pub grace: Duration,
}

/// Measures a body's pace in windows of waiting time: only time the gateway
/// wanted data and the client had none counts, so an upstream that reads
/// slowly never makes its client look slow.
struct PaceMeter {
    pace: Pace,
    /// Waiting time that ends the current window (the first one includes the
    /// grace).
    window_len: Duration,
    waited: Duration,
    waiting_since: Option<Instant>,
    bytes: u64,
    timer: Pin<Box<Sleep>>,
}

impl PaceMeter {
    fn new(pace: Pace) -> Self {
        let window_len = pace.grace + pace.window;
        Self {
            pace,
            window_len,
            waited: Duration::ZERO,
            waiting_since: None,
            bytes: 0,
            timer: Box::pin(tokio::time::sleep(window_len)),
        }
    }

    /// Data arrived.
    fn received(&mut self, len: usize) -> Result<(), ClientBodyError> {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.bytes += len as u64;
        self.check(false)
    }

    /// The client has nothing for us: `Ready(Err)` once the window is over
    /// and too little came.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
        if self.pace.min_rate.is_off() {
            return Poll::Pending;
        }
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        if let Err(err) = self.check(true) {
            return Poll::Ready(err);
        }
        let left = self.window_len.saturating_sub(self.waited);
        let since = self.waiting_since.unwrap_or(since);
        self.timer.as_mut().reset(since + left);
        ready!(self.timer.as_mut().poll(cx));
        match self.check(true) {
            Err(err) => Poll::Ready(err),
            // The window ended well: wait into the next one.
            Ok(()) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Ends the window if its waiting time is over: too few bytes in it is an
    /// error, otherwise the next window starts.
    fn check(&mut self, waiting: bool) -> Result<(), ClientBodyError> {
        if self.pace.min_rate.is_off() {
            return Ok(());
        }
        let now = Instant::now();
        let current = self
            .waiting_since
            .map_or(Duration::ZERO, |since| now - since);
        if self.waited + current < self.window_len {
            return Ok(());
        }
        let required = u128::from(self.pace.min_rate.0) * self.pace.window.as_millis() / 1000;
        if u128::from(self.bytes) < required {
            return Err(ClientBodyError::TooSlow(self.pace.min_rate));
        }
        self.window_len = self.pace.window;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        self.waiting_since = waiting.then_some(now);
        Ok(())
    }
}

/// A request body with a size limit, a stall timeout and a minimum rate.
pub struct ClientBody {
    inner: Incoming,
    /// Bytes read ahead before the request went upstream, sent first.
    prefix: Option<Bytes>,
    limit: u64,
    received: u64,
    stall: Duration,
    /// The stall clock starts at the first poll, not while the request waits
    /// for an upstream connection.
    polled: bool,
    timer: Pin<Box<Sleep>>,
    pace: PaceMeter,
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64, stall: Duration, pace: Pace) -> Self {
        Self {
            inner,
            prefix: None,
            limit,
            received: 0,
            stall,
            polled: false,
            timer: Box::pin(tokio::time::sleep(stall)),
            pace: PaceMeter::new(pace),
        }
    }

    /// Checks the declared length, then reads up to `buffer` bytes of the
    /// body, whatever its framing: a body that ends within them is replayable,
    /// a longer one streams on (what was read first, then the rest).
    pub async fn prepare(
        inner: Incoming,
        headers: &HeaderMap,
        limit: u64,
        stall: Duration,
        pace: Pace,
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
        let mut body = Self::new(inner, limit, stall, pace);
        let mut read = BytesMut::new();
        while read.len() <= buffer {
            match body.frame().await {
                None => return Ok(RequestBody::Replayable(read.freeze())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => {
                    return Err(match client_body_error(err.as_ref()) {
                        Some(found) => found.into(),
                        None => ProxyError::ClientBody(err.to_string()),
                    });
                }
            }
        }
        body.prefix = Some(read.freeze());
        Ok(RequestBody::Streaming(Some(body.boxed_unsync())))
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
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
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
                    if let Err(err) = this.pace.received(data.len()) {
                        return Poll::Ready(Some(Err(err.into())));
                    }
                }
                let deadline = Instant::now() + this.stall;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Poll::Ready(err) = this.pace.poll_waiting(cx) {
                    return Poll::Ready(Some(Err(err.into())));
                }
                ready!(this.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(ClientBodyError::Stalled(this.stall).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let Some(prefix) = &self.prefix else {
            return hint;
        };
        let len = prefix.len() as u64;
        let mut with_prefix = SizeHint::new();
        with_prefix.set_lower(hint.lower() + len);
        if let Some(upper) = hint.upper() {
            with_prefix.set_upper(upper + len);
        }
        with_prefix
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// 1000 B/s: 200 bytes per 200 ms window, after a 200 ms grace.
    fn pace() -> Pace {
        Pace {
            min_rate: ByteRate(1000),
            window: Duration::from_millis(200),
            grace: Duration::from_millis(200),
        }
    }

    /// Waits `for_` as a body would: the client has nothing, the timer runs.
    async fn wait(meter: &mut PaceMeter, for_: Duration) -> Option<ClientBodyError> {
        let until = Instant::now() + for_;
        while Instant::now() < until {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(err) = meter.poll_waiting(&mut cx) {
                return Some(err);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    #[tokio::test]
    async fn a_trickle_is_cut_after_grace_and_one_window() {
        let mut meter = PaceMeter::new(pace());
        assert!(meter.received(1).is_ok());
        assert!(wait(&mut meter, Duration::from_millis(300)).await.is_none());
        assert!(matches!(
            wait(&mut meter, Duration::from_millis(300)).await,
            Some(ClientBodyError::TooSlow(_))
        ));
    }

    #[tokio::test]
    async fn a_steady_client_passes_and_time_the_upstream_takes_does_not_count() {
        let mut meter = PaceMeter::new(pace());
        for _ in 0..8 {
            assert!(wait(&mut meter, Duration::from_millis(100)).await.is_none());
            assert!(meter.received(150).is_ok());
            // The upstream is slow to read: nobody waits for the client.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    #[tokio::test]
    async fn off_never_cuts() {
        let mut meter = PaceMeter::new(Pace {
            min_rate: ByteRate(0),
            ..pace()
        });
        assert!(wait(&mut meter, Duration::from_secs(1)).await.is_none());
    }
}
