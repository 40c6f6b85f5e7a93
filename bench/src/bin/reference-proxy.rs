//! `reference-proxy`: the smallest forwarder of the gateway's stack, the reference row
//! of `gateway-bench proxy` (issue 17): TLS in (tokio-rustls), HTTP/1.1 and HTTP/2
//! from clients (hyper-util's auto server), one pooled keep-alive mTLS client
//! (hyper-util's legacy client over hyper-rustls, which keeps a pool per upstream
//! address) out, round robin. No routing, policy, logs or metrics: what it costs per
//! request is the floor of hyper + rustls + tokio, so the gateway's distance to it is
//! its own work and HAProxy's distance to it is the stack's.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::{body::Incoming, service::service_fn};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
#[command(about = "The smallest hyper + tokio-rustls TLS forwarder (the bench's reference)")]
struct Args {
    /// Address to accept TLS on.
    #[arg(long)]
    listen: SocketAddr,
    /// The server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The CA the upstreams' certificates chain to (PEM).
    #[arg(long)]
    upstream_ca: PathBuf,
    /// The client certificate presented to the upstreams (PEM).
    #[arg(long)]
    client_cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    client_key: PathBuf,
    /// The name the upstreams' certificates carry (SNI and verification).
    #[arg(long)]
    server_name: String,
    /// Upstream addresses, served round robin (repeatable).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<SocketAddr>,
}

type Body = Either<Incoming, Empty<Bytes>>;

/// What every request shares: the client and where to send the next request.
struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    /// `https://<address>` of each upstream, the authority the client pools by.
    upstreams: Vec<String>,
    next: AtomicUsize,
}

impl Forwarder {
    async fn forward(&self, mut request: Request<Incoming>) -> Response<Body> {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let Ok(uri) = format!("{}{path}", self.upstreams[at]).parse::<Uri>() else {
            return status(StatusCode::BAD_REQUEST);
        };
        *request.uri_mut() = uri;
        // HTTP/2 from the client, HTTP/1.1 to the fleet (as the gateway's default).
        *request.version_mut() = Version::HTTP_11;
        match self.client.request(request).await {
            Ok(response) => response.map(Either::Left),
            Err(_) => status(StatusCode::BAD_GATEWAY),
        }
    }
}

fn status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = status;
    response
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .with_context(|| format!("reading certificates from {}", path.display()))
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a key from {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Sized like the gateway's: tokio reads TOKIO_WORKER_THREADS, which the bench sets.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs(&args.cert)?, key(&args.key)?)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));

    let mut roots = RootCertStore::empty();
    for cert in certs(&args.upstream_ca)? {
        roots.add(cert)?;
    }
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&args.client_cert)?, key(&args.client_key)?)?;
    let Ok(server_name) = ServerName::try_from(args.server_name.clone()) else {
        bail!("--server-name {:?} is not a DNS name", args.server_name);
    };
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(server_name))
        .enable_http1()
        .wrap_connector(tcp);
    let forwarder = Arc::new(Forwarder {
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstreams: args
            .upstreams
            .iter()
            .map(|addr| format!("https://{addr}"))
            .collect(),
        next: AtomicUsize::new(0),
    });

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, forwarder) = (acceptor.clone(), forwarder.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |request| {
                let forwarder = forwarder.clone();
                async move { Ok::<_, std::convert::Infallible>(forwarder.forward(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
