//! Accepting connections: the TLS handshake under a deadline, then HTTP/1.1 or
//! HTTP/2 on the same socket, with the listener's timeouts against slow and idle
//! clients and a graceful close when the gateway drains.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

use super::{
    Shared, Snapshot,
    service::{self, ConnInfo},
    tls::ServerTls,
};
use crate::abuse::{Evidence, Signal};

/// How often a connection checks whether it has been idle too long.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            self.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
        })
    }

    fn end(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
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
}

impl Acceptor {
    /// Accepts until the gateway starts draining.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return,
                accepted = self.socket.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let connection = Connection {
                            name: self.name.clone(),
                            tls: self.tls.clone(),
                            shared: self.shared.clone(),
                            shutdown: self.shutdown.clone(),
                            _open: self.open.clone(),
                        };
                        tokio::spawn(connection.serve(tcp));
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(listener = &*self.name, %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

struct Connection {
    name: Arc<str>,
    tls: Arc<ServerTls>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream) {
        let Ok(client) = tcp.peer_addr() else { return };
        let _ = tcp.set_nodelay(true);
        let snapshot = self.shared.snapshot.load_full();
        let listener = snapshot.listener(&self.name).clone();
        let timeouts = listener.timeouts;
        let stream =
            match tokio::time::timeout(timeouts.tls_handshake, self.tls.acceptor().accept(tcp))
                .await
            {
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
        let session = stream.get_ref().1;
        let conn = Arc::new(ConnInfo {
            listener: self.name.clone(),
            client,
            tls_version: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            sni: session.server_name().map(Arc::from),
        });

        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        });
        let shared = self.shared.clone();
        let service_activity = activity.clone();
        let service = service_fn(move |request| {
            service_activity.in_flight.fetch_add(1, Ordering::AcqRel);
            let activity = service_activity.clone();
            let snapshot = shared.snapshot.load_full();
            let conn = conn.clone();
            async move {
                let response = service::handle(snapshot, conn, request).await;
                activity.end();
                Ok::<_, Infallible>(response)
            }
        });

        let limits = listener.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.request_header)
            .max_headers(limits.max_header_count)
            // Room for a request line up to the URI limit and the header bytes, so
            // the service can answer those limits precisely (414, 431).
            .max_buf_size((limits.max_uri_bytes + limits.max_header_bytes + 4096).max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(timeouts.idle / 2))
            .keep_alive_timeout(timeouts.tls_handshake);

        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
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
                _ = self.shutdown.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = idle_check.tick(), if !closing => {
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

/// A failed handshake is one of the abuse loop's signals (scanners, TLS
/// floods); its evidence names how it failed.
fn report_handshake_failure(snapshot: &Snapshot, client: SocketAddr, code: &str) {
    snapshot.abuse.record(
        client.ip(),
        Signal::TlsHandshakeFailure,
        Evidence {
            code: Some(code.to_owned()),
            ..Evidence::new(Signal::TlsHandshakeFailure)
        },
    );
}
