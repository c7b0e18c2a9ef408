//! Keys and certificates for tests, generated in-process with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256};

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed server certificate for 127.0.0.1 and localhost.
pub fn self_signed_server(dir: &Path) -> Result<TlsFiles, String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| e.to_string())?;
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&files.key, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(files)
}

/// A token-signing key and its self-signed certificate (for a registry's
/// `rootcertbundle`).
pub struct SigningKey {
    pub cert_pem: String,
    pub key_pem: String,
    pub kid: String,
}

pub fn signing_key(common_name: &str) -> Result<SigningKey, String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(SigningKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        kid: pullbroker_core::libtrust::key_id(&key.subject_public_key_info()),
    })
}

/// A private CA, as an enterprise's internal one: its PEM, and what it
/// signs with.
pub struct PrivateCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl PrivateCa {
    pub fn new(common_name: &str) -> Result<PrivateCa, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let cert_pem = cert.pem();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| e.to_string())?;
        Ok(PrivateCa { cert_pem, issuer })
    }

    /// A server certificate for `names` (DNS names, or IP addresses),
    /// written as `tls.crt`/`tls.key` in `dir`.
    pub fn server(&self, dir: &Path, names: &[&str]) -> Result<TlsFiles, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName((*n).try_into().map_err(|e: rcgen::Error| e.to_string())?)
                }
            });
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&files.key, key.serialize_pem()).map_err(|e| e.to_string())?;
        Ok(files)
    }
}
