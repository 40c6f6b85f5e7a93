//! The gateway's side of mutual TLS to the fleet: it presents its client
//! certificate and accepts an endpoint only if the endpoint's certificate chains to
//! the fleet's CA and carries the pool's `server_name`, whatever address it was
//! dialled at. An endpoint that fails either check is never sent a byte of HTTP.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::BoxError;
use crate::{
    config::UpstreamConfig,
    tls::{self, TlsFileError},
};

/// A connector for one pool: TCP, then TLS, both within the pool's `connect_timeout`.
pub fn connector(config: &UpstreamConfig) -> Result<TimedConnector, TlsFileError> {
    let roots = tls::load_roots(&config.ca)?;
    let chain = tls::load_certs(&config.client_cert)?;
    let key = tls::load_key(&config.client_key)?;
    // Checks the pair before rustls takes it, for an error that names both files.
    tls::load_certified_key(&config.client_cert, &config.client_key)?;
    // ALPN is left to the connector builder: `enable_http2` offers h2.
    let client = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let server_name = ServerName::try_from(config.server_name.clone()).map_err(|err| {
        TlsFileError::Config(rustls::Error::General(format!(
            "server_name {:?}: {err}",
            config.server_name
        )))
    })?;

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(server_name));
    let inner = if config.http2 {
        builder.enable_http1().enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    };
    Ok(TimedConnector {
        inner,
        timeout: config.connect_timeout,
    })
}

/// The TLS connector with one deadline over TCP connect and TLS handshake together.
/// `HttpConnector`'s own timeout covers only TCP, and hyper-rustls waits for a
/// handshake as long as the peer lets it: a blackholed host that accepts TCP would
/// otherwise cost every request the whole route timeout. An error from here is a
/// connect error to the client (`is_connect()`), so nothing was sent and any method
/// may be retried elsewhere.
#[derive(Clone)]
pub struct TimedConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

/// The connect deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("TCP connect and TLS handshake did not finish within {0:?}")]
pub struct ConnectTimeout(pub Duration);

type Connection = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for TimedConnector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            tokio::time::timeout(timeout, connecting)
                .await
                .unwrap_or_else(|_| Err(Box::new(ConnectTimeout(timeout))))
        })
    }
}

/// What the pool's TLS was built from, to tell on reload whether files changed.
pub fn fingerprint(config: &UpstreamConfig) -> Vec<Option<(SystemTime, u64)>> {
    tls::fingerprint([
        config.ca.as_path(),
        config.client_cert.as_path(),
        config.client_key.as_path(),
    ] as [&Path; 3])
}
