//! [`RegistryClient`]: one per process, cheap to clone, safe to share.
//!
//! Per registry it pings `/v2/` once to learn the transport and the auth
//! scheme (de-duplicated across concurrent callers), then serves manifest
//! requests with pooled keep-alive connections and cached bearer tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::time::UnixTime;
use pullbroker_core::{Credential, Digest, Reference};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::ExposeSecret;

use crate::challenge;
use crate::error::{from_transport, RegistryError};
use crate::manifest;
use crate::settings::{api_host, ClientSettings, Transport};
use crate::singleflight::SingleFlight;
use crate::token::{Token, TokenCache, TokenKey, TokenResponse};

/// Manifests above this size are refused (the OCI distribution spec lets
/// registries cap them at 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Token endpoint answers above this size are refused.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// What a registry said about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub digest: Digest,
    pub media_type: String,
    pub size: Option<u64>,
}

#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClientSettings,
    verified: reqwest::Client,
    unverified: reqwest::Client,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    pings: SingleFlight<String, Result<Arc<Endpoint>, RegistryError>>,
    tokens: TokenCache,
    token_fetches: SingleFlight<TokenKey, Result<Token, RegistryError>>,
}

/// How one registry is reached, learned from its `/v2/` answer.
#[derive(Debug, Clone)]
struct Endpoint {
    registry: String,
    base: String,
    verify_tls: bool,
    auth: AuthScheme,
}

#[derive(Debug, Clone)]
enum AuthScheme {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// An HTTP client with the settings' timeouts and trusted CAs (rustls on
/// ring); `verify: false` skips certificate checks. Also used by the broker
/// for its own outbound calls, so both agree on TLS and timeouts.
pub fn build_http(settings: &ClientSettings, verify: bool) -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .user_agent(settings.user_agent.clone())
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_host)
        .redirect(reqwest::redirect::Policy::limited(5))
        .no_proxy()
        .tcp_nodelay(true);
    for pem in &settings.ca_pems {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("invalid CA bundle: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    if !verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

/// May `credential` be sent to the token realm `realm`? Secrets (a password,
/// an identity token) never travel to a plain-HTTP realm unless plain HTTP to
/// this registry was accepted already (loopback, or the operator marked it
/// plain-HTTP/insecure): an HTTPS registry naming an `http://` realm would
/// otherwise get its credentials sent in clear text.
pub fn realm_may_carry(
    realm: &reqwest::Url,
    credential: &Credential,
    plain_accepted: bool,
) -> Result<(), String> {
    let secret = matches!(
        credential,
        Credential::Basic { .. } | Credential::IdentityToken { .. }
    );
    if realm.scheme() == "https" || !secret || plain_accepted {
        return Ok(());
    }
    Err(format!(
        "token realm {realm} is plain HTTP while the registry is served over HTTPS: refusing to send {credential} in clear text (mark the registry plain-HTTP or insecure to allow it)"
    ))
}

impl RegistryClient {
    pub fn new(settings: ClientSettings) -> Result<Self, String> {
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

    /// The registry's endpoint, pinging `/v2/` on first use.
    async fn endpoint(&self, registry: &str) -> Result<Arc<Endpoint>, RegistryError> {
        if let Some(ep) = self.inner.endpoints.lock().expect("poisoned").get(registry) {
            return Ok(ep.clone());
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
                    .insert(reg, ep.clone());
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
        for transport in self.inner.settings.transports(registry) {
            let (scheme, verify) = match transport {
                Transport::Https => ("https", true),
                Transport::HttpsNoVerify => ("https", false),
                Transport::Http => ("http", true),
            };
            let base = format!("{scheme}://{host}");
            let resp = self.http(verify).get(format!("{base}/v2/")).send().await;
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

    /// Sends with bounded retries on 429 and 5xx (honouring `Retry-After`).
    /// Connection errors are not retried: a registry that is down should be
    /// reported within the timeout, not after several.
    async fn send(
        &self,
        registry: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let s = &self.inner.settings;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = build()
                .send()
                .await
                .map_err(|e| from_transport(registry, &e, s.timeout))?;
            let status = resp.status();
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !retryable {
                return Ok(resp);
            }
            if attempt > s.retries {
                return Err(RegistryError::Unavailable {
                    registry: registry.to_string(),
                    status: status.as_u16(),
                    attempts: attempt,
                });
            }
            let backoff = s.backoff.saturating_mul(1 << (attempt - 1).min(16));
            let delay = retry_after(resp.headers())
                .unwrap_or(backoff)
                .min(s.max_backoff);
            tracing::debug!(registry, %status, attempt, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The `Authorization` header for `repository` with `credential`, and the
    /// token cache key when it is a cached bearer token.
    async fn authorize(
        &self,
        ep: &Endpoint,
        repository: &str,
        credential: &Credential,
    ) -> Result<(Option<HeaderValue>, Option<TokenKey>), RegistryError> {
        let header = |v: String| {
            let mut h = HeaderValue::from_str(&v).map_err(|_| RegistryError::Protocol {
                registry: ep.registry.clone(),
                detail: "credential contains characters not allowed in an HTTP header".into(),
            })?;
            h.set_sensitive(true);
            Ok::<_, RegistryError>(h)
        };
        match (&ep.auth, credential) {
            (_, Credential::RegistryToken { token }) => Ok((
                Some(header(format!("Bearer {}", token.expose_secret()))?),
                None,
            )),
            (AuthScheme::None, _) => Ok((None, None)),
            (AuthScheme::Basic, Credential::Basic { username, password }) => {
                let raw = format!("{username}:{}", password.expose_secret());
                Ok((
                    Some(header(format!("Basic {}", STANDARD.encode(raw)))?),
                    None,
                ))
            }
            (AuthScheme::Basic, _) => Ok((None, None)),
            (AuthScheme::Bearer { realm, service }, _) => {
                let key = TokenKey {
                    registry: ep.registry.clone(),
                    scope: format!("repository:{repository}:pull"),
                    credential: credential.id(),
                };
                let token = self
                    .token(ep, realm, service.as_deref(), &key, credential)
                    .await?;
                Ok((
                    Some(header(format!("Bearer {}", token.expose_secret()))?),
                    Some(key),
                ))
            }
        }
    }

    async fn token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        key: &TokenKey,
        credential: &Credential,
    ) -> Result<secrecy::SecretString, RegistryError> {
        if let Some(t) = self.inner.tokens.get(key) {
            return Ok(t);
        }
        let this = self.clone();
        let (realm, service, key2, cred) = (
            realm.to_string(),
            service.map(str::to_string),
            key.clone(),
            credential.clone(),
        );
        let ep = ep.clone();
        let token = self
            .inner
            .token_fetches
            .run(key.clone(), move || async move {
                let t = this
                    .fetch_token(&ep, &realm, service.as_deref(), &key2, &cred)
                    .await?;
                this.inner.tokens.insert(key2, &t);
                Ok(t)
            })
            .await?;
        Ok(token.value)
    }

    /// Fetches a token from the realm: OAuth2 refresh-token POST for identity
    /// tokens, otherwise GET with Basic auth (or anonymously), as Docker does.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        key: &TokenKey,
        credential: &Credential,
    ) -> Result<Token, RegistryError> {
        let (registry, verify) = (ep.registry.as_str(), ep.verify_tls);
        let realm_url = reqwest::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| RegistryError::Protocol {
                registry: registry.to_string(),
                detail: format!("token realm {realm:?} is not an http(s) URL"),
            })?;
        // Plain HTTP to the registry itself was already accepted (loopback, or
        // marked plain-HTTP/insecure by the operator): then a plain realm is too.
        let plain_accepted = ep.base.starts_with("http://") || !ep.verify_tls;
        realm_may_carry(&realm_url, credential, plain_accepted).map_err(|detail| {
            RegistryError::Protocol {
                registry: registry.to_string(),
                detail,
            }
        })?;
        let http = self.http(verify);
        let resp = self
            .send(registry, || {
                let mut q: Vec<(&str, &str)> = vec![("scope", key.scope.as_str())];
                if let Some(s) = service {
                    q.push(("service", s));
                }
                match credential {
                    Credential::IdentityToken { token, .. } => {
                        q.extend([
                            ("grant_type", "refresh_token"),
                            ("refresh_token", token.expose_secret()),
                            ("client_id", "pullbroker"),
                        ]);
                        let body = form_urlencode(&q);
                        http.post(realm_url.clone())
                            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(body)
                    }
                    Credential::Basic { username, password } => {
                        q.push(("account", username));
                        http.get(realm_url.clone())
                            .query(&q)
                            .basic_auth(username, Some(password.expose_secret()))
                    }
                    _ => http.get(realm_url.clone()).query(&q),
                }
            })
            .await?;
        let repository = key.scope.split(':').nth(1).unwrap_or_default().to_string();
        match resp.status() {
            StatusCode::OK => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    repository,
                    detail: format!("token endpoint refused {credential} (HTTP {})", s.as_u16()),
                })
            }
            s => {
                return Err(RegistryError::Protocol {
                    registry: registry.to_string(),
                    detail: format!("token endpoint answered HTTP {}", s.as_u16()),
                })
            }
        }
        let body = read_limited(
            resp,
            MAX_TOKEN_RESPONSE,
            registry,
            self.inner.settings.timeout,
        )
        .await?;
        let now = UnixTime::from_system(SystemTime::now()).0;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|r| r.into_token(now))
            .ok_or_else(|| RegistryError::Protocol {
                registry: registry.to_string(),
                detail: "token endpoint answer has no token".into(),
            })
    }

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
            let result = match self
                .fetch_manifest(&ep, Method::HEAD, image, &reference, c)
                .await
            {
                Ok((Some(info), _)) => Ok(info),
                Ok((None, _)) => self
                    .fetch_manifest(&ep, Method::GET, image, &reference, c)
                    .await
                    .map(|(info, _)| info.expect("GET always yields info")),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_auth() => refused = Some(e),
                other => return other,
            }
        }
        Err(refused.expect("at least one credential is tried"))
    }

    /// `GET` a manifest by tag or digest; the body is verified against the
    /// digest the registry claims and the one asked for.
    pub async fn get_manifest(
        &self,
        image: &Reference,
        reference: &str,
        credentials: &[Credential],
    ) -> Result<(ManifestInfo, Vec<u8>), RegistryError> {
        let ep = self.endpoint(image.registry()).await?;
        let mut refused = None;
        for c in candidates(credentials) {
            match self
                .fetch_manifest(&ep, Method::GET, image, reference, c)
                .await
            {
                Ok((info, body)) => return Ok((info.expect("GET always yields info"), body)),
                Err(e) if e.is_auth() => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(refused.expect("at least one credential is tried"))
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
        let http = self.http(ep.verify_tls);
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
        let body = read_limited(resp, 64 << 10, &ep.registry, self.inner.settings.timeout)
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

    /// One manifest request. Returns `None` info for a HEAD without digest.
    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        method: Method,
        image: &Reference,
        reference: &str,
        credential: &Credential,
    ) -> Result<(Option<ManifestInfo>, Vec<u8>), RegistryError> {
        let repository = image.repository();
        let url = format!("{}/v2/{repository}/manifests/{reference}", ep.base);
        let http = self.http(ep.verify_tls);
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
            match resp.status() {
                StatusCode::UNAUTHORIZED if !renewed_token && token_key.is_some() => {
                    // The cached token may have been revoked or expired early.
                    self.inner
                        .tokens
                        .remove(token_key.as_ref().expect("checked"));
                    renewed_token = true;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        if status != StatusCode::OK {
            let headers = resp.headers().clone();
            let detail = registry_error_detail(
                read_limited(resp, 64 << 10, &ep.registry, self.inner.settings.timeout)
                    .await
                    .ok()
                    .as_deref(),
            );
            let reg = ep.registry.clone();
            let repo = repository.to_string();
            return Err(match status {
                StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                    registry: reg,
                    repository: repo,
                    detail: format!(
                        "registry refused {credential}{}",
                        challenge_error(&headers)
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                },
                StatusCode::FORBIDDEN => RegistryError::Denied {
                    registry: reg,
                    repository: repo,
                    detail: detail.unwrap_or_else(|| format!("registry denied {credential}")),
                },
                StatusCode::NOT_FOUND => RegistryError::NotFound {
                    registry: reg,
                    repository: repo,
                    reference: reference.to_string(),
                    detail: detail.unwrap_or_else(|| "manifest unknown".into()),
                },
                s => RegistryError::Protocol {
                    registry: reg,
                    detail: format!(
                        "manifest request answered HTTP {}{}",
                        s.as_u16(),
                        detail.map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                },
            });
        }
        let headers = resp.headers().clone();
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let size = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let claimed: Option<Digest> = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let requested: Option<Digest> = reference.parse().ok();
        let mismatch = |expected: &Digest, actual: &Digest| RegistryError::DigestMismatch {
            registry: ep.registry.clone(),
            repository: repository.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        };
        if method == Method::HEAD {
            return match claimed {
                Some(d) => {
                    if let Some(r) = requested.as_ref().filter(|r| **r != d) {
                        return Err(mismatch(r, &d));
                    }
                    Ok((
                        Some(ManifestInfo {
                            digest: d,
                            media_type,
                            size,
                        }),
                        Vec::new(),
                    ))
                }
                None => Ok((None, Vec::new())),
            };
        }
        let body = read_limited(
            resp,
            MAX_MANIFEST,
            &ep.registry,
            self.inner.settings.timeout,
        )
        .await?;
        let expected = requested.as_ref().or(claimed.as_ref());
        let actual = match expected {
            Some(e) => e.recompute(&body),
            None => Digest::sha256_of(&body),
        };
        for e in [requested.as_ref(), claimed.as_ref()].into_iter().flatten() {
            if e.recompute(&body) != *e {
                return Err(mismatch(e, &e.recompute(&body)));
            }
        }
        let size = Some(body.len() as u64);
        Ok((
            Some(ManifestInfo {
                digest: actual,
                media_type,
                size,
            }),
            body,
        ))
    }
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

/// The `error=` of a bearer challenge (`invalid_token`, `insufficient_scope`).
fn challenge_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenge::parse)
        .find_map(|c| c.param("error").map(str::to_string))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `CODE: message` from a registry error body.
fn registry_error_detail(body: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: String,
        #[serde(default)]
        message: String,
    }
    let errors: Errors = serde_json::from_slice(body?).ok()?;
    let parts: Vec<String> = errors
        .errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                e.code.clone()
            } else {
                format!("{}: {}", e.code, e.message)
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

async fn read_limited(
    mut resp: Response,
    limit: usize,
    registry: &str,
    timeout: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| from_transport(registry, &e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol {
                registry: registry.to_string(),
                detail: format!("response larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v1"}}]}"#;
        assert_eq!(
            registry_error_detail(Some(body)).unwrap(),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_error_detail(Some(b"<html>")), None);
    }

    #[test]
    fn secrets_never_go_to_a_plain_realm_of_an_https_registry() {
        let plain = reqwest::Url::parse("http://auth.example/token").unwrap();
        let tls = reqwest::Url::parse("https://auth.example/token").unwrap();
        let basic = Credential::Basic {
            username: "u".into(),
            password: "pw-CANARY".to_string().into(),
        };
        let identity = Credential::IdentityToken {
            username: "u".into(),
            token: "id-CANARY".to_string().into(),
        };
        for secret in [&basic, &identity] {
            let err = realm_may_carry(&plain, secret, false).unwrap_err();
            assert!(
                err.contains("clear text") && !err.contains("CANARY"),
                "{err}"
            );
            assert!(realm_may_carry(&tls, secret, false).is_ok());
            assert!(
                realm_may_carry(&plain, secret, true).is_ok(),
                "plain HTTP accepted for this registry"
            );
        }
        assert!(
            realm_may_carry(&plain, &Credential::Anonymous, false).is_ok(),
            "nothing secret to send"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_urlencode(&[("scope", "repository:a/b:pull"), ("x", "a b")]),
            "scope=repository%3Aa%2Fb%3Apull&x=a+b"
        );
    }
}
