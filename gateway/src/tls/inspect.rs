//! What `gateway check` finds in the certificates the config names, beyond
//! "does it load": a certificate outside its validity period (expired or not
//! yet valid), a `server_names` entry the listener's certificate does not cover,
//! and — as a warning — a certificate that expires within [`EXPIRY_WARNING`].

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

use super::load_certs;
use crate::config::Config;

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Problems (refuse the config) and warnings, each with its key path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// Inspects every certificate file in `config` as of `now`. Files that do not
/// load are left to the loading check, which names them already.
pub fn inspect(config: &Config, now: SystemTime) -> Findings {
    let mut findings = Findings::default();
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, cert) in listener.certificates.iter().enumerate() {
            let key = format!("listener[{i}].certificates[{j}]");
            if let Some(leaf) = findings.file(&format!("{key}.cert"), &cert.cert, now) {
                for name in &cert.server_names {
                    if let Err(why) = covers(&leaf, name) {
                        findings.problems.push(format!(
                            "{key}.server_names: {name:?} is not covered by {} ({why})",
                            cert.cert.display()
                        ));
                    }
                }
            }
        }
        if let Some(ca) = &listener.client_ca {
            findings.file(&format!("listener[{i}].client_ca"), ca, now);
        }
    }
    for (name, upstream) in &config.upstreams {
        findings.file(&format!("upstream.{name}.ca"), &upstream.ca, now);
        findings.file(
            &format!("upstream.{name}.client_cert"),
            &upstream.client_cert,
            now,
        );
    }
    for (name, issuer) in &config.auth.issuers {
        if let Some(ca) = &issuer.ca {
            findings.file(&format!("auth.issuers.{name}.ca"), ca, now);
        }
    }
    for (i, alert) in config.alerts.iter().enumerate() {
        if let Some(ca) = &alert.webhook_ca {
            findings.file(&format!("alert[{i}].webhook_ca"), ca, now);
        }
    }
    findings
}

/// The leaf certificate of a parsed file, kept for the name check.
struct Leaf {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Findings {
    /// Checks the validity of every certificate in `path`; returns the first
    /// (the leaf of a chain) when it parses.
    fn file(&mut self, key: &str, path: &Path, now: SystemTime) -> Option<Leaf> {
        let certs = load_certs(path).ok()?;
        let now = unix(now);
        let mut leaf = None;
        for (n, der) in certs.iter().enumerate() {
            let place = if certs.len() == 1 {
                path.display().to_string()
            } else {
                format!(
                    "{} (certificate {} of {})",
                    path.display(),
                    n + 1,
                    certs.len()
                )
            };
            let cert = match X509Certificate::from_der(der) {
                Ok((_, cert)) => cert,
                Err(err) => {
                    self.problems.push(format!(
                        "{key}: {place}: not a valid X.509 certificate: {err}"
                    ));
                    continue;
                }
            };
            let subject = cert.subject().to_string();
            let validity = cert.validity();
            let (from, until) = (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            );
            if now < from {
                self.problems.push(format!(
                    "{key}: {place} ({subject}) is not valid until {}",
                    rfc3339(from)
                ));
            } else if now > until {
                self.problems.push(format!(
                    "{key}: {place} ({subject}) expired at {}",
                    rfc3339(until)
                ));
            } else if until - now < EXPIRY_WARNING.as_secs() as i64 {
                self.warnings.push(format!(
                    "{key}: {place} ({subject}) expires at {} (in {} days)",
                    rfc3339(until),
                    (until - now) / 86_400
                ));
            }
            if n == 0 {
                leaf = Some(names(&cert));
            }
        }
        leaf
    }
}

fn names(cert: &X509Certificate<'_>) -> Leaf {
    let mut leaf = Leaf {
        dns: Vec::new(),
        ips: Vec::new(),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => leaf.dns.push(normalize(dns)),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        leaf.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        leaf.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    leaf
}

/// Lower case, without the root's trailing dot: how names compare (RFC 6125).
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether the certificate answers for `name` as clients check it (RFC 6125,
/// as rustls/webpki do): subjectAltName only (the subject's CN is ignored), a
/// wildcard only as the whole leftmost label, covering exactly one label, never
/// for a public-suffix-like two-label name. A wildcard in `server_names` needs
/// that same wildcard in the certificate.
fn covers(leaf: &Leaf, name: &str) -> Result<(), &'static str> {
    if leaf.dns.is_empty() && leaf.ips.is_empty() {
        return Err("the certificate has no subjectAltName; clients ignore its CN");
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return if leaf.ips.contains(&ip) {
            Ok(())
        } else {
            Err("no IP address SAN for it")
        };
    }
    let name = normalize(name);
    let matched = leaf.dns.iter().any(|san| {
        if *san == name {
            return true;
        }
        let Some(suffix) = san.strip_prefix("*.") else {
            return false;
        };
        // `*.com` covers nothing; `*.example.com` covers `a.example.com` only.
        if !suffix.contains('.') {
            return false;
        }
        name.split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && label != "*" && rest == suffix)
    });
    if matched {
        Ok(())
    } else {
        Err("no subjectAltName matches it")
    }
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339(secs: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(dns: &[&str]) -> Leaf {
        Leaf {
            dns: dns.iter().map(|d| normalize(d)).collect(),
            ips: vec!["198.18.0.1".parse().expect("ip")],
        }
    }

    #[test]
    fn names_are_covered_as_clients_check_them() {
        let cert = leaf(&["API.example.com.", "*.svc.example.com", "*.com"]);
        for name in [
            "api.example.com",
            "Api.Example.Com",
            "api.example.com.",
            "a.svc.example.com",
            "*.svc.example.com",
            "*.SVC.example.com.",
            "198.18.0.1",
        ] {
            assert_eq!(covers(&cert, name), Ok(()), "{name}");
        }
        for name in [
            "example.com",
            "www.api.example.com",
            "svc.example.com",
            "a.b.svc.example.com",
            "*.example.com",
            "x.com",
            "198.18.0.2",
            "2001:2::1",
            "",
        ] {
            assert!(covers(&cert, name).is_err(), "{name}");
        }
        let no_san = Leaf {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        assert!(covers(&no_san, "api.example.com").is_err());
    }

    /// A self-signed certificate for `names`, valid between the two years, in `dir`.
    fn write_cert(dir: &Path, stem: &str, names: &[&str], from: i32, until: i32) -> String {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
        path.display().to_string()
    }

    #[test]
    fn expired_future_expiring_and_uncovered_certificates_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let good = write_cert(d, "good", &["api.example.com", "*.example.net"], 2020, 2090);
        let expired = write_cert(d, "expired", &["api.example.com"], 2018, 2020);
        let future = write_cert(d, "future", &["api.example.com"], 2080, 2090);
        let text = format!(
            r#"
[xdp]
enabled = false
[[listener]]
name = "public"
address = "198.18.0.1:8443"
[[listener.certificates]]
cert = {good:?}
key = "unused.key"
server_names = ["api.example.com", "API.example.com.", "a.example.net", "*.example.net", "example.net", "www.example.com"]
[[listener.certificates]]
cert = {expired:?}
key = "unused.key"
[upstream.fleet]
endpoints = ["198.18.1.10:8443"]
server_name = "fleet.internal"
ca = {future:?}
client_cert = {good:?}
client_key = "unused.key"
"#
        );
        let config = Config::parse(Path::new("t.toml"), &text).expect("valid");
        // 2030-01-01: 60 years before the good one ends.
        let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        let found = inspect(&config, now);
        let all = found.problems.join("\n");
        assert_eq!(found.problems.len(), 4, "{all}");
        assert!(
            all.contains(
                "listener[0].certificates[0].server_names: \"example.net\" is not covered"
            ),
            "{all}"
        );
        assert!(all.contains("\"www.example.com\" is not covered"), "{all}");
        assert!(
            all.contains("listener[0].certificates[1].cert: ")
                && all.contains("expired at 2020-01-01T00:00:00Z"),
            "{all}"
        );
        assert!(
            all.contains("upstream.fleet.ca: ")
                && all.contains("is not valid until 2080-01-01T00:00:00Z"),
            "{all}"
        );
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        // 20 days before they end: a warning for each use of the good one (listener,
        // upstream client) and for the once-future CA, which is no problem any more.
        let late = UNIX_EPOCH + Duration::from_secs(3_786_912_000 - 20 * 86_400);
        let found = inspect(&config, late);
        assert_eq!(found.problems.len(), 3, "{:?}", found.problems);
        assert!(!found.problems.join("").contains("upstream.fleet.ca"));
        assert_eq!(found.warnings.len(), 3, "{:?}", found.warnings);
        assert!(
            found.warnings[0].contains("expires at 2090-01-01T00:00:00Z (in 20 days)"),
            "{:?}",
            found.warnings
        );
    }
}
