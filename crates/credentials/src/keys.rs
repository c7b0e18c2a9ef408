//! Signing keys of token-issuer credentials: EC P-256 (ES256), identified to
//! registry 2.8 by a libtrust `kid`. During a rotation the previous key is
//! published (its certificate stays in the registry's bundle) and accepted for
//! broker credentials, but never used to sign.

use hmac::Mac;
use jsonwebtoken::EncodingKey;
use rcgen::PublicKeyData;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// One signing key with its certificate.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub cert_pem: String,
    encoding: EncodingKey,
    /// Derived key for HMAC'ing broker-issued credentials.
    mac_key: [u8; 32],
    /// HMAC-SHA256 already keyed with `mac_key`: cloned per credential, so
    /// minting does not redo the key schedule.
    keyed_mac: hmac::Hmac<Sha256>,
    /// `base64url(header) + "."` of the broker credentials this key signs:
    /// the same for every one.
    credential_header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From a PKCS#8 EC P-256 private key and its certificate (PEM).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<SigningKey> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|_| Error::material("tls.key", "is not a PKCS#8 PEM private key"))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::material(
                "tls.key",
                "must be an EC P-256 key (registry tokens are ES256)",
            ));
        }
        let spki = key.subject_public_key_info();
        let cert_der = pem_body(cert_pem)
            .ok_or_else(|| Error::material("tls.crt", "is not a PEM certificate"))?;
        // The SubjectPublicKeyInfo is embedded verbatim in the certificate's
        // DER, so containment proves the certificate is for this key.
        if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(Error::material("tls.crt", "does not belong to tls.key"));
        }
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| Error::material("tls.key", format!("cannot sign: {e}")))?;
        let mut h = Sha256::new();
        h.update(b"pullbroker/broker-credential/v1\0");
        h.update(key.serialize_der());
        let mac_key: [u8; 32] = h.finalize().into();
        let kid = pullbroker_core::libtrust::key_id(&spki);
        Ok(SigningKey {
            credential_header: crate::mint::credential_header(&kid),
            kid,
            cert_pem: cert_pem.to_string(),
            encoding,
            keyed_mac: hmac::Hmac::<Sha256>::new_from_slice(&mac_key)
                .expect("HMAC takes any key length"),
            mac_key,
        })
    }

    /// Generates a key and a self-signed certificate (for `pullbroker keygen` and tests).
    pub fn generate(common_name: &str) -> Result<(String, String)> {
        let fail = |e| Error::crypto("generate a signing key", e);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key).map_err(fail)?;
        Ok((key.serialize_pem(), cert.pem()))
    }

    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn mac(&self) -> hmac::Hmac<Sha256> {
        self.keyed_mac.clone()
    }

    /// `base64url(header) + "."` of a broker credential signed by this key.
    pub(crate) fn credential_header(&self) -> &str {
        &self.credential_header
    }

    /// The derived key as an HS256 JWT key (broker credentials).
    pub(crate) fn mac_key(&self) -> &[u8] {
        &self.mac_key
    }
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[start..].find("-----END CERTIFICATE-----")? + start;
    let b64: String = pem[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The current key and, during a rotation, the previous one.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub current: SigningKey,
    pub previous: Option<SigningKey>,
}

impl IssuerKeys {
    /// Certificates to put in the registry's `rootcertbundle`.
    pub fn bundle(&self) -> String {
        let mut out = self.current.cert_pem.clone();
        if let Some(p) = &self.previous {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&p.cert_pem);
        }
        out
    }

    pub fn all(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_mismatches_are_refused() {
        let (k1, c1) = SigningKey::generate("a").unwrap();
        let (_, c2) = SigningKey::generate("b").unwrap();
        let key = SigningKey::from_pem(&k1, &c1).unwrap();
        assert_eq!(key.kid.len(), 59, "12 groups of 4 and 11 colons");
        assert!(key
            .kid
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ':'));
        assert_eq!(
            SigningKey::from_pem(&k1, &c2).unwrap_err().to_string(),
            "tls.crt does not belong to tls.key"
        );
        assert!(SigningKey::from_pem("nope", &c1).is_err());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
