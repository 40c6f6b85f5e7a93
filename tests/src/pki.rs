//! Certificates generated at test time with rcgen: a private CA per test, server
//! certificates (ECDSA P-256 by default, RSA-2048 on request, expired on request) and
//! client certificates. Everything is valid from an hour ago until a day from now.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority: its self-signed certificate and the key that signs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate issued by a [`Ca`] and its private key (PKCS#8), both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The key algorithm and validity of a server certificate.
#[derive(Clone, Copy)]
enum ServerKind {
    EcdsaP256,
    Rsa2048,
    Expired,
}

impl Ca {
    /// A new CA whose subject common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, false);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating a CA key");
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// The CA certificate, PEM: what a peer trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `dir/<stem>.crt` and returns that path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.crt"));
        write_file(&path, &self.cert_pem);
        path
    }

    /// An ECDSA P-256 server certificate for `names`: each is an IP address SAN if it
    /// parses as one, else a DNS name SAN. The first name is also the common name.
    /// A certificate "for another name" is simply one issued for a different name.
    pub fn issue_server(&self, names: &[&str]) -> Issued {
        self.server(names, ServerKind::EcdsaP256)
    }

    /// Like [`Ca::issue_server`] with an RSA-2048 key (signed with SHA-256).
    pub fn issue_server_rsa(&self, names: &[&str]) -> Issued {
        self.server(names, ServerKind::Rsa2048)
    }

    /// Like [`Ca::issue_server`], but it expired a day ago.
    pub fn issue_server_expired(&self, names: &[&str]) -> Issued {
        self.server(names, ServerKind::Expired)
    }

    /// A client certificate (ECDSA P-256, `clientAuth`) with this common name.
    pub fn issue_client(&self, common_name: &str) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, false);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating a client key");
        self.sign(&params, key)
    }

    fn server(&self, names: &[&str], kind: ServerKind) -> Issued {
        let first = names.first().expect("a server certificate needs a name");
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|err| panic!("invalid server name in {names:?}: {err}"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, matches!(kind, ServerKind::Expired));
        let key = match kind {
            ServerKind::EcdsaP256 | ServerKind::Expired => {
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            }
            ServerKind::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        }
        .expect("generating a server key");
        self.sign(&params, key)
    }

    fn sign(&self, params: &CertificateParams, key: KeyPair) -> Issued {
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate with the test CA");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key`; returns (certificate, key) paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, &self.cert_pem);
        write_file(&key, &self.key_pem);
        (cert, key)
    }
}

/// Valid from an hour ago until a day from now, or (`expired`) for one day ending a
/// day ago.
fn set_validity(params: &mut CertificateParams, expired: bool) {
    let now = OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - Duration::days(2);
        params.not_after = now - Duration::days(1);
    } else {
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
}
