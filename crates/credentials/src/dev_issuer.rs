//! A local development issuer of service-account-shaped tokens, so the
//! standalone broker can be tried without a cluster (`pullbroker dev-token`).
//!
//! The tokens have the claims a kube-apiserver puts in a projected token
//! (`iss`, `sub`, `aud`, `exp`/`iat`/`nbf`, `jti`, `kubernetes.io`), signed
//! ES256 with a `kid` starting [`DEV_KID_PREFIX`]: a broker that trusts such
//! a key warns at start, since whoever has the key can be anyone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// What [`Error::Material`] calls the key.
const KEY: &str = "the issuer key";

/// Every development key's `kid` starts with this.
pub const DEV_KID_PREFIX: &str = "pullbroker-dev-";

/// Longest lifetime a development token may have.
pub const MAX_TTL_SECONDS: i64 = 24 * 3600;

/// An ES256 key that signs development tokens. Debug never shows the key.
pub struct DevIssuer {
    key: EncodingKey,
    /// Uncompressed P-256 point: 0x04 ‖ x ‖ y.
    public: Vec<u8>,
    pub kid: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("kid", &self.kid).finish()
    }
}

/// Who a development token is for.
#[derive(Debug, Clone)]
pub struct DevToken<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: Option<&'a str>,
    pub ttl_seconds: i64,
}

impl DevIssuer {
    /// A new key, as PKCS#8 PEM.
    pub fn generate() -> Result<String> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|k| k.serialize_pem())
            .map_err(|e| Error::crypto("generate a key", e))
    }

    /// The issuer for a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::from_pem(pem)
            .map_err(|_| Error::material(KEY, "is not a PKCS#8 PEM private key"))?;
        if !pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(Error::material(KEY, "must be an ECDSA P-256 key (ES256)"));
        }
        let public = pair.public_key_raw().to_vec();
        if public.len() != 65 || public[0] != 4 {
            return Err(Error::material(
                KEY,
                "has no uncompressed P-256 public point",
            ));
        }
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|_| Error::material(KEY, "cannot sign ES256"))?;
        let kid = format!("{DEV_KID_PREFIX}{}", hex_prefix(&Sha256::digest(&public)));
        Ok(DevIssuer { key, public, kid })
    }

    /// The JWKS a broker's `jwksFile` needs to trust this key.
    pub fn jwks(&self) -> String {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&self.public[1..33]), "y": b64(&self.public[33..]),
        }]});
        serde_json::to_string_pretty(&jwks).expect("serializable")
    }

    /// A signed token for `t`, issued at `now` (seconds since the epoch).
    pub fn token(&self, t: &DevToken<'_>, now: i64) -> Result<String> {
        if !(1..=MAX_TTL_SECONDS).contains(&t.ttl_seconds) {
            return Err(Error::Invalid(format!(
                "the lifetime must be between 1s and {}h",
                MAX_TTL_SECONDS / 3600
            )));
        }
        let mut kube = json!({
            "namespace": t.namespace,
            "serviceaccount": {"name": t.service_account, "uid": uid(t.namespace, t.service_account)},
        });
        if let Some(pod) = t.pod {
            kube["pod"] = json!({"name": pod, "uid": uid(t.namespace, pod)});
        }
        let claims = json!({
            "iss": t.issuer,
            "sub": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
            "aud": [t.audience],
            "iat": now, "nbf": now, "exp": now.saturating_add(t.ttl_seconds),
            "jti": format!("dev-{now}-{}", hex_prefix(&Sha256::digest(format!("{now}{t:?}")))),
            "kubernetes.io": kube,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| Error::crypto("sign", e))
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable, UUID-shaped uid for a name (the same name always gets the same).
fn uid(namespace: &str, name: &str) -> String {
    let d = Sha256::digest(format!("{namespace}/{name}"));
    let h: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_against_the_printed_jwks_and_carry_kubernetes_claims() {
        let issuer = DevIssuer::from_pem(&DevIssuer::generate().unwrap()).unwrap();
        assert!(issuer.kid.starts_with(DEV_KID_PREFIX));
        let t = DevToken {
            issuer: "https://kubernetes.default.svc",
            audience: "pullbroker",
            namespace: "team-a",
            service_account: "web",
            pod: Some("web-0"),
            ttl_seconds: 600,
        };
        let now = 1_800_000_000;
        let token = issuer.token(&t, now).unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&issuer.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["pullbroker"]);
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:web");
        assert_eq!(claims["exp"], now + 600);
        assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-0");
        assert!(issuer
            .token(
                &DevToken {
                    ttl_seconds: 0,
                    ..t.clone()
                },
                now
            )
            .is_err());
        assert!(issuer
            .token(
                &DevToken {
                    ttl_seconds: i64::MAX,
                    ..t
                },
                now
            )
            .is_err());
        assert!(!format!("{issuer:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_keys_are_refused_with_a_clear_error() {
        assert!(DevIssuer::from_pem("not a key")
            .unwrap_err()
            .to_string()
            .contains("PKCS#8"));
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
        // ring cannot generate RSA keys; where it can, the error is about P-256.
        if let Ok(k) = rsa {
            assert!(DevIssuer::from_pem(&k.serialize_pem())
                .unwrap_err()
                .to_string()
                .contains("P-256"));
        }
    }
}
