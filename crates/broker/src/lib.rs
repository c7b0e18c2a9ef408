//! The pullbroker service: the adapter that puts the core's one decision
//! behind HTTP.
//!
//! - [`satoken`]: service-account token verification (JWKS, TokenReview).
//! - [`config`]: the standalone YAML configuration (the embedded default).
//!
//! Signing keys, registry tokens, broker credentials and exec sources live in
//! `pullbroker-credentials`, shared with the controller.
//! - [`tls`]: serving certificates reloaded on change; test/lab certificates.
//! - [`server`]: routes, audit events, metrics, reload, graceful shutdown.

pub mod config;
mod error;
pub mod metrics;
pub mod satoken;
pub mod server;
pub mod tls;
pub mod tokenreview;

pub use error::{Error, Result};
pub use server::Broker;

/// An HTTP client for the broker's own outbound calls (JWKS, TokenReview):
/// the registry client's builder with its default timeouts (10 s, connect 5 s).
/// Reads at most `limit` bytes of `resp`'s body: an issuer or API server
/// that answers with an endless body is refused, not buffered.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("answer larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn http_client(
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::Client, pullbroker_registry::SetupError> {
    let settings = pullbroker_registry::ClientSettings {
        ca_pems: ca_pem.map(|p| vec![p.to_vec()]).unwrap_or_default(),
        ..Default::default()
    };
    pullbroker_registry::client::build_http(&settings, true)
}
