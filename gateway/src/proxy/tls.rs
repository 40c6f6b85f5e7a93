//! The listener's TLS: TLS 1.2/1.3 with modern suites, ALPN `h2` and `http/1.1`,
//! certificates chosen by SNI, optional client certificates. The active
//! configuration is swapped atomically on reload, so open connections keep the
//! one they started with and a bad file never replaces a good one.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{ClientAuth, ListenerConfig},
    tls::{self, TlsFileError},
};

/// Certificates chosen by the client's SNI name: exact names first, then the
/// longest matching `*.` wildcard, then the listener's first certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, key)| key.clone())
            .or_else(|| Some(self.default.clone()))
    }
}

/// Builds the rustls configuration for one listener from its files.
pub fn server_config(listener: &ListenerConfig) -> Result<Arc<ServerConfig>, TlsFileError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for certificate in &listener.certificates {
        let key = Arc::new(tls::load_certified_key(
            &certificate.cert,
            &certificate.key,
        )?);
        default.get_or_insert_with(|| key.clone());
        for name in &certificate.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                None => {
                    exact.insert(name, key.clone());
                }
            }
        }
    }
    wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    let Some(default) = default else {
        return Err(TlsFileError::Config(rustls::Error::General(format!(
            "listener {} has no certificate",
            listener.name
        ))));
    };
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });

    let builder = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)?;
    let builder = match &listener.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(tls::load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, tls::provider());
            let verifier = match listener.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|err| {
                TlsFileError::Config(rustls::Error::General(format!(
                    "{}: client CA unusable: {err}",
                    ca.display()
                )))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's live TLS configuration and the files it came from.
pub struct ServerTls {
    listener: Mutex<ListenerConfig>,
    current: ArcSwap<ServerConfig>,
    seen: Mutex<Vec<Option<(std::time::SystemTime, u64)>>>,
}

impl ServerTls {
    pub fn new(listener: &ListenerConfig) -> Result<Self, TlsFileError> {
        Ok(Self {
            current: ArcSwap::new(server_config(listener)?),
            seen: Mutex::new(tls::fingerprint(
                files(listener).iter().map(PathBuf::as_path),
            )),
            listener: Mutex::new(listener.clone()),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Takes a new listener configuration (after a config reload) and rebuilds.
    pub fn update(&self, listener: &ListenerConfig) -> Result<(), TlsFileError> {
        let config = server_config(listener)?;
        *lock(&self.listener) = listener.clone();
        *lock(&self.seen) = tls::fingerprint(files(listener).iter().map(PathBuf::as_path));
        self.current.store(config);
        Ok(())
    }

    /// Rebuilds from the same files; on error the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let listener = lock(&self.listener).clone();
        self.update(&listener)
    }

    /// Rebuilds when a file's size or modification time changed. `Ok(true)` when
    /// a new configuration is active.
    pub fn reload_if_changed(&self) -> Result<bool, TlsFileError> {
        let listener = lock(&self.listener).clone();
        let now = tls::fingerprint(files(&listener).iter().map(PathBuf::as_path));
        if *lock(&self.seen) == now {
            return Ok(false);
        }
        // Remember the new state even if it fails, so a broken file is reported
        // once per change rather than on every check.
        *lock(&self.seen) = now;
        let config = server_config(&listener)?;
        self.current.store(config);
        crate::observe::metrics::record_listener_certificates(&listener);
        Ok(true)
    }
}

fn files(listener: &ListenerConfig) -> Vec<PathBuf> {
    listener
        .certificates
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .chain(listener.client_ca.clone())
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
