//! What the broker issues:
//!
//! - **registry tokens**: ES256 JWTs in the distribution token format, with
//!   `aud` a string and integer `exp`/`nbf`/`iat`, as registry 2.8 requires;
//! - **broker credentials**: the `password` handed out by `/v1/exchange` for
//!   token-issuer credentials. A client presents it to the broker's own `/token`
//!   (as containerd and skopeo do), which re-checks the grants at that moment.
//!   It is a JWT (HS256, header `typ: pbc+jwt`) keyed with a key derived from
//!   the credential's signing key: only the broker itself ever verifies it, so
//!   a symmetric MAC is the right tool. `jsonwebtoken` checks its signature,
//!   `iss`, `aud`, `exp` and `nbf` (and requires `iat`). The hand-made
//!   `pbc1.<claims>.<mac>` format it replaces is still accepted until those
//!   credentials expire (at most a grant's longest `ttl` after the upgrade);
//!   none is minted any more.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use pullbroker_core::policy::Subject;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::keys::{IssuerKeys, SigningKey};

/// Prefix of the legacy broker credential format (`pbc1.<claims>.<mac>`).
pub const LEGACY_PREFIX: &str = "pbc1.";
/// The JWT `typ` that tells a broker credential from a service-account token.
pub const CREDENTIAL_TYP: &str = "pbc+jwt";
/// Who issues broker credentials, and the only audience that takes them.
pub const CREDENTIAL_ISSUER: &str = "pullbroker";
pub const CREDENTIAL_AUDIENCE: &str = "pullbroker-registry-token";
/// Longer than any credential we mint: refused before any parsing.
const MAX_CREDENTIAL_LEN: usize = 4096;
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

/// A broker credential's JWT claims (borrowed when minting, owned when read).
#[derive(Serialize, Deserialize)]
struct Claims<S = String> {
    iss: S,
    aud: S,
    sub: S,
    iat: i64,
    nbf: i64,
    exp: i64,
    ns: S,
    sa: S,
    cred: S,
}

/// `base64url(header) + "."` of the broker credentials signed by the key
/// `kid` names (computed once per key).
pub(crate) fn credential_header(kid: &str) -> String {
    let header = json!({"alg": "HS256", "typ": CREDENTIAL_TYP, "kid": kid});
    let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
    out.push('.');
    out
}

impl BrokerCredential {
    pub fn subject(&self) -> Subject {
        Subject::new(&self.ns, &self.sa)
    }

    /// A JWT, HS256 with the key derived from `key`, `kid` naming it.
    ///
    /// Minted here rather than by `jsonwebtoken::encode`: one is minted
    /// per exchange, and `encode` re-serialises the constant header and
    /// redoes the HMAC key schedule each time (measured: 12 % of an
    /// exchange's CPU).
    /// The format is plain JWS compact serialisation, and `open` — like
    /// the tests — reads it with `jsonwebtoken`.
    pub fn seal(&self, key: &SigningKey) -> String {
        let sub = self.subject().to_string();
        let claims = serde_json::to_vec(&Claims::<&str> {
            iss: CREDENTIAL_ISSUER,
            aud: CREDENTIAL_AUDIENCE,
            sub: &sub,
            iat: self.iat,
            nbf: self.iat,
            exp: self.exp,
            ns: &self.ns,
            sa: &self.sa,
            cred: &self.cred,
        })
        .expect("claims of strings and integers serialise");
        let header = key.credential_header();
        let mut jwt = String::with_capacity(header.len() + (claims.len() * 4).div_ceil(3) + 44);
        jwt.push_str(header);
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let mut mac = key.mac();
        mac.update(jwt.as_bytes());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut jwt);
        jwt
    }

    /// Whether `text` is a broker credential (rather than a service-account
    /// token): the legacy prefix, or a JWT header saying so. Nothing is
    /// verified here.
    pub fn is_one(text: &str) -> bool {
        text.starts_with(LEGACY_PREFIX)
            || (text.len() <= MAX_CREDENTIAL_LEN
                && jsonwebtoken::decode_header(text)
                    .is_ok_and(|h| h.typ.as_deref() == Some(CREDENTIAL_TYP)))
    }

    /// Verifies against every published key (rotation): signature,
    /// issuer, audience, expiry and not-before on the system clock.
    pub fn open(text: &str, keys: &IssuerKeys) -> Result<BrokerCredential, &'static str> {
        if text.len() > MAX_CREDENTIAL_LEN {
            return Err("broker credential too long");
        }
        if text.starts_with(LEGACY_PREFIX) {
            return Self::open_legacy(text, keys, crate::pki::now());
        }
        let header =
            jsonwebtoken::decode_header(text).map_err(|_| "malformed broker credential")?;
        if header.typ.as_deref() != Some(CREDENTIAL_TYP) || header.alg != Algorithm::HS256 {
            return Err("not a broker credential");
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[CREDENTIAL_ISSUER]);
        validation.set_audience(&[CREDENTIAL_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        // jsonwebtoken checks nbf only when asked.
        validation.validate_nbf = true;
        // Minted and checked by the broker's own clock.
        validation.leeway = 0;
        let mut last = "broker credential signature is invalid";
        for key in keys.all() {
            match jsonwebtoken::decode::<Claims>(
                text,
                &DecodingKey::from_secret(key.mac_key()),
                &validation,
            ) {
                Ok(t) => {
                    let c = t.claims;
                    let credential = BrokerCredential {
                        ns: c.ns,
                        sa: c.sa,
                        cred: c.cred,
                        iat: c.iat,
                        exp: c.exp,
                    };
                    // The subject is signed twice; both must agree.
                    if c.sub != credential.subject().to_string() {
                        return Err("malformed broker credential");
                    }
                    return Ok(credential);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::InvalidSignature => continue,
                        ErrorKind::ExpiredSignature => return Err("broker credential has expired"),
                        ErrorKind::ImmatureSignature => {
                            return Err("broker credential is not valid yet")
                        }
                        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                            return Err("broker credential is not for this broker")
                        }
                        _ => last = "malformed broker credential",
                    }
                }
            }
        }
        Err(last)
    }

    /// `pbc1.<claims>.<mac>`, the format before the JWT: accepted until
    /// the last of them expires.
    fn open_legacy(
        text: &str,
        keys: &IssuerKeys,
        now: i64,
    ) -> Result<BrokerCredential, &'static str> {
        let rest = text
            .strip_prefix(LEGACY_PREFIX)
            .ok_or("not a broker credential")?;
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

    /// A credential in the legacy format, as brokers before the JWT minted it.
    fn seal_legacy(c: &BrokerCredential, key: &SigningKey) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap());
        let mut mac = key.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{LEGACY_PREFIX}{body}.{tag}")
    }

    fn claims_of(jwt: &str) -> serde_json::Value {
        let body = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
    }

    #[test]
    fn broker_credentials_are_jwts_that_refuse_tampering_and_other_keys() {
        let keys = keys();
        let now = crate::pki::now();
        let c = BrokerCredential {
            ns: "team-a".into(),
            sa: "app".into(),
            cred: "corp".into(),
            iat: now,
            exp: now + 600,
        };
        let sealed = c.seal(&keys.current);
        let header = jsonwebtoken::decode_header(&sealed).unwrap();
        assert_eq!(
            (header.alg, header.typ.as_deref(), header.kid.as_deref()),
            (
                Algorithm::HS256,
                Some(CREDENTIAL_TYP),
                Some(keys.current.kid.as_str())
            )
        );
        let claims = claims_of(&sealed);
        assert_eq!(claims["aud"], CREDENTIAL_AUDIENCE);
        assert_eq!(claims["iss"], CREDENTIAL_ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:app");
        assert_eq!(
            (claims["nbf"].as_i64(), claims["iat"].as_i64()),
            (Some(now), Some(now))
        );
        assert!(BrokerCredential::is_one(&sealed));
        assert_eq!(BrokerCredential::open(&sealed, &keys).unwrap(), c);

        // Expired, and not yet valid: refused by jsonwebtoken's checks.
        let old = BrokerCredential {
            iat: now - 700,
            exp: now - 100,
            ..c.clone()
        };
        assert_eq!(
            BrokerCredential::open(&old.seal(&keys.current), &keys).unwrap_err(),
            "broker credential has expired"
        );
        let early = BrokerCredential {
            iat: now + 300,
            exp: now + 900,
            ..c.clone()
        };
        assert_eq!(
            BrokerCredential::open(&early.seal(&keys.current), &keys).unwrap_err(),
            "broker credential is not valid yet"
        );
        // Another namespace's claims under this credential's signature.
        let forged = BrokerCredential {
            ns: "team-b".into(),
            ..c.clone()
        }
        .seal(&keys.current);
        let (head_and_body, _) = forged.rsplit_once('.').unwrap();
        let tampered = format!("{head_and_body}.{}", sealed.rsplit_once('.').unwrap().1);
        assert_eq!(
            BrokerCredential::open(&tampered, &keys).unwrap_err(),
            "broker credential signature is invalid"
        );
        // Another broker's key; a service-account-shaped token; alg none.
        assert!(BrokerCredential::open(&sealed, &self::keys()).is_err());
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"pbc+jwt"}"#),
            sealed.split('.').nth(1).unwrap()
        );
        assert!(BrokerCredential::open(&none, &keys).is_err());
        let sa_like = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#)
        );
        assert!(!BrokerCredential::is_one(&sa_like));
        assert_eq!(
            BrokerCredential::open(&sa_like, &keys).unwrap_err(),
            "not a broker credential"
        );
        // A rotated-out key still opens while published as previous.
        let newer = self::keys();
        let rotated = IssuerKeys {
            current: newer.current,
            previous: Some(keys.current),
        };
        assert!(BrokerCredential::open(&sealed, &rotated).is_ok());
    }

    #[test]
    fn legacy_pbc1_credentials_open_until_they_expire() {
        let keys = keys();
        let now = crate::pki::now();
        let c = BrokerCredential {
            ns: "team-a".into(),
            sa: "".into(),
            cred: "corp".into(),
            iat: now - 60,
            exp: now + 600,
        };
        let legacy = seal_legacy(&c, &keys.current);
        assert!(BrokerCredential::is_one(&legacy));
        assert_eq!(BrokerCredential::open(&legacy, &keys).unwrap(), c);
        let expired = seal_legacy(
            &BrokerCredential {
                exp: now - 1,
                ..c.clone()
            },
            &keys.current,
        );
        assert_eq!(
            BrokerCredential::open(&expired, &keys).unwrap_err(),
            "broker credential has expired"
        );
        let (body, _) = legacy.rsplit_once('.').unwrap();
        assert_eq!(
            BrokerCredential::open(&format!("{body}.AAAA"), &keys).unwrap_err(),
            "broker credential signature is invalid"
        );
    }
}
