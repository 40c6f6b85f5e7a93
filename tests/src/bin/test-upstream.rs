//! `test-upstream`: a fleet host for the end-to-end tests. It serves HTTPS (HTTP/1.1,
//! and HTTP/2 with `--http2`) and requires a client certificate chained to
//! `--client-ca`. It prints `listening ADDR` on stdout once bound and logs to stderr.
//!
//! Routes:
//! - `GET /healthz`: 200, or 503 after `POST /admin/health/fail` until `POST /admin/health/ok`;
//! - `GET /count`: `{"upstream", "count"}`, the requests served so far (not counting
//!   `/count`, `/healthz` or `/admin/…`); a request counts as soon as its head arrives;
//! - `/slow?ms=N`: answers like any path, N ms after reading the body;
//! - `/status/CODE`: that status, with a body that looks like a leaked stack trace;
//! - `/stream?bytes=N`: N bytes of response body in 16 KiB chunks;
//! - any other path: 200 with JSON describing the request as received (method, path
//!   and query, headers, body byte count, client certificate CN, HTTP version, and
//!   the peer address of the connection it came on).
//!
//! With `--mode-file PATH`, the host misbehaves as the file's first line says, read
//! again for every connection and request, so a test switches it live (`/count` is
//! always answered, so the test can still ask what arrived):
//! - `ok` (or no file): as above;
//! - `slow MS`: every answer MS ms late;
//! - `status CODE`: every answer has that status;
//! - `reset`: every request's connection is reset (TCP RST), nothing answered;
//! - `blackhole`: new connections never get a TLS handshake, requests never an
//!   answer;
//! - `close-after-headers`: a 200 head announcing 4096 bytes, then the connection
//!   closes;
//! - `truncate`: a 200 head announcing 65536 bytes, 16384 of them, then the
//!   connection closes.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use gateway_tests::http::{Filler, body_len};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full, StreamBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Text an upstream must never see leaked to a gateway client.
const LEAK: &str = "internal error: stack trace follows\n  at db::query (src/db.rs:42)\n";

#[derive(Parser)]
#[command(about = "HTTPS upstream for the gateway's end-to-end tests")]
struct Args {
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// Server certificate chain, PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Server private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// CA that client certificates must chain to, PEM.
    #[arg(long)]
    client_ca: PathBuf,
    /// Name reported in every response and log line.
    #[arg(long)]
    name: String,
    /// Also offer HTTP/2 (ALPN `h2`); otherwise only HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// File whose first line names the fault to act out (see the module docs).
    #[arg(long)]
    mode_file: Option<PathBuf>,
}

/// The fault this host acts out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Slow(u64),
    Status(u16),
    Reset,
    Blackhole,
    CloseAfterHeaders,
    Truncate,
}

impl Mode {
    fn read(path: Option<&Path>) -> Self {
        let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
            return Self::Ok;
        };
        let mut words = text.split_whitespace();
        let number = |word: Option<&str>| word.and_then(|w| w.parse().ok());
        match words.next() {
            Some("slow") => Self::Slow(number(words.next()).unwrap_or(1000)),
            Some("status") => Self::Status(number(words.next()).map_or(500, |n: u64| n as u16)),
            Some("reset") => Self::Reset,
            Some("blackhole") => Self::Blackhole,
            Some("close-after-headers") => Self::CloseAfterHeaders,
            Some("truncate") => Self::Truncate,
            _ => Self::Ok,
        }
    }
}

/// What the connections of this process share.
struct State {
    name: String,
    http2: bool,
    mode_file: Option<PathBuf>,
    healthy: AtomicBool,
    served: AtomicU64,
}

/// A body that sends `Bytes`, then fails (the connection is cut).
type Broken = StreamBody<
    futures_util::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, std::io::Error>>,
>;
type ResponseBody = Either<Either<Full<Bytes>, Filler>, Broken>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("test-upstream: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&args)?));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|err| format!("binding {}: {err}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("local address: {err}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|err| format!("SIGTERM handler: {err}"))?;
    let state = Arc::new(State {
        name: args.name,
        http2: args.http2,
        mode_file: args.mode_file,
        healthy: AtomicBool::new(true),
        served: AtomicU64::new(0),
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|err| format!("writing to stdout: {err}"))?;
    eprintln!("{}: listening on {addr}", state.name);
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                eprintln!("{}: SIGTERM, exiting", state.name);
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(serve(Arc::clone(&state), acceptor.clone(), tcp, peer));
                }
                Err(err) => eprintln!("{}: accept failed: {err}", state.name),
            },
        }
    }
}

fn tls_config(args: &Args) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs(&args.cert)?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|err| format!("reading the key {}: {err}", args.key.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&args.client_ca)? {
        roots
            .add(cert)
            .map_err(|err| format!("client CA {}: {err}", args.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| format!("client certificate verifier: {err}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS versions: {err}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| format!("server certificate {}: {err}", args.cert.display()))?;
    config.alpn_protocols = if args.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|err| format!("reading certificates from {}: {err}", path.display()))
}

/// One connection: TLS handshake (client certificate required), then HTTP.
async fn serve(state: Arc<State>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    if Mode::read(state.mode_file.as_deref()) == Mode::Blackhole {
        // Holds the connection and says nothing, as a host that has gone dark.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tcp);
        return;
    }
    let fd = tcp.as_raw_fd();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            eprintln!("{}: TLS handshake with {peer} failed: {err}", state.name);
            return;
        }
        Err(_) => {
            eprintln!("{}: TLS handshake with {peer} timed out", state.name);
            return;
        }
    };
    let client_cn: Arc<str> = client_cn(tls.get_ref().1.peer_certificates()).into();
    let service_state = Arc::clone(&state);
    let service = service_fn(move |request| {
        handle(
            Arc::clone(&service_state),
            Arc::clone(&client_cn),
            peer,
            fd,
            request,
        )
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !state.http2 {
        builder = builder.http1_only();
    }
    if let Err(err) = builder.serve_connection(TokioIo::new(tls), service).await {
        eprintln!("{}: connection from {peer} ended: {err}", state.name);
    }
}

/// Common name of the first (leaf) client certificate, or "" if there is none.
fn client_cn(certs: Option<&[CertificateDer<'_>]>) -> String {
    let Some(leaf) = certs.and_then(<[_]>::first) else {
        return String::new();
    };
    x509_parser::parse_x509_certificate(leaf)
        .ok()
        .and_then(|(_, cert)| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        })
        .unwrap_or_default()
}

async fn handle(
    state: Arc<State>,
    client_cn: Arc<str>,
    peer: SocketAddr,
    fd: RawFd,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::io::Error> {
    let method = request.method().clone();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), ToString::to_string);
    let mode = if request.uri().path() == "/count" {
        Mode::Ok
    } else {
        Mode::read(state.mode_file.as_deref())
    };
    // A faulty host counts a request as its head arrives, like any other.
    let counted = mode != Mode::Ok && request.uri().path() != "/healthz";
    if counted {
        state.served.fetch_add(1, Ordering::Relaxed);
    }
    match mode {
        Mode::Ok => {}
        Mode::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            eprintln!("{}: {peer} {method} {target} -> {code} (mode)", state.name);
            return Ok(text(status, &format!("{} says: {LEAK}", state.name)));
        }
        Mode::Reset => {
            eprintln!("{}: {peer} {method} {target} -> reset (mode)", state.name);
            reset_on_close(fd);
            return Err(std::io::Error::other("mode reset"));
        }
        Mode::Blackhole => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Err(std::io::Error::other("mode blackhole"));
        }
        Mode::CloseAfterHeaders | Mode::Truncate => {
            eprintln!(
                "{}: {peer} {method} {target} -> {mode:?} (mode)",
                state.name
            );
            let (announced, sent) = if mode == Mode::Truncate {
                (65_536, 16_384)
            } else {
                (4096, 0)
            };
            return Ok(broken(announced, sent));
        }
    }
    let response = route(&state, &client_cn, peer, request, counted).await;
    eprintln!(
        "{}: {peer} {method} {target} -> {}",
        state.name,
        response.status().as_u16()
    );
    Ok(response)
}

async fn route(
    state: &State,
    client_cn: &str,
    peer: SocketAddr,
    request: Request<Incoming>,
    counted: bool,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            if state.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
            }
        }
        (&Method::POST, "/admin/health/fail") => {
            state.healthy.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "healthz now fails\n")
        }
        (&Method::POST, "/admin/health/ok") => {
            state.healthy.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "healthz now passes\n")
        }
        (&Method::GET, "/count") => json_response(
            StatusCode::OK,
            &json!({"upstream": state.name, "count": state.served.load(Ordering::Relaxed)}),
        ),
        _ => {
            if !counted {
                state.served.fetch_add(1, Ordering::Relaxed);
            }
            served(state, client_cn, peer, request).await
        }
    }
}

/// The counted routes: `/status/CODE`, `/stream`, `/slow` and the echo.
async fn served(
    state: &State,
    client_cn: &str,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let body_bytes = match body_len(body).await {
        Ok(len) => len,
        Err(err) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {err}\n"),
            );
        }
    };
    let path = parts.uri.path();
    if let Some(code) = path.strip_prefix("/status/") {
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            Some(status) => text(status, &format!("{} says: {LEAK}", state.name)),
            None => text(StatusCode::BAD_REQUEST, "bad status code\n"),
        };
    }
    if path == "/stream" {
        let Some(bytes) = query_number(&parts.uri, "bytes") else {
            return text(StatusCode::BAD_REQUEST, "/stream needs ?bytes=N\n");
        };
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Either::Left(Either::Right(Filler::new(bytes))))
            .expect("valid response");
    }
    if path == "/slow" {
        let Some(ms) = query_number(&parts.uri, "ms") else {
            return text(StatusCode::BAD_REQUEST, "/slow needs ?ms=N\n");
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = BTreeMap::<&str, Vec<String>>::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .into_iter()
        .map(|(name, mut values)| {
            let value = if values.len() == 1 {
                json!(values.remove(0))
            } else {
                json!(values)
            };
            (name.to_owned(), value)
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "upstream": state.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or(path, |target| target.as_str()),
            "authority": parts.uri.authority().map(|authority| authority.as_str()),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_bytes": body_bytes,
            "client_cert_cn": client_cn,
            "peer": peer.to_string(),
        }),
    )
}

/// `key=N` from the query string.
fn query_number(uri: &http::Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == key)
        .and_then(|(_, value)| value.parse().ok())
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from(body.to_owned())))
        .expect("valid response")
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(value.to_string())))
        .expect("valid response")
}

fn full(bytes: Bytes) -> ResponseBody {
    Either::Left(Either::Left(Full::new(bytes)))
}

/// A 200 announcing `announced` bytes that sends `sent` of them, waits for the
/// head to leave, then fails, which makes hyper cut the connection.
fn broken(announced: u64, sent: usize) -> Response<ResponseBody> {
    let stream = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(http_body::Frame::data(Bytes::from(vec![b'x'; sent])))
    })
    .chain(futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(std::io::Error::other("mode: connection cut"))
    }))
    .filter(|frame| {
        let empty = matches!(frame, Ok(f) if f.data_ref().is_some_and(Bytes::is_empty));
        std::future::ready(!empty)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, announced)
        .body(Either::Right(StreamBody::new(stream.boxed())))
        .expect("valid response")
}

/// Makes the socket's close send a TCP RST instead of a FIN (SO_LINGER 0).
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is this connection's socket, alive while its request is served;
    // the option value is a properly sized `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
