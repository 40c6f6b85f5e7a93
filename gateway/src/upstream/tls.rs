//! The gateway's side of mutual TLS to the fleet: it presents its client
//! certificate and accepts an endpoint only if the endpoint's certificate chains to
//! the fleet's CA and carries the pool's `server_name`, whatever address it was
//! dialled at. An endpoint that fails either check is never sent a byte of HTTP.

use std::{path::Path, time::SystemTime};

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use crate::{
    config::UpstreamConfig,
    tls::{self, TlsFileError},
};

/// A connector for one pool: TCP with the pool's connect timeout, then TLS.
pub fn connector(config: &UpstreamConfig) -> Result<HttpsConnector<HttpConnector>, TlsFileError> {
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
    tcp.set_connect_timeout(Some(config.connect_timeout));
    tcp.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(server_name));
    Ok(if config.http2 {
        builder.enable_http1().enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    })
}

/// What the pool's TLS was built from, to tell on reload whether files changed.
pub fn fingerprint(config: &UpstreamConfig) -> Vec<Option<(SystemTime, u64)>> {
    tls::fingerprint([
        config.ca.as_path(),
        config.client_cert.as_path(),
        config.client_key.as_path(),
    ] as [&Path; 3])
}
