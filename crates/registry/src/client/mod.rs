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
use crate::settings::ClientSettings;
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
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                settings,
                verified,
                unverified,
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

    fn http(&self, verify: bool) -> &reqwest::Client {
        if verify {
            &self.inner.verified
        } else {
            &self.inner.unverified
        }
    }
}
