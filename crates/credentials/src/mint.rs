//! What the broker issues:
//!
//! - **registry tokens**: ES256 JWTs in the distribution token format, with
//!   `aud` a string and integer `exp`/`nbf`/`iat`, as registry 2.8 requires;
//! - **broker credentials**: the `password` handed out by `/v1/exchange` for
//!   token-issuer credentials. A client presents it to the broker's own `/token`
//!   (as containerd and skopeo do), which re-checks the grants at that moment.
//!   It is HMAC'd with a key derived from the credential's signing key: only
//!   the broker itself ever verifies it, so a symmetric MAC is the right tool.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;
use jsonwebtoken::{Algorithm, Header};
use pullbroker_core::policy::Subject;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::keys::{IssuerKeys, SigningKey};

/// Prefix that tells broker credentials from service-account JWTs.
pub const BROKER_CREDENTIAL_PREFIX: &str = "pbc1.";
/// The user name returned with broker credentials.
pub const BROKER_USERNAME: &str = "pullbroker";

/// One entry of a registry token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Signs a registry token.
#[allow(clippy::too_many_arguments)]
pub fn registry_token(
    key: &SigningKey,
    issuer: &str,
    service: &str,
    subject: &str,
    access: &[Access],
    now: i64,
    lifetime_secs: i64,
    jti: &str,
) -> crate::Result<String> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let claims = json!({
        "iss": issuer,
        "sub": subject,
        "aud": service,
        "exp": now + lifetime_secs,
        "nbf": now - 5,
        "iat": now,
        "jti": jti,
        "access": access,
    });
    jsonwebtoken::encode(&header, &claims, key.encoding())
        .map_err(|e| crate::Error::crypto("sign a registry token", e))
}

/// What a broker credential asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerCredential {
    /// Namespace and service account it was issued to. An empty `sa` is a
    /// synced pull secret's credential: it stands for the whole namespace and
    /// is honoured only while a grant syncs that namespace.
    pub ns: String,
    pub sa: String,
    /// The RegistryCredential it is for.
    pub cred: String,
    pub iat: i64,
    pub exp: i64,
}

impl BrokerCredential {
    pub fn subject(&self) -> Subject {
        Subject::new(&self.ns, &self.sa)
    }

    /// `pbc1.<claims>.<mac>`
    pub fn seal(&self, key: &SigningKey) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("serializable"));
        let mut mac = key.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{BROKER_CREDENTIAL_PREFIX}{body}.{tag}")
    }

    /// Checks the MAC against every published key (rotation) and the expiry.
    pub fn open(text: &str, keys: &IssuerKeys, now: i64) -> Result<BrokerCredential, &'static str> {
        let rest = text
            .strip_prefix(BROKER_CREDENTIAL_PREFIX)
            .ok_or("not a broker credential")?;
        if rest.len() > 4096 {
            return Err("broker credential too long");
        }
        let (body, tag) = rest.split_once('.').ok_or("malformed broker credential")?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| "malformed broker credential")?;
        let authentic = keys.all().any(|k| {
            let mut mac = k.mac();
            mac.update(body.as_bytes());
            mac.verify_slice(&tag).is_ok()
        });
        if !authentic {
            return Err("broker credential signature is invalid");
        }
        let claims: BrokerCredential = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed broker credential")?;
        if claims.exp < now {
            return Err("broker credential has expired");
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> IssuerKeys {
        let (k, c) = SigningKey::generate("t").unwrap();
        IssuerKeys {
            current: SigningKey::from_pem(&k, &c).unwrap(),
            previous: None,
        }
    }

    #[test]
    fn broker_credentials_seal_open_and_refuse_tampering() {
        let keys = keys();
        let c = BrokerCredential {
            ns: "team-a".into(),
            sa: "app".into(),
            cred: "corp".into(),
            iat: 100,
            exp: 200,
        };
        let sealed = c.seal(&keys.current);
        assert_eq!(BrokerCredential::open(&sealed, &keys, 150).unwrap(), c);
        assert_eq!(
            BrokerCredential::open(&sealed, &keys, 201).unwrap_err(),
            "broker credential has expired"
        );
        // Swap in another namespace, keep the MAC.
        let forged = BrokerCredential {
            ns: "team-b".into(),
            ..c.clone()
        };
        let forged_body = forged.seal(&keys.current);
        let tag = sealed.rsplit_once('.').unwrap().1;
        let tampered = format!("{}.{tag}", forged_body.rsplit_once('.').unwrap().0);
        assert_eq!(
            BrokerCredential::open(&tampered, &keys, 150).unwrap_err(),
            "broker credential signature is invalid"
        );
        // Another broker's key.
        assert!(BrokerCredential::open(&sealed, &self::keys(), 150).is_err());
        // A rotated-out key still opens while published as previous.
        let newer = self::keys();
        let rotated = IssuerKeys {
            current: newer.current,
            previous: Some(keys.current),
        };
        assert!(BrokerCredential::open(&sealed, &rotated, 150).is_ok());
    }
}
