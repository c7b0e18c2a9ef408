//! Manifests: `HEAD` (digest only), `GET` (verified body), and whether a
//! repository exists.

use pullbroker_core::{Credential, Digest, Reference};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};

use super::endpoint::Endpoint;
use super::transport::{challenge_error, read_limited, registry_error_detail};
use super::{Manifest, ManifestInfo, RegistryClient};
use crate::error::RegistryError;
use crate::manifest;

/// Manifests above this size are refused (the OCI distribution spec lets
/// registries cap them at 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Error bodies are read this far, for their `errors[].code`.
const MAX_ERROR_BODY: usize = 64 << 10;

/// What one `HEAD` told: the digest, or that the registry sent none (some
/// do not on `HEAD`), which only a `GET` can answer.
enum Head {
    Found(ManifestInfo),
    NoDigest,
}

/// The credentials to try: the given ones, or anonymous when there are none.
fn candidates(credentials: &[Credential]) -> &[Credential] {
    static ANONYMOUS: [Credential; 1] = [Credential::Anonymous];
    if credentials.is_empty() {
        &ANONYMOUS
    } else {
        credentials
    }
}

/// The last refusal, once every credential was refused.
fn all_refused(refused: Option<RegistryError>) -> RegistryError {
    // `candidates` is never empty, so a refusal was recorded before we got here.
    refused.expect("at least one credential is tried")
}

impl RegistryClient {
    /// `HEAD` a manifest; falls back to `GET` when the registry sends no
    /// `Docker-Content-Digest`. Credentials are tried in order; the next is
    /// tried only when the registry refused the previous one.
    pub async fn head_manifest(
        &self,
        image: &Reference,
        credentials: &[Credential],
    ) -> Result<ManifestInfo, RegistryError> {
        let ep = self.endpoint(image.registry()).await?;
        let reference = image.manifest_reference();
        let mut refused = None;
        for c in candidates(credentials) {
            let result = match self.head_once(&ep, image, &reference, c).await {
                Ok(Head::Found(info)) => Ok(info),
                Ok(Head::NoDigest) => self
                    .get_once(&ep, image, &reference, c)
                    .await
                    .map(|m| m.info),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_auth() => refused = Some(e),
                other => return other,
            }
        }
        Err(all_refused(refused))
    }

    /// `GET` a manifest by tag or digest; the body is verified against the
    /// digest the registry claims and the one asked for.
    pub async fn get_manifest(
        &self,
        image: &Reference,
        reference: &str,
        credentials: &[Credential],
    ) -> Result<Manifest, RegistryError> {
        let ep = self.endpoint(image.registry()).await?;
        let mut refused = None;
        for c in candidates(credentials) {
            match self.get_once(&ep, image, reference, c).await {
                Err(e) if e.is_auth() => refused = Some(e),
                other => return other,
            }
        }
        Err(all_refused(refused))
    }

    /// Whether `image`'s repository exists, asked with `credential`: a
    /// manifest 404 does not tell an unknown tag from an unknown repository
    /// (distribution answers `MANIFEST_UNKNOWN` for both), but the tags list
    /// of an unknown repository is `NAME_UNKNOWN`. `None` when the registry
    /// does not say (it refused, or answered otherwise).
    pub async fn repository_exists(
        &self,
        image: &Reference,
        credential: &Credential,
    ) -> Result<Option<bool>, RegistryError> {
        let ep = self.endpoint(image.registry()).await?;
        let repository = image.repository();
        let url = format!("{}/v2/{repository}/tags/list?n=1", ep.base);
        let http = self.http(&ep.registry, ep.verify_tls);
        let (auth, _) = self.authorize(&ep, repository, credential).await?;
        let resp = self
            .send(&ep.registry, || {
                let r = http.get(&url);
                match &auth {
                    Some(a) => r.header(AUTHORIZATION, a.clone()),
                    None => r,
                }
            })
            .await?;
        let status = resp.status();
        let body = read_limited(
            resp,
            MAX_ERROR_BODY,
            &ep.registry,
            self.inner.settings.timeout,
        )
        .await
        .ok();
        Ok(match status {
            StatusCode::OK => Some(true),
            StatusCode::NOT_FOUND => registry_error_detail(body.as_deref())
                .filter(|d| d.starts_with("NAME_UNKNOWN"))
                .map(|_| false),
            _ => None,
        })
    }

    async fn head_once(
        &self,
        ep: &Endpoint,
        image: &Reference,
        reference: &str,
        credential: &Credential,
    ) -> Result<Head, RegistryError> {
        let resp = self
            .manifest_request(ep, Method::HEAD, image, reference, credential)
            .await?;
        let said = Said::from(resp.headers());
        let Some(digest) = said.digest else {
            return Ok(Head::NoDigest);
        };
        if let Some(asked) = reference.parse::<Digest>().ok().filter(|r| *r != digest) {
            return Err(mismatch(ep, image, &asked, &digest));
        }
        Ok(Head::Found(ManifestInfo {
            digest,
            media_type: said.media_type,
            size: said.size,
        }))
    }

    async fn get_once(
        &self,
        ep: &Endpoint,
        image: &Reference,
        reference: &str,
        credential: &Credential,
    ) -> Result<Manifest, RegistryError> {
        let resp = self
            .manifest_request(ep, Method::GET, image, reference, credential)
            .await?;
        let said = Said::from(resp.headers());
        let body = read_limited(
            resp,
            MAX_MANIFEST,
            &ep.registry,
            self.inner.settings.timeout,
        )
        .await?;
        let asked: Option<Digest> = reference.parse().ok();
        // The body must hash to the digest asked for and to the one claimed.
        for expected in [asked.as_ref(), said.digest.as_ref()].into_iter().flatten() {
            let actual = expected.recompute(&body);
            if actual != *expected {
                return Err(mismatch(ep, image, expected, &actual));
            }
        }
        let digest = match asked.or(said.digest) {
            Some(d) => d,
            None => Digest::sha256_of(&body),
        };
        Ok(Manifest {
            info: ManifestInfo {
                digest,
                media_type: said.media_type,
                size: Some(body.len() as u64),
            },
            body,
        })
    }

    /// One manifest request with `credential`, renewing a cached token once
    /// when the registry refuses it (revoked, or expired early). Anything but
    /// 200 becomes its error.
    async fn manifest_request(
        &self,
        ep: &Endpoint,
        method: Method,
        image: &Reference,
        reference: &str,
        credential: &Credential,
    ) -> Result<Response, RegistryError> {
        let repository = image.repository();
        let url = format!("{}/v2/{repository}/manifests/{reference}", ep.base);
        let http = self.http(&ep.registry, ep.verify_tls);
        let mut renewed_token = false;
        let resp = loop {
            let (auth, token_key) = self.authorize(ep, repository, credential).await?;
            let resp = self
                .send(&ep.registry, || {
                    let r = http
                        .request(method.clone(), &url)
                        .header(ACCEPT, manifest::ACCEPT);
                    match &auth {
                        Some(a) => r.header(AUTHORIZATION, a.clone()),
                        None => r,
                    }
                })
                .await?;
            match (resp.status(), token_key) {
                (StatusCode::UNAUTHORIZED, Some(key)) if !renewed_token => {
                    self.inner.tokens.remove(&key);
                    renewed_token = true;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let detail = registry_error_detail(
            read_limited(
                resp,
                MAX_ERROR_BODY,
                &ep.registry,
                self.inner.settings.timeout,
            )
            .await
            .ok()
            .as_deref(),
        );
        let registry = ep.registry.clone();
        let repository = repository.to_string();
        Err(match status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                registry,
                repository,
                detail: format!(
                    "registry refused {credential}{}",
                    challenge_error(&headers)
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            },
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry,
                repository,
                detail: detail.unwrap_or_else(|| format!("registry denied {credential}")),
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry,
                repository,
                reference: reference.to_string(),
                detail: detail.unwrap_or_else(|| "manifest unknown".into()),
            },
            s => RegistryError::Protocol {
                registry,
                detail: format!(
                    "manifest request answered HTTP {}{}",
                    s.as_u16(),
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            },
        })
    }
}

/// What a manifest response's headers say.
struct Said {
    digest: Option<Digest>,
    media_type: String,
    size: Option<u64>,
}

impl From<&HeaderMap> for Said {
    fn from(h: &HeaderMap) -> Self {
        let text = |name| h.get(name).and_then(|v| v.to_str().ok());
        Said {
            digest: text(reqwest::header::HeaderName::from_static(
                "docker-content-digest",
            ))
            .and_then(|v| v.parse().ok()),
            media_type: text(CONTENT_TYPE).unwrap_or_default().to_string(),
            size: text(CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        }
    }
}

fn mismatch(ep: &Endpoint, image: &Reference, expected: &Digest, actual: &Digest) -> RegistryError {
    RegistryError::DigestMismatch {
        registry: ep.registry.clone(),
        repository: image.repository().to_string(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}
