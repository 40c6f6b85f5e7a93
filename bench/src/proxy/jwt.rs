//! ES256 bearer tokens for the JWT scenarios, signed with an rcgen P-256 key: the
//! key HAProxy's `jwt_verify` (PEM) and the gateway (a JWKS file) check them with,
//! and compact JWS tokens with the claims both are configured to require.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey as _};

/// The `iss` the proxies require.
pub const ISSUER: &str = "https://idp.bench.test";
/// The `aud` the proxies require.
pub const AUDIENCE: &str = "api.bench.test";
/// The scope the route requires (the token carries it among others).
pub const SCOPE: &str = "orders:read";
/// The key id, in the token's header and in the gateway's key set.
const KID: &str = "bench";

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

    /// The public key as a JWKS document (what the gateway's `jwks_file` holds).
    pub fn jwks(&self) -> anyhow::Result<String> {
        // An uncompressed SEC1 point: 0x04, then x and y of 32 bytes each.
        let (x, y) = match self.key.public_key_raw() {
            [0x04, point @ ..] if point.len() == 64 => point.split_at(32),
            _ => bail!("the ES256 key's public point is not an uncompressed P-256 point"),
        };
        Ok(format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"{KID}","x":"{}","y":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        ))
    }

    /// A token valid for an hour for `subject`, with [`SCOPE`] among its scopes.
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        self.token_with_scopes(subject, &format!("profile {SCOPE} orders:write"))
    }

    /// A token valid for an hour for `subject` granting `scopes` (space-separated).
    pub fn token_with_scopes(&self, subject: &str, scopes: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{KID}"}}"#);
        let claims = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"{subject}","iat":{now},"exp":{},"scope":"{scopes}"}}"#,
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

    #[test]
    fn the_key_set_holds_the_public_point() {
        let issuer = TokenIssuer::new().expect("a key");
        let jwks: serde_json::Value =
            serde_json::from_str(&issuer.jwks().expect("a key set")).expect("JSON");
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], KID);
        let x = URL_SAFE_NO_PAD
            .decode(key["x"].as_str().expect("x"))
            .expect("base64url");
        assert_eq!(x, issuer.key.public_key_raw()[1..33]);
    }
}
