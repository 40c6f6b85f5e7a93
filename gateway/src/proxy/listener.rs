//! Accepting connections: the TLS handshake under a deadline, then HTTP/1.1 or
//! HTTP/2 on the same socket, with the listener's timeouts against slow and idle
//! clients and a graceful close when the gateway drains.

use std::{
    convert::Infallible,
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tracing::{debug, info};

use super::error::MALFORMED_REQUEST;
use super::{
    Shared, Snapshot,
    connections::{ConnectionGuard, Connections, Refusal, RefusalLog},
    framing::{End, FramingError, Scanner},
    service::{self, ConnInfo},
    tls::ServerTls,
};
use crate::{
    abuse::{Evidence, Signal},
    config::ListenerTimeouts,
};

/// How often a connection checks its idle and request-head deadlines.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How much an HTTP/1.1 connection reads at once for its framing scanner:
/// one TLS record.
const SCAN_CHUNK: usize = 16 * 1024;

/// What one connection is doing, for its deadlines: requests in flight, when the last
/// one ended, and when the head of the next one began to arrive.
///
/// The listener times HTTP/1.1 request heads itself rather than with hyper's
/// `header_read_timeout`, whose timer also runs while a keep-alive connection waits
/// for its next request: with it an idle connection closed after `request_header`
/// (10 s), not after `idle`. Here `request_header` runs from the first byte of a
/// head (or from the handshake, for the first request) and `idle` from the end of
/// the last response.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    head_started: Mutex<Option<Instant>>,
}

impl Activity {
    /// A connection whose first request head is due within `request_header`.
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(now),
            head_started: Mutex::new(Some(now)),
        }
    }

    /// Since when the connection has had no request in flight (its start, or
    /// the end of its last response); `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| *lock(&self.last))
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| lock(&self.last).elapsed())
    }

    /// How long an unfinished request head has been arriving, if one is.
    fn head_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        lock(&self.head_started).map(|started| started.elapsed())
    }

    /// Bytes arrived: with no request in flight they start the next head.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            lock(&self.head_started).get_or_insert_with(Instant::now);
        }
    }

    /// A whole head arrived: the service has the request.
    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        *lock(&self.head_started) = None;
    }

    fn end(&self) {
        *lock(&self.last) = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The client's stream, telling [`Activity`] when bytes arrive. On HTTP/1.1
/// connections hyper reads it through a framing [`Scanner`]: only validated
/// bytes reach hyper (see [`super::framing`]).
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    scanner: Option<Scanner>,
    /// Told about every request head the scanner refused.
    refused: Box<dyn Fn(FramingError) + Send + Sync>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(scanner) = this.scanner.as_mut() else {
            let before = buf.filled().len();
            let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
            if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                this.activity.read_some();
            }
            return poll;
        };
        loop {
            let out = scanner.output();
            if !out.is_empty() || buf.remaining() == 0 {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match scanner.end() {
                Some(End::Eof) => return Poll::Ready(Ok(())),
                Some(End::Error(err)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
                }
                None => {}
            }
            // Uninitialised: zeroing 16 KiB per read was a third of the
            // gateway's instructions per request (callgrind, BENCHMARKS.md).
            let mut scratch = [const { MaybeUninit::<u8>::uninit() }; SCAN_CHUNK];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.activity.read_some();
            scanner.feed(read.filled());
            if let Some(err) = scanner.take_refused() {
                (this.refused)(err);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Everything one accept loop needs.
pub(super) struct Acceptor {
    pub name: Arc<str>,
    pub socket: TcpListener,
    pub tls: Arc<ServerTls>,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
    /// Each connection holds a clone; the drain waits until all are dropped.
    pub open: mpsc::Sender<()>,
    /// Connection caps, shared by every listener.
    pub connections: Arc<Connections>,
}

impl Acceptor {
    /// Accepts until the gateway starts draining.
    pub async fn run(mut self) {
        let refusals = RefusalLog::new(self.name.clone());
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return,
                accepted = self.socket.accept() => match accepted {
                    Ok((tcp, client)) => self.admit(tcp, client, &refusals),
                    Err(err) if out_of_descriptors(&err) => {
                        // Make room by closing idle connections, and back off
                        // briefly: the pending client stays in the backlog.
                        let shed = self.connections.shed(SHED_ON_EMFILE);
                        refusals.refused("accept_error", &format_args!("{err}; closed {shed} idle connection(s)"));
                        tokio::time::sleep(Duration::from_millis(if shed > 0 { 5 } else { 50 })).await;
                    }
                    // The client went away before accept: nothing to do.
                    Err(err) => debug!(listener = &*self.name, %err, "accept failed"),
                },
            }
        }
    }

    /// Takes a new connection into the table and serves it, or closes it at
    /// once (its refusal counted, a per-client refusal reported as abuse).
    fn admit(&self, tcp: TcpStream, client: SocketAddr, refusals: &RefusalLog) {
        let snapshot = self.shared.snapshot.load();
        let limits = snapshot.listener(&self.name).limits;
        let exempt = snapshot
            .proxy
            .trusted_proxies
            .iter()
            .any(|cidr| cidr.contains(client.ip()));
        let activity = Arc::new(Activity::new());
        match self
            .connections
            .admit(&self.name, client.ip(), &limits, exempt, activity.clone())
        {
            Ok(guard) => {
                let connection = Connection {
                    name: self.name.clone(),
                    tls: self.tls.clone(),
                    shared: self.shared.clone(),
                    shutdown: self.shutdown.clone(),
                    _open: self.open.clone(),
                    connections: self.connections.clone(),
                    activity,
                    guard,
                };
                tokio::spawn(connection.serve(tcp, client));
            }
            Err(refusal) => {
                refusals.refused(
                    refusal.label(),
                    &format_args!("latest from {}", client.ip()),
                );
                if refusal == Refusal::PerClient {
                    snapshot.abuse.record(
                        client.ip(),
                        Signal::RateLimited,
                        Evidence {
                            code: Some("too_many_client_connections".to_owned()),
                            ..Evidence::new(Signal::RateLimited)
                        },
                    );
                }
            }
        }
    }
}

/// Idle connections closed when accept runs out of descriptors.
const SHED_ON_EMFILE: usize = 8;

/// EMFILE and its kin: the process or system is out of descriptors or memory.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

struct Connection {
    name: Arc<str>,
    tls: Arc<ServerTls>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
    connections: Arc<Connections>,
    activity: Arc<Activity>,
    /// Its place in the table; notified when it must close for a newcomer.
    guard: ConnectionGuard,
}

impl Connection {
    /// The TLS handshake, then the protocol ALPN chose in a task of its own
    /// (see [`Connection::drive`]).
    async fn serve(self, tcp: TcpStream, client: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let snapshot = self.shared.snapshot.load_full();
        // The handshake completed: the address is the peer's own.
        snapshot.abuse.connected(client.ip());
        // Copies of the two small settings the connection needs, not of the listener's
        // config, and no hold on the snapshot past the handshake: an idle connection
        // keeps neither alive (memory per idle connection, and old configs after a
        // reload).
        let (timeouts, limits) = {
            let listener = snapshot.listener(&self.name);
            (listener.timeouts, listener.limits)
        };
        let close = self.guard.close.clone();
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(timeouts.tls_handshake, self.tls.acceptor().accept(tcp)) => handshake,
            () = close.notified() => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                debug!(listener = &*self.name, %client, %err, "TLS handshake failed");
                report_handshake_failure(&snapshot, client, "tls_handshake_failed");
                return;
            }
            Err(_) => {
                debug!(listener = &*self.name, %client, "TLS handshake timed out");
                report_handshake_failure(&snapshot, client, "tls_handshake_timeout");
                return;
            }
        };
        drop(snapshot);
        let session = stream.get_ref().1;
        let conn = Arc::new(ConnInfo {
            listener: self.name.clone(),
            client,
            tls_version: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "unknown",
            },
            sni: session.server_name().map(Arc::from),
            connections: self.connections.clone(),
        });

        // HTTP/2 clients keep idle connections alive with pings: only HTTP/1.1 heads
        // are timed (HTTP/2 bounds its headers by size and its idleness by `idle`).
        let http2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let shared = self.shared.clone();
        let service_activity = self.activity.clone();
        let service = service_fn(move |request| {
            service_activity.begin();
            let activity = service_activity.clone();
            let snapshot = shared.snapshot.load_full();
            let conn = conn.clone();
            // Boxed: hyper's HTTP/1.1 dispatcher allocates a slot the size of
            // this future once per connection and keeps it while the connection
            // idles; boxed, the slot is a pointer and the request's state (about
            // 4.8 KiB) lives only while the request does (BENCHMARKS.md).
            Box::pin(async move {
                let response = service::handle(snapshot, conn, request).await;
                activity.end();
                Ok::<_, Infallible>(response)
            })
        });

        // Room for a request line up to the URI limit and the header bytes, so
        // the service can answer those limits precisely (414, 431).
        let max_head = (limits.max_uri_bytes + limits.max_header_bytes + 4096).max(8192);
        let (name, shared) = (self.name.clone(), self.shared.clone());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: self.activity.clone(),
            // HTTP/2 frames its messages itself; everything else is HTTP/1.x
            // (an HTTP/2 preface without ALPN is refused as a bad head).
            scanner: (!http2).then(|| Scanner::new(max_head, limits.max_header_count)),
            refused: Box::new(move |err| {
                report_refused_head(&shared.snapshot.load(), &name, client, err);
            }),
        });
        // The protocol is the one ALPN chose, served by its own hyper builder: no
        // sniffing of the first bytes for an HTTP/2 preface (hyper-util's `auto`
        // read 24 bytes ahead of hyper, which grew every connection's HTTP/1.1
        // read buffer from 8 to 16 KiB, and served a client that chose `h2` but
        // spoke HTTP/1.1 without the framing scanner). Each protocol gets a task
        // of its own, sized for it: the handshake's state and the other protocol's
        // connection are not kept while a connection idles.
        if http2 {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(
                    u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX),
                )
                .keep_alive_interval(Some(timeouts.idle / 2))
                .keep_alive_timeout(timeouts.tls_handshake)
                .serve_connection(io, service);
            tokio::spawn(self.drive(Box::pin(connection), client, http2, timeouts));
        } else {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_headers(limits.max_header_count)
                .max_buf_size(max_head)
                .serve_connection(io, service);
            tokio::spawn(self.drive(Box::pin(connection), client, http2, timeouts));
        }
    }

    /// Serves the connection until it ends, closing it when it idles past
    /// `idle`, when an HTTP/1.1 head arrives slower than `request_header`, when
    /// it must make room, and gracefully when the gateway drains.
    ///
    /// The connection comes boxed: an async fn keeps each argument and the local
    /// it is moved into, so a connection passed by value took twice its size
    /// (about 2 KiB more per idle connection).
    async fn drive<C>(
        mut self,
        mut connection: Pin<Box<C>>,
        client: SocketAddr,
        http2: bool,
        timeouts: ListenerTimeouts,
    ) where
        C: GracefulConnection<Error = hyper::Error>,
    {
        let close = self.guard.close.clone();
        let activity = self.activity.clone();
        let mut closing = false;
        let mut idle_check = tokio::time::interval(IDLE_CHECK);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(listener = &*self.name, %client, %err, "connection ended with an error");
                    }
                    return;
                }
                () = close.notified() => {
                    debug!(listener = &*self.name, %client, "closing an idle connection to make room");
                    if activity.idle_since().is_some() {
                        return;
                    }
                    // A request began since it was chosen: let it finish.
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = self.shutdown.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = idle_check.tick(), if !closing => {
                    if !http2
                        && activity
                            .head_for()
                            .is_some_and(|head| head >= timeouts.request_header)
                    {
                        debug!(listener = &*self.name, %client, "request head too slow; closing");
                        return;
                    }
                    if activity.idle_for().is_some_and(|idle| idle >= timeouts.idle) {
                        debug!(listener = &*self.name, %client, "closing idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// A request head the framing scanner refused (hyper answers it 400 and
/// closes): an access line, a count and the client's `malformed` signal.
fn report_refused_head(
    snapshot: &Snapshot,
    listener: &Arc<str>,
    client: SocketAddr,
    err: FramingError,
) {
    info!(
        target: "access",
        listener = &**listener,
        client.address = %client.ip().to_canonical(),
        network.peer.address = %client.ip().to_canonical(),
        http.response.status_code = 400,
        decision = "deny",
        error.type = MALFORMED_REQUEST,
        error.message = %err,
    );
    crate::observe::metrics::record_request(&crate::observe::metrics::RequestRecord {
        listener,
        route: None,
        status: 400,
        error_code: Some(MALFORMED_REQUEST),
        latency: Duration::ZERO,
        upstream_latency: None,
        retries: 0,
        bytes_in: 0,
        bytes_out: 0,
    });
    report_signal(snapshot, client, Signal::Malformed, MALFORMED_REQUEST);
}

/// A failed handshake is one of the abuse loop's signals (scanners, TLS
/// floods); its evidence names how it failed.
fn report_handshake_failure(snapshot: &Snapshot, client: SocketAddr, code: &str) {
    report_signal(snapshot, client, Signal::TlsHandshakeFailure, code);
}

/// An abuse signal of the connection's client, its evidence the code.
fn report_signal(snapshot: &Snapshot, client: SocketAddr, signal: Signal, code: &str) {
    snapshot.abuse.record(
        client.ip(),
        signal,
        Evidence {
            code: Some(code.to_owned()),
            ..Evidence::new(signal)
        },
    );
}
