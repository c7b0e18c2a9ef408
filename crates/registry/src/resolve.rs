//! Digest resolution for many references at once.
//!
//! - a concurrency bound (`buffer_unordered`), results returned in input order;
//! - identical in-flight resolutions share one request (a single-flight);
//! - a digest cache for tags with a TTL (zero disables it);
//! - digest references never touch the network;
//! - with a platform, an index is opened and that platform's manifest digest
//!   is returned instead of the index digest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pullbroker_core::{Digest, Keychain, Reference};

use crate::client::RegistryClient;
use crate::error::RegistryError;
use crate::manifest::{self, Platform};
use crate::singleflight::SingleFlight;

#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// Resolutions in flight at once.
    pub concurrency: usize,
    /// How long a tag's digest is remembered; zero disables the cache.
    pub cache_ttl: Duration,
    /// Resolve multi-platform tags to this platform's manifest.
    pub platform: Option<Platform>,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            concurrency: 32,
            cache_ttl: Duration::from_secs(60),
            platform: None,
        }
    }
}

/// A resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    /// The manifest's media type, when the registry was asked.
    pub media_type: Option<String>,
    /// True when the answer came from the registry, not the input or cache.
    pub from_registry: bool,
}

type Key = (String, String, Option<Platform>);
/// In-flight work is shared per key and credential scope: callers under
/// different credentials must not receive each other's authorization errors.
type FlightKey = (Key, String);
type Outcome = Result<Resolved, RegistryError>;

#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    client: RegistryClient,
    keychain: Arc<dyn Keychain>,
    options: ResolverOptions,
    cache: Mutex<HashMap<Key, (Resolved, Instant)>>,
    flights: SingleFlight<FlightKey, Outcome>,
}

impl Resolver {
    pub fn new(
        client: RegistryClient,
        keychain: Arc<dyn Keychain>,
        options: ResolverOptions,
    ) -> Self {
        Resolver {
            inner: Arc::new(Inner {
                client,
                keychain,
                options,
                cache: Mutex::default(),
                flights: SingleFlight::default(),
            }),
        }
    }

    pub fn options(&self) -> &ResolverOptions {
        &self.inner.options
    }

    /// The registry client it resolves with.
    pub fn client(&self) -> &RegistryClient {
        &self.inner.client
    }

    /// Resolves one reference to a digest with the keychain's credentials.
    pub async fn resolve(&self, image: &Reference) -> Outcome {
        if let Some(hit) = self.known(image) {
            return Ok(hit);
        }
        let credentials = self.inner.keychain.credentials_for(image);
        self.resolve_with(image, "", credentials).await
    }

    /// What is known without the network: a digest reference's own digest,
    /// or a cached tag. Callers that must mint a credential check this first.
    pub fn known(&self, image: &Reference) -> Option<Resolved> {
        if let Some(d) = image.digest() {
            return Some(Resolved {
                digest: d.clone(),
                media_type: None,
                from_registry: false,
            });
        }
        self.cached(&self.key(image))
    }

    /// Resolves `image` with `credentials` (tried in order) instead of the
    /// keychain's. The digest cache is shared by every caller (a tag's digest
    /// does not depend on who asks; callers check their policy before
    /// asking); in-flight work is shared only within `scope`, e.g. the
    /// credential's name.
    pub async fn resolve_with(
        &self,
        image: &Reference,
        scope: &str,
        credentials: Vec<pullbroker_core::Credential>,
    ) -> Outcome {
        if let Some(hit) = self.known(image) {
            return Ok(hit);
        }
        let key = self.key(image);
        let this = self.clone();
        let image = image.clone();
        let k = key.clone();
        self.inner
            .flights
            .run((key, scope.to_string()), move || async move {
                let result = this.resolve_uncached(&image, &credentials).await;
                if let Ok(r) = &result {
                    this.remember(k, r);
                }
                result
            })
            .await
    }

    fn key(&self, image: &Reference) -> Key {
        (
            image.name(),
            image.tag().unwrap_or("latest").to_string(),
            self.inner.options.platform.clone(),
        )
    }

    /// Resolves every reference, at most `concurrency` at a time, calling
    /// `on_done` as each finishes. Results come back in input order.
    pub async fn resolve_all(
        &self,
        images: &[Reference],
        mut on_done: impl FnMut(usize, &Outcome),
    ) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = vec![None; images.len()];
        let mut stream = futures::stream::iter(images.iter().enumerate())
            .map(|(i, image)| async move { (i, self.resolve(image).await) })
            .buffer_unordered(self.inner.options.concurrency.max(1));
        while let Some((i, outcome)) = stream.next().await {
            on_done(i, &outcome);
            results[i] = Some(outcome);
        }
        results
            .into_iter()
            // The stream yields exactly one outcome per input index.
            .map(|r| r.expect("every index completes"))
            .collect()
    }

    async fn resolve_uncached(
        &self,
        image: &Reference,
        credentials: &[pullbroker_core::Credential],
    ) -> Outcome {
        let client = &self.inner.client;
        let info = client.head_manifest(image, credentials).await?;
        let Some(platform) = &self.inner.options.platform else {
            return Ok(Resolved {
                digest: info.digest,
                media_type: Some(info.media_type),
                from_registry: true,
            });
        };
        if !manifest::is_index(&info.media_type) {
            // A single-platform manifest is the answer for any platform asked.
            return Ok(Resolved {
                digest: info.digest,
                media_type: Some(info.media_type),
                from_registry: true,
            });
        }
        let body = client
            .get_manifest(image, &info.digest.to_string(), credentials)
            .await?
            .body;
        let digest = manifest::select_platform(&body, platform).map_err(|available| {
            RegistryError::NoPlatform {
                image: image.to_string(),
                platform: platform.to_string(),
                available,
            }
        })?;
        Ok(Resolved {
            digest,
            media_type: None,
            from_registry: true,
        })
    }

    fn cached(&self, key: &Key) -> Option<Resolved> {
        if self.inner.options.cache_ttl.is_zero() {
            return None;
        }
        let cache = self.inner.cache.lock().expect("poisoned");
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(r, _)| Resolved {
                from_registry: false,
                ..r.clone()
            })
    }

    fn remember(&self, key: Key, resolved: &Resolved) {
        let ttl = self.inner.options.cache_ttl;
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.inner.cache.lock().expect("poisoned");
        if cache.len() >= 100_000 {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
        }
        cache.insert(key, (resolved.clone(), Instant::now() + ttl));
    }
}
