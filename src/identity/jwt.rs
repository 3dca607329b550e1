//! JWT verification: HS256 / RS256 / ES256 with keys from files (a shared
//! secret, a PEM public key, or a JWKS). `exp` is required; `exp`/`nbf` are
//! checked with a leeway; `iss`/`aud` when configured. `alg: none` and any
//! algorithm not configured are refused before a key is looked at.

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::JwtConfig;

/// Why a token was refused. The text is safe to show the client and to log
/// (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {0} bytes, more than identity.jwt.max_token_bytes")]
    TooLarge(usize),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token has no kid, and the keys come from a JWKS")]
    NoKid,
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Keys by algorithm family.
struct StaticKeys {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
}

enum Keys {
    Static(StaticKeys),
    Jwks(JwkSet),
}

/// A verifier built once per configuration load.
pub struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    keys: Keys,
    cfg: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    match s.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(format!(
            "identity.jwt.algorithms: {s:?} is not supported (use HS256, RS256, ES256)"
        )),
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("identity.jwt.{what} {}: {e}", path.display()))
}

impl JwtVerifier {
    /// Load the keys; errors name the key and file.
    pub fn from_config(cfg: &JwtConfig) -> Result<JwtVerifier, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err("identity.jwt.algorithms is empty".into());
        }
        let keys = if let Some(path) = &cfg.jwks_file {
            if cfg.secret_file.is_some() || cfg.public_key_file.is_some() {
                return Err(
                    "identity.jwt: set jwks_file or secret_file/public_key_file, not both".into(),
                );
            }
            let set: JwkSet = serde_json::from_slice(&read(path, "jwks_file")?)
                .map_err(|e| format!("identity.jwt.jwks_file {}: {e}", path.display()))?;
            Keys::Jwks(set)
        } else {
            let mut k = StaticKeys {
                hmac: None,
                rsa: None,
                ec: None,
            };
            if let Some(path) = &cfg.secret_file {
                let mut secret = read(path, "secret_file")?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < 32 {
                    return Err(format!(
                        "identity.jwt.secret_file {}: an HS256 secret needs at least 32 bytes",
                        path.display()
                    ));
                }
                k.hmac = Some(DecodingKey::from_secret(&secret));
            }
            if let Some(path) = &cfg.public_key_file {
                let pem = read(path, "public_key_file")?;
                k.rsa = DecodingKey::from_rsa_pem(&pem).ok();
                k.ec = DecodingKey::from_ec_pem(&pem).ok();
                if k.rsa.is_none() && k.ec.is_none() {
                    return Err(format!(
                        "identity.jwt.public_key_file {}: not an RSA or EC public key in PEM",
                        path.display()
                    ));
                }
            }
            for a in &algorithms {
                let have = match a {
                    Algorithm::HS256 => k.hmac.is_some(),
                    Algorithm::RS256 => k.rsa.is_some(),
                    _ => k.ec.is_some(),
                };
                if !have {
                    return Err(format!("identity.jwt: algorithm {a:?} is accepted but no key for it is configured (secret_file for HS256, public_key_file for RS256/ES256, or jwks_file)"));
                }
            }
            Keys::Static(k)
        };
        Ok(JwtVerifier {
            algorithms,
            keys,
            cfg: cfg.clone(),
        })
    }

    /// Verify `token`; its claims (a JSON object) on success.
    pub fn verify(&self, token: &str) -> Result<serde_json::Value, TokenError> {
        let token = token.trim();
        if token.len() > self.cfg.max_token_bytes {
            return Err(TokenError::TooLarge(token.len()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let jwk_key;
        let key = match &self.keys {
            Keys::Static(k) => match header.alg {
                Algorithm::HS256 => k.hmac.as_ref(),
                Algorithm::RS256 => k.rsa.as_ref(),
                _ => k.ec.as_ref(),
            }
            .ok_or_else(|| TokenError::Algorithm(format!("{:?}", header.alg)))?,
            Keys::Jwks(set) => {
                let kid = header.kid.as_deref().ok_or(TokenError::NoKid)?;
                let jwk = set
                    .find(kid)
                    .ok_or_else(|| TokenError::UnknownKid(kid.to_string()))?;
                jwk_key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| TokenError::Invalid(format!("JWKS key {kid:?}: {e}")))?;
                &jwk_key
            }
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.cfg.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.cfg.issuer {
            v.set_issuer(&[iss]);
        }
        if self.cfg.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.aud = Some(self.cfg.audience.iter().cloned().collect::<HashSet<_>>());
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if !data.claims.is_object() {
            return Err(TokenError::Malformed("claims are not a JSON object".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs_verifier(dir: &tempfile::TempDir, aud: &[&str]) -> JwtVerifier {
        let path = dir.path().join("secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["HS256".into()],
            secret_file: Some(path),
            issuer: Some("https://issuer.test".into()),
            audience: aud.iter().map(|s| s.to_string()).collect(),
            leeway_secs: 5,
            ..JwtConfig::default()
        })
        .unwrap()
    }

    fn hs_token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": "pgward", "exp": now() + 300})
    }

    #[test]
    fn accepts_a_valid_token_and_returns_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(&dir, &["pgward"]);
        let claims = v.verify(&hs_token(good_claims())).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn refuses_expired_early_wrong_issuer_audience_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(&dir, &["pgward"]);
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        assert!(
            matches!(v.verify(&hs_token(c)), Err(TokenError::Invalid(e)) if e.contains("xpired"))
        );
        let mut c = good_claims();
        c["exp"] = json!(now() - 2);
        assert!(v.verify(&hs_token(c)).is_ok(), "within the leeway");
        let mut c = good_claims();
        c["nbf"] = json!(now() + 120);
        assert!(v.verify(&hs_token(c)).is_err());
        let mut c = good_claims();
        c["iss"] = json!("https://evil.test");
        assert!(v.verify(&hs_token(c)).is_err());
        let mut c = good_claims();
        c["aud"] = json!("someone-else");
        assert!(v.verify(&hs_token(c)).is_err());
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(v.verify(&hs_token(c)).is_err(), "exp is required");
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(v.verify(&forged).is_err());
    }

    #[test]
    fn refuses_alg_none_and_unconfigured_algorithms() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(&dir, &[]);
        let body = b64.encode(good_claims().to_string());
        let none = format!("{}.{body}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(v.verify(&none), Err(TokenError::Malformed(_))));
        let hs512 = format!(
            "{}.{body}.c2ln",
            b64.encode(r#"{"alg":"HS512","typ":"JWT"}"#)
        );
        assert!(matches!(v.verify(&hs512), Err(TokenError::Algorithm(a)) if a == "HS512"));
    }

    #[test]
    fn refuses_garbage_and_huge_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(&dir, &[]);
        for bad in [
            "",
            "a.b",
            "not a token",
            "!!!.@@@.###",
            "eyJhbGciOiJIUzI1NiJ9.%%%.sig",
        ] {
            assert!(v.verify(bad).is_err(), "{bad:?}");
        }
        let huge = "a".repeat(100_000);
        assert_eq!(v.verify(&huge), Err(TokenError::TooLarge(100_000)));
    }

    #[test]
    fn jwks_keys_are_picked_by_kid() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let jwks =
            json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64.encode(SECRET)}]});
        std::fs::write(&path, jwks.to_string()).unwrap();
        let v = JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["HS256".into()],
            jwks_file: Some(path),
            ..JwtConfig::default()
        })
        .unwrap();
        let mut h = Header::new(Algorithm::HS256);
        let claims = json!({"sub": "bob", "exp": now() + 60});
        assert_eq!(
            v.verify(&encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()),
            Err(TokenError::NoKid)
        );
        h.kid = Some("k2".into());
        assert_eq!(
            v.verify(&encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()),
            Err(TokenError::UnknownKid("k2".into()))
        );
        h.kid = Some("k1".into());
        assert_eq!(
            v.verify(&encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap())
                .unwrap()["sub"],
            "bob"
        );
    }

    #[test]
    fn rs256_with_a_pem_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, include_str!("testdata/rs256_public.pem")).unwrap();
        let v = JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["RS256".into()],
            public_key_file: Some(public),
            ..JwtConfig::default()
        })
        .unwrap();
        let key = EncodingKey::from_rsa_pem(include_bytes!("testdata/rs256_private.pem")).unwrap();
        let claims = json!({"sub": "carol", "exp": now() + 60});
        let token = encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
        assert_eq!(v.verify(&token).unwrap()["sub"], "carol");
        // The same claims signed with HS256 (the RSA public key as a secret:
        // the classic confusion attack) are refused.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(include_bytes!("testdata/rs256_public.pem")),
        )
        .unwrap();
        assert!(matches!(v.verify(&confused), Err(TokenError::Algorithm(_))));
    }

    #[test]
    fn es256_with_a_pem_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let public = dir.path().join("es.pem");
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        let v = JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["ES256".into()],
            public_key_file: Some(public),
            ..JwtConfig::default()
        })
        .unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let claims = json!({"sub": "dave", "exp": now() + 60});
        let token = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        assert_eq!(v.verify(&token).unwrap()["sub"], "dave");
        // Another key's signature is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let forged = encode(&Header::new(Algorithm::ES256), &claims, &other).unwrap();
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let e = JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["none".into()],
            ..JwtConfig::default()
        })
        .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = JwtVerifier::from_config(&JwtConfig::default()).unwrap_err();
        assert!(e.contains("no key"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("s");
        std::fs::write(&short, "short").unwrap();
        let e = JwtVerifier::from_config(&JwtConfig {
            algorithms: vec!["HS256".into()],
            secret_file: Some(short),
            ..JwtConfig::default()
        })
        .unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
    }
}
