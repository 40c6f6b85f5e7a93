//! A TLS client for tests: it trusts one CA, always names the same server (SNI and
//! certificate check), optionally presents a client certificate, and speaks exactly
//! the HTTP version asked for (checked against the negotiated ALPN). It connects to the
//! address given per request whatever the URI's host, so the URI carries the `Host` /
//! `:authority` the test wants the server to see.
//!
//! Also: [`raw_tls`] for byte-level tests, and [`Filler`] / [`body_len`] to send and
//! receive large bodies without holding them in memory.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes};
use http::{Request, Response, Uri, uri::Scheme};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        self,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::pki::Issued;

/// Any error a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body type of [`Client::send_streaming`].
pub type Body = BoxBody<Bytes, BoxError>;

/// Size of each chunk a [`Filler`] yields (the upstream's `/stream` uses it too).
pub const CHUNK: usize = 16 * 1024;

/// The HTTP version a [`Client`] speaks, offered as the only ALPN protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    fn alpn(self) -> &'static [u8] {
        match self {
            Self::Http1 => b"http/1.1",
            Self::Http2 => b"h2",
        }
    }
}

/// Why a request failed. The message includes the whole chain of causes (the TLS
/// alert, the ALPN mismatch, the connection reset…).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request to {addr} failed: {}", chain(.source))]
    Request {
        addr: SocketAddr,
        source: legacy::Error,
    },
    #[error("reading the response body from {addr} failed: {}", chain(.source.as_ref()))]
    Body { addr: SocketAddr, source: BoxError },
}

/// Options for a [`Client`]; see [`Client::builder`].
pub struct ClientBuilder {
    ca_pem: String,
    server_name: String,
    identity: Option<(String, String)>,
    protocol: Protocol,
    local: Option<IpAddr>,
}

impl ClientBuilder {
    /// Connects from this source address (one of several the namespace holds).
    pub fn local_address(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Presents this client certificate and key.
    pub fn identity(mut self, issued: &Issued) -> Self {
        self.identity = Some((issued.cert_pem.clone(), issued.key_pem.clone()));
        self
    }

    /// Speaks this HTTP version (HTTP/1.1 unless told).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn build(self) -> Client {
        let server_name = ServerName::try_from(self.server_name.clone())
            .unwrap_or_else(|err| panic!("invalid server name {:?}: {err}", self.server_name));
        let tls = tls_config(&self.ca_pem, self.identity.as_ref(), self.protocol);
        Client {
            connector: TlsConnector::from(Arc::new(tls)),
            server_name,
            protocol: self.protocol,
            local: self.local,
            pools: Mutex::new(HashMap::new()),
        }
    }
}

/// A pooling keep-alive HTTPS client; one pool per destination address.
pub struct Client {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    protocol: Protocol,
    local: Option<IpAddr>,
    pools: Mutex<HashMap<SocketAddr, legacy::Client<Connector, Body>>>,
}

impl Client {
    /// A client that trusts `ca_pem` and expects a certificate for `server_name` (a DNS
    /// name or an IP address), sending it as SNI when it is a DNS name.
    pub fn builder(ca_pem: &str, server_name: &str) -> ClientBuilder {
        ClientBuilder {
            ca_pem: ca_pem.to_owned(),
            server_name: server_name.to_owned(),
            identity: None,
            protocol: Protocol::Http1,
            local: None,
        }
    }

    /// Sends `request` to `addr` and reads the whole response body. A URI without
    /// scheme and authority (`/path?q`) gets `https://<server name>`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Error> {
        let request = request.map(|body| Full::new(body).map_err(|never| match never {}).boxed());
        let response = self.send_streaming(addr, request).await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| Error::Body {
                addr,
                source: err.into(),
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    /// Like [`Client::send`] with a streaming request body, returning the response
    /// before its body has been read. Panics if the response came over another HTTP
    /// version than this client speaks (the ALPN check makes that a hyper bug).
    pub async fn send_streaming(
        &self,
        addr: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        if request.uri().authority().is_none() {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(Scheme::HTTPS);
            parts.authority = Some(
                self.server_name
                    .to_str()
                    .parse()
                    .expect("a server name is a valid authority"),
            );
            *request.uri_mut() = Uri::from_parts(parts).expect("absolute URI");
        }
        let client = self.pool(addr);
        let response = client
            .request(request)
            .await
            .map_err(|source| Error::Request { addr, source })?;
        let expected = match self.protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            Protocol::Http2 => http::Version::HTTP_2,
        };
        assert_eq!(
            response.version(),
            expected,
            "the response from {addr} came over another HTTP version"
        );
        Ok(response)
    }

    /// Convenience: `GET path` (see [`Client::send`]).
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Response<Bytes>, Error> {
        let request = Request::get(path)
            .body(Bytes::new())
            .unwrap_or_else(|err| panic!("invalid request path {path:?}: {err}"));
        self.send(addr, request).await
    }

    fn pool(&self, addr: SocketAddr) -> legacy::Client<Connector, Body> {
        let mut pools = self.pools.lock().expect("pool map lock");
        pools
            .entry(addr)
            .or_insert_with(|| {
                legacy::Client::builder(TokioExecutor::new())
                    .http2_only(self.protocol == Protocol::Http2)
                    .build(Connector {
                        addr,
                        tls: self.connector.clone(),
                        server_name: self.server_name.clone(),
                        protocol: self.protocol,
                        local: self.local,
                    })
            })
            .clone()
    }
}

/// The JSON body of a response; panics with the status and body when it is not JSON.
pub fn json(response: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(response.body()).unwrap_or_else(|err| {
        panic!(
            "invalid JSON ({err}) with status {}: {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        )
    })
}

/// A TLS connection to `addr` for byte-level tests (slowloris, oversized headers,
/// malformed request lines): no client certificate, ALPN `http/1.1`. Panics if the
/// connection or handshake fails.
pub async fn raw_tls(addr: SocketAddr, server_name: &str, ca_pem: &str) -> TlsStream<TcpStream> {
    raw_tls_alpn(addr, server_name, ca_pem, Protocol::Http1).await
}

/// Like [`raw_tls`] with ALPN `protocol`: bytes of another protocol than the
/// one the client chose.
pub async fn raw_tls_alpn(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    protocol: Protocol,
) -> TlsStream<TcpStream> {
    tls_connect(None, addr, server_name, ca_pem, protocol)
        .await
        .unwrap_or_else(|err| panic!("TLS connection to {addr} as {server_name}: {err}"))
}

/// Like [`raw_tls`] from the local address `source` (any loopback address, for
/// tests that play many clients), returning the error instead of panicking.
pub async fn raw_tls_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
) -> io::Result<TlsStream<TcpStream>> {
    tls_connect(source, addr, server_name, ca_pem, Protocol::Http1).await
}

async fn tls_connect(
    source: Option<IpAddr>,
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    protocol: Protocol,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|err| panic!("invalid server name {server_name:?}: {err}"));
    let connector = TlsConnector::from(Arc::new(tls_config(ca_pem, None, protocol)));
    let tcp = tcp_from(addr, source).await?;
    tcp.set_nodelay(true)?;
    connector.connect(name, tcp).await
}

/// Reads a body to its end, counting bytes as frames arrive (nothing is kept).
pub async fn body_len<B: HttpBody>(body: B) -> Result<u64, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            total += data.remaining() as u64;
        }
    }
    Ok(total)
}

/// A body of `len` bytes of `x`, produced [`CHUNK`] bytes at a time as the peer
/// reads, so it is never whole in memory on either side.
pub struct Filler {
    remaining: u64,
}

impl Filler {
    pub fn new(len: u64) -> Self {
        Self { remaining: len }
    }

    /// As a request body for [`Client::send_streaming`].
    pub fn boxed(self) -> Body {
        BodyExt::map_err(self, |never| match never {}).boxed()
    }
}

impl HttpBody for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK_BYTES: [u8; CHUNK] = [b'x'; CHUNK];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(self.remaining).map_or(CHUNK, |left| left.min(CHUNK));
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK_BYTES[..len],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A request body sent as `pieces`, one chunk (HTTP/1.1) or DATA frame (HTTP/2)
/// each, with no length announced: for tests of framing that splits a payload.
pub fn pieces(pieces: impl IntoIterator<Item = Bytes>) -> Body {
    Pieces(pieces.into_iter().collect())
        .map_err(|never| match never {})
        .boxed()
}

struct Pieces(std::collections::VecDeque<Bytes>);

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Client TLS settings: trust `ca_pem` only, offer exactly `protocol` by ALPN.
fn tls_config(
    ca_pem: &str,
    identity: Option<&(String, String)>,
    protocol: Protocol,
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("the CA PEM holds certificates"))
            .expect("the CA certificate is usable as a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("the client certificate PEM is valid");
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .expect("the client key PEM is valid");
            builder
                .with_client_auth_cert(chain, key)
                .expect("the client certificate and key match")
        }
    };
    config.alpn_protocols = vec![protocol.alpn().to_vec()];
    config
}

/// TCP to `addr`, from the local address `source` when given.
async fn tcp_from(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// TCP to `addr` (from `local` when given), TLS handshake as `name`, and a check
/// that the server agreed to `protocol`.
async fn connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    connector: &TlsConnector,
    name: ServerName<'static>,
    protocol: Protocol,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(addr, local).await?;
    tcp.set_nodelay(true)?;
    let tls = connector.connect(name, tcp).await?;
    let negotiated = tls.get_ref().1.alpn_protocol();
    if negotiated != Some(protocol.alpn()) {
        return Err(io::Error::other(format!(
            "asked for ALPN {:?}, the server negotiated {:?}",
            String::from_utf8_lossy(protocol.alpn()),
            negotiated.map(String::from_utf8_lossy)
        )));
    }
    Ok(tls)
}

/// The connector of the pooled client: always `addr`, always the same server name.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    protocol: Protocol,
    local: Option<IpAddr>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsConnection>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = connect(
                this.addr,
                this.local,
                &this.tls,
                this.server_name,
                this.protocol,
            )
            .await?;
            Ok(TokioIo::new(TlsConnection {
                stream,
                h2: this.protocol == Protocol::Http2,
            }))
        })
    }
}

/// A client TLS stream that tells hyper-util's pool whether it carries HTTP/2.
struct TlsConnection {
    stream: TlsStream<TcpStream>,
    h2: bool,
}

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An error and its causes, `: `-separated.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
