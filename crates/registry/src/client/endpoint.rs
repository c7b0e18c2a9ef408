//! The `/v2/` ping: how a registry is reached and how it wants credentials.

use std::sync::Arc;

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::RegistryClient;
use crate::challenge;
use crate::error::{from_transport, RegistryError};
use crate::settings::{api_host, Transport};

/// How one registry is reached, learned from its `/v2/` answer.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub registry: String,
    pub base: String,
    pub verify_tls: bool,
    pub auth: AuthScheme,
}

#[derive(Debug, Clone)]
pub(super) enum AuthScheme {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl RegistryClient {
    /// The registry's endpoint, pinging `/v2/` on first use and again once
    /// `endpoint_ttl` has passed: a registry that moves to HTTPS or to
    /// another token realm is followed without a restart.
    pub(super) async fn endpoint(&self, registry: &str) -> Result<Arc<Endpoint>, RegistryError> {
        if let Some((ep, learned)) = self.inner.endpoints.lock().expect("poisoned").get(registry) {
            if learned.elapsed() < self.inner.settings.endpoint_ttl {
                return Ok(ep.clone());
            }
        }
        let this = self.clone();
        let reg = registry.to_string();
        self.inner
            .pings
            .run(reg.clone(), move || async move {
                let ep = Arc::new(this.ping(&reg).await?);
                this.inner
                    .endpoints
                    .lock()
                    .expect("poisoned")
                    .insert(reg, (ep.clone(), std::time::Instant::now()));
                Ok(ep)
            })
            .await
    }

    /// Pings `/v2/` over each allowed transport; the first that answers like
    /// a registry (200 or 401) wins. A timeout does not fall back: a server
    /// that hangs on HTTPS is not going to be a quick HTTP registry.
    async fn ping(&self, registry: &str) -> Result<Endpoint, RegistryError> {
        let host = api_host(registry);
        let mut first_error = None;
        let tls = self.tls_for(registry).map(|(t, _)| t);
        for transport in self.inner.settings.transports_with(registry, tls.as_ref()) {
            let (scheme, verify) = match transport {
                Transport::Https => ("https", true),
                Transport::HttpsNoVerify => ("https", false),
                Transport::Http => ("http", true),
            };
            let base = format!("{scheme}://{host}");
            let resp = self
                .http(registry, verify)
                .get(format!("{base}/v2/"))
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    let err = from_transport(registry, &e, self.inner.settings.timeout);
                    let timed_out = matches!(err, RegistryError::Timeout { .. });
                    first_error.get_or_insert(err);
                    if timed_out {
                        break;
                    }
                    continue;
                }
            };
            let auth = match resp.status() {
                StatusCode::OK => AuthScheme::None,
                StatusCode::UNAUTHORIZED => auth_scheme(resp.headers()),
                status => {
                    first_error.get_or_insert(RegistryError::Protocol {
                        registry: registry.to_string(),
                        detail: format!(
                            "{base}/v2/ answered HTTP {status}: not an OCI registry endpoint"
                        ),
                    });
                    continue;
                }
            };
            tracing::debug!(registry, %base, ?auth, "registry endpoint");
            return Ok(Endpoint {
                registry: registry.to_string(),
                base,
                verify_tls: verify,
                auth,
            });
        }
        Err(first_error.unwrap_or_else(|| RegistryError::Protocol {
            registry: registry.to_string(),
            detail: "no transport configured".into(),
        }))
    }
}

fn auth_scheme(headers: &HeaderMap) -> AuthScheme {
    let challenges: Vec<_> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenge::parse)
        .collect();
    if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
        if let Some(realm) = b.param("realm") {
            return AuthScheme::Bearer {
                realm: realm.to_string(),
                service: b.param("service").map(str::to_string),
            };
        }
    }
    // Basic, or an unknown scheme: credentials (if any) are sent as Basic.
    AuthScheme::Basic
}
