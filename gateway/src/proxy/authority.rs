//! Whether a request's host belongs on its connection (RFC 9110 §7.4, RFC 9113
//! §9.1.1): on a listener with `sni_host_match`, the host must be the SNI name
//! or one the certificate that SNI selected was configured for, so HTTP/2
//! connection coalescing keeps working while a connection set up for one name
//! cannot be used to reach another → 421 Misdirected Request.

use crate::{config::ListenerConfig, policy::routes::normalize_host};

/// Whether `host` (a `Host` value or `:authority`, any case, optional port)
/// may be served on a connection whose client sent `sni`.
pub fn covers(listener: &ListenerConfig, sni: Option<&str>, host: &str) -> bool {
    let host = normalize_host(host);
    let names = match sni {
        Some(sni) => {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if host == sni.as_str() {
                return true;
            }
            // The certificate the SNI selected; an SNI no certificate names got
            // the default one, which says nothing about other names.
            let exact = listener
                .certificates
                .iter()
                .find(|c| c.server_names.iter().any(|n| n.eq_ignore_ascii_case(&sni)));
            let selected = exact.or_else(|| {
                listener
                    .certificates
                    .iter()
                    .flat_map(|c| c.server_names.iter().map(move |n| (n, c)))
                    .filter(|(pattern, _)| pattern_covers(pattern, &sni))
                    .max_by_key(|(pattern, _)| pattern.len())
                    .map(|(_, c)| c)
            });
            match selected {
                Some(certificate) => &certificate.server_names,
                None => return false,
            }
        }
        None => match listener.certificates.first() {
            Some(certificate) => &certificate.server_names,
            None => return false,
        },
    };
    names.iter().any(|pattern| pattern_covers(pattern, &host))
}

/// `api.example.com` covers itself; `*.example.com` covers names below
/// `example.com` (the way the listener's SNI resolver picks certificates).
fn pattern_covers(pattern: &str, name: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertificateConfig;

    fn listener() -> ListenerConfig {
        let certificate = |names: &[&str]| CertificateConfig {
            cert: "c.pem".into(),
            key: "c.key".into(),
            server_names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        toml::from_str::<ListenerConfig>(
            "name = \"mtls\"\naddress = \"127.0.0.1:1\"\ncertificates = []\n",
        )
        .map(|l| ListenerConfig {
            certificates: vec![
                certificate(&["admin.example", "*.admin.example"]),
                certificate(&["ops.example"]),
            ],
            ..l
        })
        .unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn the_host_must_be_the_sni_or_on_the_certificate_it_selected() {
        let l = listener();
        assert!(covers(&l, Some("admin.example"), "ADMIN.example:443"));
        assert!(covers(&l, Some("admin.example"), "x.admin.example"));
        assert!(covers(&l, Some("a.admin.example"), "admin.example."));
        assert!(covers(&l, Some("ops.example"), "ops.example"));
        assert!(!covers(&l, Some("ops.example"), "admin.example"));
        assert!(!covers(&l, Some("admin.example"), "ops.example"));
        // An unknown SNI got the default certificate: only its own name passes.
        assert!(covers(&l, Some("evil.example"), "evil.example"));
        assert!(!covers(&l, Some("evil.example"), "admin.example"));
        // No SNI: the default certificate's names.
        assert!(covers(&l, None, "admin.example"));
        assert!(!covers(&l, None, "ops.example"));
    }
}
