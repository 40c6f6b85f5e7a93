//! The client's request body on its way upstream: never more than the route
//! allows, never stalled longer than the listener allows, never slower than
//! the minimum rate, and held back until the part the policy must see has
//! arrived, whatever the framing (`Content-Length`, chunked, HTTP/2 with or
//! without `content-length`). The request asks the pool for a slot only
//! then, so a slow client holds no upstream capacity meanwhile.
//!
//! Every failure of the client's body (bad framing, a reset, an early end, a
//! limit, a stall, a crawl) is recorded in the body's [`BodyFault`] where it
//! happens, so the pool never mistakes it for a failure of the endpoint.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::error::ProxyError;
use crate::{
    config::byte_rate::ByteRate,
    upstream::{BodyFault, BoxError, ClientBodyError, RequestBody},
};

impl From<ClientBodyError> for ProxyError {
    fn from(err: ClientBodyError) -> Self {
        match err {
            ClientBodyError::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
            ClientBodyError::Stalled(wait) => ProxyError::BodyTimeout(wait),
            ClientBodyError::TooSlow(rate) => ProxyError::BodyTooSlow(rate),
            ClientBodyError::Malformed | ClientBodyError::Incomplete => ProxyError::ClientBody(err),
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

/// How much of a body to read before anything goes upstream.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    /// Bodies up to this size are read whole (inspected, replayable); of a
    /// longer one this much is read first, then the rest streams.
    pub bytes: usize,
    /// A body longer than this is refused (413): the route inspects bodies
    /// and does not take a partial look.
    pub refuse_over: Option<usize>,
}

/// A request body read as far as [`Hold`] says.
pub struct Prepared {
    pub body: RequestBody,
    /// The bytes read so far: the whole body when `complete`.
    pub seen: Bytes,
    pub complete: bool,
}

/// A request body with a size limit, a stall timeout and a minimum rate.
pub struct ClientBody {
    inner: Incoming,
    /// Bytes read before forwarding began, sent first.
    prefix: Option<Bytes>,
    limit: u64,
    received: u64,
    stall: Duration,
    /// The stall clock starts at the first poll, not while the request waits
    /// for an upstream connection.
    polled: bool,
    timer: Pin<Box<Sleep>>,
    pace: PaceMeter,
    fault: BodyFault,
}

impl ClientBody {
    fn new(inner: Incoming, limit: u64, stall: Duration, pace: Pace) -> Self {
        Self {
            inner,
            prefix: None,
            limit,
            received: 0,
            stall,
            polled: false,
            timer: Box::pin(tokio::time::sleep(stall)),
            pace: PaceMeter::new(pace),
            fault: BodyFault::default(),
        }
    }

    /// Checks the declared length, then reads the body up to `hold`: whole
    /// (replayable) when it fits, else that much and the rest streaming.
    pub async fn prepare(
        inner: Incoming,
        limit: u64,
        stall: Duration,
        pace: Pace,
        hold: Hold,
    ) -> Result<Prepared, ProxyError> {
        let refuse_over = hold.refuse_over.map(|max| max as u64);
        if let Some(declared) = inner.size_hint().exact() {
            if declared > limit {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            if let Some(max) = refuse_over.filter(|&max| declared > max) {
                return Err(ProxyError::BodyTooLarge { limit: max });
            }
        }
        if inner.is_end_stream() {
            // No body (most GETs): nothing to read, so no stall timer to arm.
            return Ok(Prepared {
                body: RequestBody::Replayable(Bytes::new()),
                seen: Bytes::new(),
                complete: true,
            });
        }
        let mut body = Self::new(inner, limit, stall, pace);
        let mut seen = BytesMut::new();
        while let Some(frame) = body.frame().await {
            // Every error of this body records its fault first.
            let frame = frame.map_err(|_| {
                ProxyError::from(body.fault.get().unwrap_or(ClientBodyError::Malformed))
            })?;
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
            }
            if let Some(max) = refuse_over.filter(|&max| seen.len() as u64 > max) {
                return Err(ProxyError::BodyTooLarge { limit: max });
            }
            if seen.len() > hold.bytes {
                let seen = seen.freeze();
                body.prefix = Some(seen.clone());
                let fault = body.fault.clone();
                return Ok(Prepared {
                    body: RequestBody::Streaming {
                        body: Some(body.boxed_unsync()),
                        fault,
                    },
                    seen,
                    complete: false,
                });
            }
        }
        let seen = seen.freeze();
        Ok(Prepared {
            body: RequestBody::Replayable(seen.clone()),
            seen,
            complete: true,
        })
    }

    /// Records `err` as the body's fault and hands it on.
    fn failed(&self, err: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.fault.set(err);
        Poll::Ready(Some(Err(err.into())))
    }
}

/// What a failed read of the client's body was: an early end (the
/// connection closed or the stream was reset before the declared length or
/// the last chunk), or anything else the client sent wrong (bad chunked
/// framing, an HTTP/2 length mismatch).
fn classify(err: &hyper::Error) -> ClientBodyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return ClientBodyError::Incomplete;
        }
        source = cause.source();
    }
    if err.is_incomplete_message() || err.is_canceled() {
        ClientBodyError::Incomplete
    } else {
        ClientBodyError::Malformed
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
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + this.stall;
                    this.timer.as_mut().reset(deadline);
                    // Trailers stay on the client's hop: the upstream gets
                    // framing the gateway wrote.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        return this.failed(ClientBodyError::TooLarge(this.limit));
                    }
                    if let Err(err) = this.pace.received(data.len()) {
                        return this.failed(err);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(err))) => return this.failed(classify(&err)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if let Poll::Ready(err) = this.pace.poll_waiting(cx) {
                        return this.failed(err);
                    }
                    ready!(this.timer.as_mut().poll(cx));
                    return this.failed(ClientBodyError::Stalled(this.stall));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        match inner.exact() {
            Some(rest) => SizeHint::with_exact(rest + held),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + held);
                hint
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_after_grace_and_one_window() {
        let mut meter = PaceMeter::new(pace());
        assert!(meter.received(1).is_ok());
        assert!(wait(&mut meter, Duration::from_millis(300)).await.is_none());
        assert!(matches!(
            wait(&mut meter, Duration::from_millis(300)).await,
            Some(ClientBodyError::TooSlow(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_passes_and_time_the_upstream_takes_does_not_count() {
        let mut meter = PaceMeter::new(pace());
        for _ in 0..8 {
            assert!(wait(&mut meter, Duration::from_millis(100)).await.is_none());
            assert!(meter.received(150).is_ok());
            // The upstream is slow to read: nobody waits for the client.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_cuts() {
        let mut meter = PaceMeter::new(Pace {
            min_rate: ByteRate(0),
            ..pace()
        });
        assert!(wait(&mut meter, Duration::from_secs(1)).await.is_none());
    }
}
