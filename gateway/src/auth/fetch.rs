//! HTTPS to an identity provider: JWKS and discovery documents (GET) and token
//! introspection (POST). Only the configured CA is trusted, bodies are bounded,
//! and every call has a deadline, so a slow provider cannot stall requests.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::ClientConfig;

use crate::{config::secret::redacted_url, tls};

/// Largest document accepted from a provider.
const MAX_BODY: usize = 1024 * 1024;

/// A call to the provider failed. The URL it names is [`redacted_url`]: a
/// provider URL may carry a token in its query.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("CA for the identity provider: {0}")]
    Ca(#[from] tls::TlsFileError),
}

/// A fetched document and how long the provider says it stays fresh.
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// An HTTPS client trusting one CA bundle.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(ca: &Path, timeout: Duration) -> Result<Self, FetchError> {
        let roots = tls::load_roots(ca)?;
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(tls::VERSIONS)
            .map_err(tls::TlsFileError::from)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()));
        self.send(url, request).await
    }

    /// POSTs a form with HTTP Basic client authentication.
    pub async fn post_form(
        &self,
        url: &str,
        form: String,
        basic: &str,
    ) -> Result<Fetched, FetchError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, basic)
            .body(Full::new(Bytes::from(form)));
        self.send(url, request).await
    }

    async fn send(
        &self,
        url: &str,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Fetched, FetchError> {
        let shown = redacted_url(url);
        let failed = |message: String| FetchError::Failed {
            url: shown.clone(),
            message,
        };
        let request = request.map_err(|err| failed(err.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| failed(format!("{err:?}")))?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: shown.clone(),
                    status,
                });
            }
            let max_age = max_age(response.headers());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|err| failed(format!("reading the body: {err}")))?
                .to_bytes();
            Ok(Fetched { body, max_age })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout {
                url: shown.clone(),
                timeout: self.timeout,
            })?
    }
}

/// `Cache-Control: max-age=N`, unless `no-store`/`no-cache` say not to reuse.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            age = seconds
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    #[test]
    fn reads_max_age() {
        let mut headers = HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            header::CACHE_CONTROL,
            "public, max-age=600".parse().expect("header value"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(600)));
        headers.insert(
            header::CACHE_CONTROL,
            "no-store".parse().expect("header value"),
        );
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
    }
}
