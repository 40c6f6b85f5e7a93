//! The connections to one endpoint, kept for the next request: HTTP/1.1
//! connections idle between answers, one HTTP/2 connection shared by all.
//! hyper's `client::conn` speaks the protocol; this is the pool around it. It
//! lives in the [`Endpoint`](super::pool::Endpoint), so a request finds its
//! connections without hashing or comparing a key.
//!
//! A request that a reused connection turns out unable to take (the endpoint
//! closed it while idle) is handed back untouched by hyper and goes to the next
//! connection, then to a new one, so a stale keep-alive connection never costs
//! the client an error or the endpoint a failure.

use std::{
    future::poll_fn,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use http::{Request, Response, Uri};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::{
    client::legacy::connect::Connection as _,
    rt::{TokioExecutor, TokioTimer},
};
use tower_service::Service as _;
use tracing::debug;

use super::{BoxBody, BoxError, tls::TimedConnector};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP, TLS or the HTTP/2 handshake failed: nothing was sent.
    #[error("connect")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was on it.
    #[error("request")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// Whether nothing reached the endpoint, so any method may go elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// An HTTP/1.1 connection busy with one answer: it goes back to its endpoint's
/// idle list once the answer's body has been read to its end (see
/// [`Connections::checkin`]); dropped earlier, it closes.
pub type Busy = http1::SendRequest<BoxBody>;

pub struct Connections {
    /// Kept connections idle longer are closed (`pool_idle_timeout`).
    idle_timeout: Duration,
    /// Most recently used last: the warmest connection is taken first, and the
    /// coldest are the first to reach the idle timeout.
    idle: Mutex<Vec<(Busy, Instant)>>,
    shared: Mutex<Option<http2::SendRequest<BoxBody>>>,
}

enum Sender {
    H1(Busy),
    H2(http2::SendRequest<BoxBody>),
}

impl Connections {
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            idle: Mutex::default(),
            shared: Mutex::default(),
        }
    }

    /// Sends `request` (its URI absolute) on a kept connection, or on a new one.
    /// Returns the answer's head and, over HTTP/1.1, the connection to check in
    /// when its body is done.
    pub async fn send(
        &self,
        connector: &TimedConnector,
        mut request: Request<BoxBody>,
    ) -> Result<(Response<Incoming>, Option<Busy>), SendError> {
        while let Some(sender) = self.reuse() {
            let shared = matches!(sender, Sender::H2(_));
            request = match send_on(sender, request).await {
                Ok(answer) => return Ok(answer),
                Err(Refused::Unsent(request)) => {
                    // An HTTP/2 connection that takes no new stream (closed, or
                    // going away) is not shared any more, open or not.
                    if shared {
                        *lock(&self.shared) = None;
                    }
                    *request
                }
                Err(Refused::Failed(err)) => return Err(SendError::Request(err)),
            };
        }
        // Boxed: the handshakes' state would otherwise size (and be copied with)
        // every request's future, though most requests never connect.
        let sender = Box::pin(self.connect(connector, request.uri().clone())).await?;
        match send_on(sender, request).await {
            Ok(answer) => Ok(answer),
            Err(Refused::Failed(err)) => Err(SendError::Request(err)),
            // A new connection that cannot take its first request is as good as
            // one that never connected: nothing was sent.
            Err(Refused::Unsent(_)) => Err(SendError::Connect(
                "the new connection closed before taking the request".into(),
            )),
        }
    }

    /// Keeps an HTTP/1.1 connection whose answer was read to its end.
    pub fn checkin(&self, busy: Busy) {
        if busy.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        expire(&mut idle, now, self.idle_timeout);
        idle.push((busy, now));
    }

    /// Closes the connections idle past the idle timeout.
    pub fn reap(&self) {
        expire(&mut lock(&self.idle), Instant::now(), self.idle_timeout);
        let mut shared = lock(&self.shared);
        if shared.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *shared = None;
        }
    }

    /// The shared HTTP/2 connection, else the warmest idle HTTP/1.1 one.
    fn reuse(&self) -> Option<Sender> {
        {
            let mut shared = lock(&self.shared);
            match shared.as_ref() {
                Some(sender) if !sender.is_closed() => return Some(Sender::H2(sender.clone())),
                Some(_) => *shared = None,
                None => {}
            }
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && now.duration_since(since) < self.idle_timeout {
                return Some(Sender::H1(sender));
            }
        }
        None
    }

    async fn connect(&self, connector: &TimedConnector, uri: Uri) -> Result<Sender, SendError> {
        let mut connector = connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(uri).await.map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|err| SendError::Connect(err.into()))?;
            drive(connection, "HTTP/2");
            *lock(&self.shared) = Some(sender.clone());
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|err| SendError::Connect(err.into()))?;
            drive(connection, "HTTP/1.1");
            Ok(Sender::H1(sender))
        }
    }
}

/// How a connection did not answer.
enum Refused {
    /// It closed before taking the request, which comes back whole (boxed: the
    /// rare case should not size the common one).
    Unsent(Box<Request<BoxBody>>),
    Failed(hyper::Error),
}

impl From<TrySendError<Request<BoxBody>>> for Refused {
    fn from(mut err: TrySendError<Request<BoxBody>>) -> Self {
        match err.take_message() {
            Some(request) => Self::Unsent(Box::new(request)),
            None => Self::Failed(err.into_error()),
        }
    }
}

async fn send_on(
    sender: Sender,
    mut request: Request<BoxBody>,
) -> Result<(Response<Incoming>, Option<Busy>), Refused> {
    match sender {
        Sender::H1(mut sender) => {
            if sender.ready().await.is_err() {
                return Err(Refused::Unsent(Box::new(request)));
            }
            // HTTP/1.1 sends the origin form; the authority is in `Host`.
            if let Some(path) = request.uri().path_and_query().cloned() {
                *request.uri_mut() = Uri::from(path);
            }
            let response = sender.try_send_request(request).await?;
            Ok((response, Some(sender)))
        }
        Sender::H2(mut sender) => {
            if sender.ready().await.is_err() {
                return Err(Refused::Unsent(Box::new(request)));
            }
            let response = sender.try_send_request(request).await?;
            Ok((response, None))
        }
    }
}

/// Runs a connection on its own task until it closes; its senders see it end.
fn drive(
    connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    protocol: &'static str,
) {
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(error = %err, protocol, "upstream connection ended");
        }
    });
}

/// Drops the connections idle since before `now - idle_timeout` (the oldest are
/// first in the list).
fn expire(idle: &mut Vec<(Busy, Instant)>, now: Instant, idle_timeout: Duration) {
    let fresh = idle
        .iter()
        .position(|(_, since)| now.duration_since(*since) < idle_timeout)
        .unwrap_or(idle.len());
    idle.drain(..fresh);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
