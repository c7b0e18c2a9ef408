//! The broker's TLS certificates: a CA, serving certificates it signs, and
//! what a certificate says about itself (validity, names, issuer), so a
//! bootstrap can tell when to rotate. No I/O: PEM in, PEM out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullbroker_core::time::{secs, UnixTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use secrecy::{ExposeSecret, SecretString};

use crate::{Error, Result};

/// What [`Error::Material`] calls what [`inspect`] and [`all`] read.
const CERT: &str = "the certificate";

/// How far certificates are backdated: a peer whose clock is slightly
/// behind still accepts a certificate made a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A certificate and its private key (redacted on Debug).
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: SecretString,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub hosts: Vec<String>,
    pub is_ca: bool,
    /// DER of the subject and issuer names (to match a leaf to its CA).
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
}

impl CertInfo {
    /// When it was made: certificates made here are backdated by
    /// [`BACKDATE`], which is not part of the lifetime they were given.
    pub fn issued(&self) -> i64 {
        self.not_before.saturating_add(secs(BACKDATE))
    }

    /// When `fraction` (0..1) of the lifetime it was given has passed.
    pub fn due(&self, fraction: f64) -> i64 {
        let life = (self.not_after - self.issued()).max(1) as f64;
        self.issued()
            .saturating_add((life * fraction).ceil() as i64)
    }

    /// Whether `fraction` of its lifetime has passed at `now`.
    pub fn past(&self, fraction: f64, now: i64) -> bool {
        now >= self.due(fraction)
    }

    pub fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// Reads the first certificate of `pem`.
pub fn inspect(pem: &str) -> Result<CertInfo> {
    first(pem, CERT)
}

/// Reads every certificate of a PEM bundle (none is an empty list).
pub fn all(pem: &str) -> Result<Vec<CertInfo>> {
    all_named(pem, CERT)
}

/// The first certificate of `pem`; errors call it `what`.
fn first(pem: &str, what: &'static str) -> Result<CertInfo> {
    all_named(pem, what)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::material(what, "is missing (no PEM CERTIFICATE block)"))
}

/// Every certificate of `pem`; errors call it `what`.
fn all_named(pem: &str, what: &'static str) -> Result<Vec<CertInfo>> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Error::material(what, format!("is not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| Error::material(what, format!("is not X.509: {e}")))?;
        let mut hosts = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => hosts.push(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => hosts.push(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                                .to_string(),
                        ),
                        16 => hosts.push(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                                .to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        out.push(CertInfo {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            hosts,
            is_ca: cert.is_ca(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
        });
    }
    Ok(out)
}

/// A self-signed CA valid for `validity` from now (backdated by [`BACKDATE`]),
/// allowed to sign serving certificates only (path length 0).
pub fn new_ca(common_name: &str, validity: Duration) -> Result<KeyedCert> {
    let fail = |e| Error::crypto("make a CA", e);
    let key = KeyPair::generate().map_err(fail)?;
    let now = SystemTime::now() - BACKDATE;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, common_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now.into();
    ca.not_after = (now + BACKDATE + validity).into();
    let cert = ca.self_signed(&key).map_err(fail)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem().into(),
    })
}

/// A serving certificate for `hosts` (DNS names or IP addresses) signed by
/// `ca`, valid for `validity` from now but never past the CA's own expiry.
pub fn issue_serving(ca: &KeyedCert, hosts: &[String], validity: Duration) -> Result<KeyedCert> {
    if hosts.is_empty() {
        return Err(Error::Invalid(
            "at least one host name or IP address is required".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(ca.key_pem.expose_secret())
        .map_err(|_| Error::material("the CA key", "is not a PEM private key"))?;
    let ca_info = first(&ca.cert_pem, "the CA certificate")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| Error::material("the CA certificate", format!("cannot sign: {e}")))?;
    let fail = |e| Error::crypto("make a serving certificate", e);
    let key = KeyPair::generate().map_err(fail)?;
    let now = SystemTime::now() - BACKDATE;
    let ca_end = UNIX_EPOCH + Duration::from_secs(u64::try_from(ca_info.not_after).unwrap_or(0));
    let mut leaf = CertificateParams::new(hosts.to_vec())
        .map_err(|e| Error::Invalid(format!("host names: {e}")))?;
    leaf.distinguished_name
        .push(DnType::CommonName, hosts[0].clone());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now.into();
    leaf.not_after = (now + BACKDATE + validity).min(ca_end).into();
    let cert = leaf.signed_by(&key, &issuer).map_err(fail)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem().into(),
    })
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    UnixTime::from_system(SystemTime::now()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_certificate_names_its_hosts_and_its_ca_and_ends_with_it() {
        let ca = new_ca("test CA", Duration::from_secs(3600)).unwrap();
        let hosts = vec![
            "pullbroker.pullbroker-system.svc".into(),
            "127.0.0.1".into(),
        ];
        let leaf = issue_serving(&ca, &hosts, Duration::from_secs(7200)).unwrap();
        let (ca_info, info) = (
            inspect(&ca.cert_pem).unwrap(),
            inspect(&leaf.cert_pem).unwrap(),
        );
        assert!(ca_info.is_ca && !info.is_ca);
        assert_eq!(info.hosts, hosts);
        assert_eq!(info.issuer, ca_info.subject);
        assert_eq!(info.not_after, ca_info.not_after, "capped at the CA's end");
        assert!(info.not_before <= now() - 59);
        assert!(!info.past(0.5, now()) && info.past(0.5, info.not_after));
        assert!(!format!("{leaf:?}").contains("PRIVATE"), "{leaf:?}");
    }

    #[test]
    fn bad_input_is_refused_without_quoting_keys() {
        assert_eq!(
            inspect("nothing").unwrap_err().to_string(),
            "the certificate is missing (no PEM CERTIFICATE block)"
        );
        let ca = new_ca("test CA", Duration::from_secs(60)).unwrap();
        let broken = KeyedCert {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
                .to_string()
                .into(),
        };
        let err = issue_serving(&broken, &["a".into()], Duration::from_secs(60)).unwrap_err();
        assert_eq!(err.to_string(), "the CA key is not a PEM private key");
        assert!(issue_serving(&ca, &[], Duration::from_secs(60)).is_err());
    }
}
