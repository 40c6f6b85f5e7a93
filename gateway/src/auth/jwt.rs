//! JWT validation for one issuer, on top of `jsonwebtoken`: the algorithm must
//! be on the issuer's allowlist and of the key's type (so an RSA public key is
//! never an HMAC secret), keys come only from the issuer's key set (never from
//! `jku`, `x5u` or an embedded `jwk`), and `iss`, `aud` and `exp` are required.

use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header};
use serde_json::Value;

use super::jwks::{Fingerprint, Key, Keys};
use crate::config::IssuerConfig;

/// Why a token was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} not accepted")]
    Algorithm(String),
    #[error("unexpected token type")]
    Type,
    #[error("unknown key id")]
    UnknownKid,
    #[error("no key of the token's type")]
    NoKey,
    #[error("invalid signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    Lifetime,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    #[error("invalid claims")]
    Claims,
}

/// The issuer's validation rules, built once per configuration.
pub struct Rules {
    algorithms: Vec<Algorithm>,
    validation: Validation,
    typ: Option<String>,
    leeway: u64,
    max_lifetime: Option<u64>,
}

impl Rules {
    pub fn new(config: &IssuerConfig) -> Self {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|alg| alg.parse::<Algorithm>().ok())
            .filter(|alg| alg.family() != jsonwebtoken::AlgorithmFamily::Hmac)
            .collect();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = config.leeway.as_secs();
        Self {
            algorithms,
            validation,
            typ: config.typ.clone(),
            leeway: config.leeway.as_secs(),
            max_lifetime: config.max_lifetime.map(|d| d.as_secs()),
        }
    }

    /// The header, if it is well formed and acceptable for this issuer.
    pub fn header(&self, token: &str) -> Result<Header, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        // RFC 7515 §4.1.11: extensions we do not understand must be refused.
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        if let Some(typ) = &self.typ {
            let found = header.typ.as_deref().unwrap_or_default();
            let bare = found.strip_prefix("application/").unwrap_or(found);
            if !bare.eq_ignore_ascii_case(typ) {
                return Err(JwtError::Type);
            }
        }
        Ok(header)
    }

    /// Verifies `token` with `keys`; the claims and the key that verified
    /// them on success. [`JwtError::UnknownKid`] tells the caller a key
    /// refetch may help.
    pub fn verify(
        &self,
        token: &str,
        header: &Header,
        keys: &Keys,
    ) -> Result<(Value, Fingerprint), JwtError> {
        match &header.kid {
            Some(kid) => {
                let key = keys.by_kid.get(kid).ok_or(JwtError::UnknownKid)?;
                self.verify_with(token, header.alg, key)
            }
            None => {
                let mut last = JwtError::NoKey;
                for key in &keys.unnamed {
                    match self.verify_with(token, header.alg, key) {
                        Err(err @ (JwtError::NoKey | JwtError::Signature)) => last = err,
                        other => return other,
                    }
                }
                Err(last)
            }
        }
    }

    fn verify_with(
        &self,
        token: &str,
        alg: Algorithm,
        key: &Key,
    ) -> Result<(Value, Fingerprint), JwtError> {
        if key.decoding.family() != alg.family() || key.alg.is_some_and(|pinned| pinned != alg) {
            return Err(JwtError::NoKey);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let data = decode::<Value>(token, &key.decoding, &validation).map_err(map_error)?;
        let claims = data.claims;
        self.check_times(&claims)?;
        Ok((claims, key.fingerprint))
    }

    /// `iat` and the lifetime, which `jsonwebtoken` leaves to us.
    fn check_times(&self, claims: &Value) -> Result<(), JwtError> {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = claims["exp"].as_u64().ok_or(JwtError::Claims)?;
        let iat = match &claims["iat"] {
            Value::Null => None,
            value => Some(value.as_u64().ok_or(JwtError::Claims)?),
        };
        if iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(JwtError::IssuedInFuture);
        }
        if let Some(max) = self.max_lifetime {
            let start = iat.unwrap_or(now);
            if exp.saturating_sub(start) > max {
                return Err(JwtError::Lifetime);
            }
        }
        Ok(())
    }
}

fn map_error(err: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.kind() {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            JwtError::Signature
        }
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::Issuer,
        K::InvalidAudience => JwtError::Audience,
        K::MissingRequiredClaim(claim) => JwtError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "required",
        }),
        K::InvalidAlgorithm | K::MissingAlgorithm => JwtError::NoKey,
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => JwtError::Malformed,
        _ => JwtError::Claims,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc, time::Duration};

    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
    };
    use jsonwebtoken::{DecodingKey, EncodingKey, encode};
    use serde_json::json;

    use super::*;

    struct TestKey {
        alg: Algorithm,
        encoding: EncodingKey,
        decoding: DecodingKey,
    }

    fn ed25519() -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        TestKey {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
        }
    }

    fn p256() -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("pair");
        TestKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding: DecodingKey::from_ec_der(pair.public_key().as_ref()),
        }
    }

    fn config() -> IssuerConfig {
        toml::from_str(
            "issuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"/dev/null\"\n",
        )
        .expect("issuer")
    }

    fn keys(entries: Vec<(&str, &TestKey, Option<Algorithm>)>) -> Keys {
        Keys {
            by_kid: entries
                .into_iter()
                .map(|(kid, key, alg)| {
                    (
                        kid.to_owned(),
                        Arc::new(Key {
                            decoding: key.decoding.clone(),
                            alg,
                            fingerprint: [0; 32],
                        }),
                    )
                })
                .collect::<HashMap<_, _>>(),
            ..Keys::default()
        }
    }

    fn sign(key: &TestKey, kid: &str, typ: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_owned());
        header.typ = typ.map(str::to_owned);
        encode(&header, claims, &key.encoding).expect("token")
    }

    fn claims(change: impl FnOnce(&mut Value)) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({"iss": "https://idp.test", "aud": "api", "sub": "s", "iat": now, "exp": now + 300});
        change(&mut claims);
        claims
    }

    fn check(rules: &Rules, keys: &Keys, token: &str) -> Result<Value, JwtError> {
        let header = rules.header(token)?;
        rules.verify(token, &header, keys).map(|(claims, _)| claims)
    }

    #[test]
    fn typ_lifetime_iat_and_key_type_rules() {
        let ed = ed25519();
        let ed_token = |typ, claims: &Value| sign(&ed, "ed", typ, claims);
        let mut config = config();
        config.typ = Some("at+jwt".to_owned());
        config.max_lifetime = Some(Duration::from_secs(600));
        let rules = Rules::new(&config);
        let p = p256();
        let p_token = sign(&p, "ed", None, &claims(|_| {}));
        let other = p256();
        let keys = keys(vec![
            ("ed", &ed, None),
            ("pinned", &other, Some(Algorithm::EdDSA)),
        ]);

        assert!(check(&rules, &keys, &ed_token(Some("at+jwt"), &claims(|_| {}))).is_ok());
        assert!(
            check(
                &rules,
                &keys,
                &ed_token(Some("application/at+jwt"), &claims(|_| {}))
            )
            .is_ok()
        );
        assert_eq!(
            check(&rules, &keys, &ed_token(Some("JWT"), &claims(|_| {}))),
            Err(JwtError::Type)
        );
        let now = jsonwebtoken::get_current_timestamp();
        assert_eq!(
            check(
                &rules,
                &keys,
                &ed_token(Some("at+jwt"), &claims(|c| c["exp"] = json!(now + 3600)))
            ),
            Err(JwtError::Lifetime)
        );
        assert_eq!(
            check(
                &rules,
                &keys,
                &ed_token(Some("at+jwt"), &claims(|c| c["iat"] = json!(now + 3600)))
            ),
            Err(JwtError::IssuedInFuture)
        );
        // An ES256 token naming the Ed25519 key's kid: the key's type decides.
        let mut untyped = config.clone();
        untyped.typ = None;
        let rules = Rules::new(&untyped);
        assert_eq!(check(&rules, &keys, &p_token), Err(JwtError::NoKey));
        // A key whose JWK pins EdDSA is not used for ES256.
        let pinned = sign(&p, "pinned", None, &claims(|_| {}));
        assert_eq!(check(&rules, &keys, &pinned), Err(JwtError::NoKey));
    }
}
