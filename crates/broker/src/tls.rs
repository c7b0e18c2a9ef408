//! TLS for the broker's listeners (rustls, aws-lc-rs provider: the one crypto library of the workspace).
//!
//! [`ReloadingCert`] is the server's certificate resolver: it holds the
//! current certificate and key, re-reads the PEM files when their content
//! changes (cert-manager renewals, a Secret volume's symlink swap) and hands
//! every *new* handshake the current pair — established connections keep the
//! one they negotiated, nothing restarts. A pair that fails to load (a key
//! that does not match, a half-written file) is refused with a warning and the
//! last good pair keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

use crate::config::TlsSpec;

/// The one crypto provider the broker's TLS uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key read from files, swapped when the files change.
pub struct ReloadingCert {
    spec: TlsSpec,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 of the files' bytes as last loaded (or last refused).
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.spec.cert_file)
            .field("key_file", &self.spec.key_file)
            .finish_non_exhaustive()
    }
}

fn read(spec: &TlsSpec) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(&spec.cert_file)
        .map_err(|e| format!("tls.certFile {}: {e}", spec.cert_file.display()))?;
    let key = std::fs::read(&spec.key_file)
        .map_err(|e| format!("tls.keyFile {}: {e}", spec.key_file.display()))?;
    Ok((cert, key))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// Parses a PEM chain and key into a pair rustls serves; errors name the
/// file, never its content.
fn certified(spec: &TlsSpec, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!(
                "tls.certFile {}: not a PEM certificate chain",
                spec.cert_file.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "tls.certFile {}: holds no certificate",
            spec.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
        format!(
            "tls.keyFile {}: not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            spec.key_file.display()
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("tls.keyFile {}: unsupported key", spec.key_file.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|_| {
        format!(
            "tls.keyFile {} does not belong to the certificate in {}",
            spec.key_file.display(),
            spec.cert_file.display()
        )
    })?;
    Ok(pair)
}

impl ReloadingCert {
    /// Loads the pair; an error here means the broker cannot serve TLS yet.
    pub fn load(spec: &TlsSpec) -> crate::Result<Arc<ReloadingCert>> {
        let (cert, key) = read(spec).map_err(crate::Error::Tls)?;
        let pair = certified(spec, &cert, &key).map_err(crate::Error::Tls)?;
        Ok(Arc::new(ReloadingCert {
            spec: spec.clone(),
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(fingerprint(&cert, &key)),
        }))
    }

    /// Re-reads the files; `Ok(true)` when a new pair now serves. A pair that
    /// does not load is refused once (until the files change again).
    pub fn reload(&self) -> crate::Result<bool> {
        let (cert, key) = read(&self.spec).map_err(crate::Error::Tls)?;
        let fp = fingerprint(&cert, &key);
        let mut seen = self.seen.lock().expect("poisoned");
        if *seen == fp {
            return Ok(false);
        }
        *seen = fp;
        let pair = certified(&self.spec, &cert, &key).map_err(crate::Error::Tls)?;
        self.current.store(Arc::new(pair));
        Ok(true)
    }

    /// Checks the files every `every` and swaps in a changed pair.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match this.reload() {
                    Ok(true) => {
                        tracing::info!(cert_file = %this.spec.cert_file.display(), "serving certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate change refused; the last good certificate keeps serving")
                    }
                }
            }
        })
    }

    /// A rustls server configuration that asks this resolver on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        self.config_with(rustls::server::WebPkiClientVerifier::no_client_auth())
    }

    /// As [`ReloadingCert::server_config`], and every client must present a
    /// certificate that a CA of the PEM bundle `client_ca_file` signed (the
    /// API server's, for admission): others fail the handshake.
    pub fn server_config_requiring_clients(
        self: &Arc<Self>,
        client_ca_file: &std::path::Path,
    ) -> crate::Result<Arc<rustls::ServerConfig>> {
        let pem = std::fs::read(client_ca_file).map_err(crate::Error::read(client_ca_file))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| crate::Error::Tls(format!("{}: {e}", client_ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| crate::Error::Tls(format!("{}: {e}", client_ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(crate::Error::Tls(format!(
                "{}: no CA certificate in it",
                client_ca_file.display()
            )));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| crate::Error::Tls(format!("{}: {e}", client_ca_file.display())))?;
        Ok(self.config_with(verifier))
    }

    fn config_with(
        self: &Arc<Self>,
        clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn cert_file(&self) -> &PathBuf {
        &self.spec.cert_file
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A self-signed CA and a serving certificate it signed, as PEM, for tests
/// and labs (`pullbroker tls-cert`). Hosts that parse as IP addresses become
/// IP SANs, the rest DNS SANs.
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a CA and a serving certificate valid for `hosts` for `days`.
pub fn make_serving_cert(
    hosts: &[String],
    days: u32,
) -> Result<ServingCert, pullbroker_credentials::Error> {
    use pullbroker_credentials::pki;
    use secrecy::ExposeSecret;
    let validity = Duration::from_secs(u64::from(days) * 86_400);
    let ca = pki::new_ca("pullbroker CA", validity)?;
    let leaf = pki::issue_serving(&ca, hosts, validity)?;
    Ok(ServingCert {
        ca_pem: ca.cert_pem,
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem.expose_secret().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_of_another_certificate_is_refused_and_the_old_pair_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TlsSpec {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
        };
        let a = make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
        let b = make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
        std::fs::write(&spec.cert_file, &a.cert_pem).unwrap();
        std::fs::write(&spec.key_file, &a.key_pem).unwrap();
        let cert = ReloadingCert::load(&spec).unwrap();
        let before = cert.current.load_full();
        assert!(!cert.reload().unwrap(), "unchanged files are no change");
        std::fs::write(&spec.key_file, &b.key_pem).unwrap();
        let err = cert.reload().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "no key material in errors");
        assert!(Arc::ptr_eq(&before, &cert.current.load_full()));
        std::fs::write(&spec.cert_file, &b.cert_pem).unwrap();
        assert!(cert.reload().unwrap());
        assert!(!Arc::ptr_eq(&before, &cert.current.load_full()));
        std::fs::write(&spec.cert_file, "not pem").unwrap();
        assert!(cert
            .reload()
            .unwrap_err()
            .to_string()
            .contains("holds no certificate"));
    }
}
