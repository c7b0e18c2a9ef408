//! [`RegistryClient`]: one per process, cheap to clone, safe to share.
//!
//! Per registry it pings `/v2/` once to learn the transport and the auth
//! scheme (de-duplicated across concurrent callers), then serves manifest
//! requests with pooled keep-alive connections and cached bearer tokens.
//! By concern:
//!
//! - `endpoint`: the `/v2/` ping — which transport, which auth scheme;
//! - `auth`: `Authorization` headers, bearer tokens (fetched once per
//!   registry, scope and credential, cached), which realms may carry secrets;
//! - `manifests`: manifest `HEAD`/`GET` with digest checks, repository existence;
//! - `transport`: the HTTP clients, bounded retries on 429/5xx, bounded reads,
//!   registry error bodies.

mod auth;
mod endpoint;
mod manifests;
mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pullbroker_core::Digest;

use crate::error::{RegistryError, SetupError};
use crate::settings::{ClientSettings, RegistryTls};
use crate::singleflight::SingleFlight;
use crate::token::{Token, TokenCache, TokenKey};

pub use auth::realm_may_carry;
pub use transport::build_http;

use endpoint::Endpoint;

/// What a registry said about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub digest: Digest,
    pub media_type: String,
    pub size: Option<u64>,
}

/// A manifest fetched with `GET`: what the registry said, and the body,
/// which hashes to the digest asked for and to the one the registry claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub info: ManifestInfo,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClientSettings,
    verified: reqwest::Client,
    unverified: reqwest::Client,
    /// Registries with trust of their own, each with its client.
    registry_tls: std::sync::RwLock<Arc<Vec<(RegistryTls, reqwest::Client)>>>,
    /// Each registry's endpoint and when it was learned ([`ClientSettings::endpoint_ttl`]).
    endpoints: Mutex<HashMap<String, (Arc<Endpoint>, std::time::Instant)>>,
    pings: SingleFlight<String, Result<Arc<Endpoint>, RegistryError>>,
    tokens: TokenCache,
    token_fetches: SingleFlight<TokenKey, Result<Token, RegistryError>>,
}

impl RegistryClient {
    pub fn new(settings: ClientSettings) -> Result<Self, SetupError> {
        let verified = build_http(&settings, true)?;
        let unverified = build_http(&settings, false)?;
        let registry_tls = build_tls(&settings, &[], settings.registry_tls.clone())?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                settings,
                verified,
                unverified,
                registry_tls: std::sync::RwLock::new(Arc::new(registry_tls)),
                endpoints: Mutex::default(),
                pings: SingleFlight::default(),
                tokens: TokenCache::default(),
                token_fetches: SingleFlight::default(),
            }),
        })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// Replaces the per-registry trust (a RegistryCredential's CA bundle
    /// changed). Clients of unchanged entries are kept, with their pooled
    /// connections; every registry is pinged again, over its new trust.
    pub fn set_registry_tls(&self, tls: Vec<RegistryTls>) -> Result<(), SetupError> {
        let current = self.registry_tls();
        if current.iter().map(|(t, _)| t).eq(tls.iter()) {
            return Ok(());
        }
        let built = build_tls(&self.inner.settings, &current, tls)?;
        *self.inner.registry_tls.write().expect("poisoned") = Arc::new(built);
        self.inner.endpoints.lock().expect("poisoned").clear();
        Ok(())
    }

    fn registry_tls(&self) -> Arc<Vec<(RegistryTls, reqwest::Client)>> {
        self.inner.registry_tls.read().expect("poisoned").clone()
    }

    /// The registry's own trust, if it has one, with its client.
    fn tls_for(&self, registry: &str) -> Option<(RegistryTls, reqwest::Client)> {
        self.registry_tls()
            .iter()
            .find(|(t, _)| t.covers(registry))
            .cloned()
    }

    /// The client for `registry`: its own trust's, else the shared one.
    fn http(&self, registry: &str, verify: bool) -> reqwest::Client {
        match self.tls_for(registry) {
            Some((_, client)) if verify => client,
            _ if verify => self.inner.verified.clone(),
            _ => self.inner.unverified.clone(),
        }
    }
}

/// Clients for `wanted`, reusing those of `current` whose trust is equal.
fn build_tls(
    settings: &ClientSettings,
    current: &[(RegistryTls, reqwest::Client)],
    wanted: Vec<RegistryTls>,
) -> Result<Vec<(RegistryTls, reqwest::Client)>, SetupError> {
    wanted
        .into_iter()
        .map(|t| {
            let client = match current.iter().find(|(c, _)| *c == t) {
                Some((_, c)) => c.clone(),
                None => transport::build_http_with(settings, true, Some(&t))?,
            };
            Ok((t, client))
        })
        .collect()
}
