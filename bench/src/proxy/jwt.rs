//! ES256 bearer tokens for the JWT scenarios, signed with an rcgen P-256 key: the
//! key HAProxy's `jwt_verify` (and, once it validates JWTs, the gateway) checks them
//! with, and compact JWS tokens with the claims both are configured to require.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey as _};

/// The `iss` the proxies require.
pub const ISSUER: &str = "https://idp.bench.test";
/// The `aud` the proxies require.
pub const AUDIENCE: &str = "api.bench.test";
/// The scope the route requires (the token carries it among others).
pub const SCOPE: &str = "orders:read";

/// An ES256 signing key.
pub struct TokenIssuer {
    key: KeyPair,
}

impl TokenIssuer {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .context("generating the ES256 key")?,
        })
    }

    /// The public key, SubjectPublicKeyInfo PEM (what `jwt_verify` reads).
    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// A token valid for an hour for `subject`, with [`SCOPE`] among its scopes.
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = r#"{"alg":"ES256","typ":"JWT"}"#;
        let claims = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"{subject}","iat":{now},"exp":{},"scope":"profile {SCOPE} orders:write"}}"#,
            now + 3600
        );
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.as_bytes()),
            URL_SAFE_NO_PAD.encode(claims.as_bytes())
        );
        let der = self
            .key
            .sign(signing_input.as_bytes())
            .context("signing a token")?;
        let fixed = der_to_fixed(&der).ok_or_else(|| anyhow!("unexpected ECDSA signature"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(fixed)))
    }
}

/// An ASN.1 `SEQUENCE { INTEGER r, INTEGER s }` as the 64-byte `r || s` JWS wants.
fn der_to_fixed(der: &[u8]) -> Option<[u8; 64]> {
    let body = match der {
        [0x30, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        _ => return None,
    };
    let (r, rest) = der_integer(body)?;
    let (s, rest) = der_integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = [0; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    Some(out)
}

/// One DER INTEGER of at most 32 significant bytes, and what follows it.
fn der_integer(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let [0x02, len, rest @ ..] = der else {
        return None;
    };
    let len = usize::from(*len);
    if rest.len() < len {
        return None;
    }
    let (mut value, rest) = rest.split_at(len);
    while let [0, tail @ ..] = value {
        value = tail;
    }
    (value.len() <= 32).then_some((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64url_without_padding() {
        // RFC 7515 base64url: the alphabet with `-_`, no padding.
        assert_eq!(URL_SAFE_NO_PAD.encode(b""), "");
        assert_eq!(URL_SAFE_NO_PAD.encode(b"f"), "Zg");
        assert_eq!(URL_SAFE_NO_PAD.encode(b"fo"), "Zm8");
        assert_eq!(URL_SAFE_NO_PAD.encode(b"foo"), "Zm9v");
        assert_eq!(URL_SAFE_NO_PAD.encode([0xfb, 0xff]), "-_8");
    }

    #[test]
    fn converts_der_signatures_to_fixed_width() {
        // r with a leading zero (high bit set), s short.
        let mut der = vec![0x30, 0, 0x02, 33, 0];
        der.extend([0x80; 32]);
        der.extend([0x02, 2, 0x01, 0x02]);
        der[1] = (der.len() - 2) as u8;
        let fixed = der_to_fixed(&der).expect("valid");
        assert_eq!(&fixed[..32], &[0x80; 32]);
        assert_eq!(&fixed[32..62], &[0; 30]);
        assert_eq!(&fixed[62..], &[1, 2]);
        assert!(der_to_fixed(&der[..der.len() - 1]).is_none());
    }

    #[test]
    fn tokens_have_three_parts_and_a_64_byte_signature() {
        let issuer = TokenIssuer::new().expect("a key");
        let token = issuer.token("bench").expect("a token");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].len(), 86);
    }
}
