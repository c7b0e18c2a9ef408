//! The pullbroker service: the adapter that puts the core's one decision
//! behind HTTP.
//!
//! - [`satoken`]: service-account token verification (JWKS, TokenReview).
//! - [`keys`] / [`mint`]: token-issuer signing keys, registry tokens, and
//!   the broker's own short-lived credentials.
//! - [`config`]: the standalone YAML configuration (the embedded default).
//! - [`server`]: routes, audit events, metrics, reload, graceful shutdown.

pub mod config;
pub mod keys;
pub mod metrics;
pub mod mint;
pub mod satoken;
pub mod server;
pub mod tokenreview;

pub use server::Broker;

/// An HTTP client for the broker's own outbound calls (JWKS, TokenReview).
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_secs(5))
        .no_proxy();
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("invalid CA bundle: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}
