//! PEM files to rustls types, for both sides: the listener's certificates and the
//! upstream client's identity and CA. Every error names the file, because a bad file
//! at reload must be found by an operator reading one log line.

pub mod inspect;

use std::{path::Path, sync::Arc, time::SystemTime};

use rustls::{RootCertStore, crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{path}: cannot read PEM: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: holds no certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { path: String },
    #[error("{path}: unusable private key: {source}")]
    Key { path: String, source: rustls::Error },
    #[error("{cert}: does not match the private key in {key}")]
    KeyMismatch { cert: String, key: String },
    #[error("{path}: no usable CA certificate in it ({rejected} rejected)")]
    NoCa { path: String, rejected: usize },
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The process-wide crypto provider (aws-lc-rs): modern suites only, TLS 1.2 and 1.3.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Protocol versions the gateway speaks, on both sides.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a certificate chain, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem_error = |message: String| TlsFileError::Pem {
        path: display(path),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: display(path),
        });
    }
    Ok(certs)
}

/// Reads a PKCS#8, PKCS#1 or SEC1 private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| TlsFileError::Pem {
        path: display(path),
        message: err.to_string(),
    })
}

/// A chain and its key, checked to belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsFileError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsFileError::Key {
            path: display(key),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(TlsFileError::KeyMismatch {
            cert: display(cert),
            key: display(key),
        }),
    }
}

/// A CA bundle as trust roots.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(load_certs(path)?);
    if roots.is_empty() {
        return Err(TlsFileError::NoCa {
            path: display(path),
            rejected,
        });
    }
    Ok(roots)
}

/// A cheap fingerprint of files (modification time and size), to notice changes
/// without reading them.
pub fn fingerprint<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}
