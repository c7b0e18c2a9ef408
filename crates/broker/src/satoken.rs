//! Kubernetes service-account token verification, offline against the
//! issuer's JWKS and optionally online through TokenReview.
//!
//! Strict by construction: an algorithm allow-list (RS256, ES256, PS256,
//! EdDSA) checked *before* any key is looked up, so `alg: none` and HMAC
//! algorithms never reach a verifier (no HMAC-with-public-key confusion);
//! the key comes only from the JWKS, by `kid`; a JWK's own `alg`, when
//! present, must equal the token's; `iss` and `aud` must match exactly;
//! `exp` is required and `exp`/`nbf`/`iat` get a small leeway (≤ 60 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pullbroker_core::policy::Subject;
use pullbroker_core::time::secs;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::tokenreview::{CachedReview, ReviewCacheSettings, TokenReviewer};

/// Tokens longer than this are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest leeway we accept in configuration.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// Where the issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document given inline or read from a file.
    Static(String),
    /// Fetched from this URL (refreshed on an unknown `kid`).
    Url(String),
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`; the issuer's
    /// base URL or the document's full URL.
    Discovery(String),
}

#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    /// The audience tokens must carry (the broker's).
    pub audience: String,
    pub jwks: JwksSource,
    pub leeway: Duration,
    /// Bearer token for fetching discovery/JWKS (Kubernetes requires auth by default).
    pub fetch_token: Option<SecretString>,
    pub ca_pem: Option<Vec<u8>>,
    /// Shortest interval between JWKS refreshes triggered by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// How often loaded remote keys are fetched again ([`Verifier::spawn_refresher`]).
    pub keys_refresh_interval: Duration,
    /// How long TokenReview verdicts are reused.
    pub review_cache: ReviewCacheSettings,
    /// Whether keys of the development issuer (`kid` prefix
    /// `pullbroker-dev-`, its private key public in this repository) may be
    /// trusted: only by a broker that listens on loopback alone.
    pub dev_keys_allowed: bool,
}

/// Discovery documents and key sets are a few KiB; a larger answer is
/// refused before it is buffered.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A verified service-account identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Subject,
    pub service_account_uid: Option<String>,
    pub pod: Option<(String, String)>,
    pub node: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    Oversized,
    #[error("token algorithm not allowed: {0}")]
    Algorithm(String),
    #[error("token signed by an unknown key (kid {0:?})")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token audience does not include this broker")]
    Audience,
    #[error("token claims are invalid: {0}")]
    Claims(String),
    #[error("token was rejected by TokenReview: {0}")]
    Revoked(String),
    #[error("issuer keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// The TokenReview call itself failed (API server down): no verdict.
    #[error("TokenReview is unavailable: {0}")]
    ReviewUnavailable(String),
}

impl TokenError {
    /// A stable class name for responses, logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::Oversized => "oversized",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claims(_) => "claims",
            TokenError::Revoked(_) => "revoked",
            TokenError::KeysUnavailable(_) => "keys_unavailable",
            TokenError::ReviewUnavailable(_) => "review_unavailable",
        }
    }

    /// A dependency failed (issuer keys, TokenReview): not a verdict on the
    /// token. Callers answer 503 (retry) rather than 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            TokenError::KeysUnavailable(_) | TokenError::ReviewUnavailable(_)
        )
    }
}

struct KeySet {
    by_kid: HashMap<String, (Option<Algorithm>, Arc<DecodingKey>)>,
}

/// How remote issuer keys are kept: fetched again this often once loaded (a
/// key the issuer removed stops verifying then), and retried with capped
/// exponential backoff while they cannot be fetched.
pub const KEYS_REFRESH_EVERY: Duration = Duration::from_secs(300);
const KEYS_RETRY_FIRST: Duration = Duration::from_millis(250);
const KEYS_RETRY_MAX: Duration = Duration::from_secs(5);

/// Verifies tokens; cheap to share. Verified tokens are remembered (by hash)
/// until they expire, so a token presented again skips the signature check —
/// as long as the key that signed it is still in the issuer's key set.
pub struct Verifier {
    settings: IssuerSettings,
    keys: ArcSwap<KeySet>,
    http: Option<reqwest::Client>,
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Token hash → (identity, the `kid` that verified it).
    verified: Mutex<HashMap<[u8; 32], (VerifiedToken, String)>>,
    reviewer: Option<CachedReview>,
    /// When the keys were last fetched, and why the last fetch failed.
    fetched: Mutex<KeysHealth>,
}

/// What `/healthz` and `/readyz` say about the issuer's keys.
#[derive(Debug, Clone, Default)]
pub struct KeysHealth {
    pub loaded_at: Option<Instant>,
    /// The last fetch's failure, without URLs; cleared by a success.
    pub last_error: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    iat: Option<i64>,
    exp: i64,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubeClaims>,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace", default)]
    legacy_namespace: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name", default)]
    legacy_name: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid", default)]
    legacy_uid: Option<String>,
}

#[derive(Deserialize)]
struct KubeClaims {
    namespace: String,
    serviceaccount: NamedRef,
    #[serde(default)]
    pod: Option<NamedRef>,
    #[serde(default)]
    node: Option<NodeRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize)]
struct NodeRef {
    name: String,
}

fn parse_jwks(text: &str, dev_keys_allowed: bool) -> Result<KeySet, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("JWKS is not valid: {e}"))?;
    let mut by_kid = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            by_kid.insert(kid, (alg, Arc::new(key)));
        }
    }
    if by_kid.is_empty() {
        return Err("JWKS holds no usable keys with a kid".into());
    }
    let is_dev = |k: &String| k.starts_with(pullbroker_credentials::dev_issuer::DEV_KID_PREFIX);
    if let Some(kid) = by_kid.keys().find(|k| is_dev(k)).cloned() {
        if !dev_keys_allowed {
            by_kid.retain(|k, _| !is_dev(k));
            tracing::error!(kid = %kid, "a development issuer key is refused: its private key is public, and this broker listens beyond loopback");
            if by_kid.is_empty() {
                return Err(format!("JWKS holds only development issuer keys ({kid}), refused: the broker listens beyond loopback"));
            }
        } else {
            tracing::warn!(kid = %kid, "a development issuer key is trusted: whoever holds it can mint any service account's token (pullbroker dev-token); never in production");
        }
    }
    Ok(KeySet { by_kid })
}

/// Whether two URLs share scheme, host and port (RFC 6454's origin).
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

impl Verifier {
    /// Builds a verifier; remote key sources are fetched once now. A fetch
    /// that fails is not an error: the verifier starts without keys (every
    /// token answers `keys_unavailable`, `/readyz` says why) and
    /// [`Verifier::spawn_refresher`] keeps trying. Only settings that can
    /// never work are refused.
    pub async fn new(
        settings: IssuerSettings,
        reviewer: Option<Arc<dyn TokenReviewer>>,
    ) -> crate::Result<Verifier> {
        if settings.leeway > MAX_LEEWAY {
            return Err(crate::Error::Issuer(format!(
                "leeway {:?} is larger than {MAX_LEEWAY:?}",
                settings.leeway
            )));
        }
        let http = match &settings.jwks {
            JwksSource::Static(_) => None,
            _ => Some(crate::http_client(settings.ca_pem.as_deref())?),
        };
        let initial = match &settings.jwks {
            JwksSource::Static(text) => {
                parse_jwks(text, settings.dev_keys_allowed).map_err(crate::Error::Issuer)?
            }
            _ => KeySet {
                by_kid: HashMap::new(),
            },
        };
        let settings_review = settings.review_cache;
        let v = Verifier {
            settings,
            keys: ArcSwap::from_pointee(initial),
            http,
            refresh: tokio::sync::Mutex::new(None),
            verified: Mutex::default(),
            reviewer: reviewer.map(|r| CachedReview::new(r, settings_review)),
            fetched: Mutex::default(),
        };
        if v.http.is_some() {
            if let Err(e) = v.refresh_keys(false).await {
                tracing::warn!(error = %e, "service-account issuer keys unavailable; retrying");
            }
        }
        Ok(v)
    }

    /// Keeps remote keys current until the verifier is dropped: retries a
    /// failing fetch with capped exponential backoff, then refreshes every
    /// `keys_refresh_interval`. A failed refresh keeps the keys it has (serve what is
    /// cached) and says so in [`Verifier::keys_health`].
    pub fn spawn_refresher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.http.as_ref()?;
        let every = self.settings.keys_refresh_interval;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut retry = KEYS_RETRY_FIRST;
            loop {
                let wait = match weak.upgrade() {
                    None => return,
                    Some(v) if v.keys_health().last_error.is_none() && v.key_count() > 0 => {
                        retry = KEYS_RETRY_FIRST;
                        every
                    }
                    Some(_) => {
                        let r = retry;
                        retry = (retry * 2).min(KEYS_RETRY_MAX);
                        r
                    }
                };
                tokio::time::sleep(wait).await;
                let Some(v) = weak.upgrade() else { return };
                if let Err(e) = v.refresh_keys(false).await {
                    tracing::warn!(error = %e, "cannot refresh the service-account issuer keys; keeping what is loaded");
                }
            }
        }))
    }

    /// TokenReview calls actually sent (cache misses), if reviewing.
    pub fn token_reviews(&self) -> Option<u64> {
        self.reviewer
            .as_ref()
            .map(|r| r.calls.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// When the keys were last fetched and the last fetch's failure.
    pub fn keys_health(&self) -> KeysHealth {
        self.fetched.lock().expect("poisoned").clone()
    }

    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    /// Number of issuer keys loaded (zero means no token can verify).
    pub fn key_count(&self) -> usize {
        self.keys.load().by_kid.len()
    }

    /// Fetches the JWKS again. Refreshes caused by unknown `kid`s happen at
    /// most once per `min_refresh_interval` (start-up fetches do not count, so
    /// a key rotated just after start is still picked up at once).
    async fn refresh_keys(&self, on_demand: bool) -> Result<(), TokenError> {
        let result = self.fetch_keys(on_demand).await;
        let mut health = self.fetched.lock().expect("poisoned");
        match &result {
            Ok(true) => {
                health.loaded_at = Some(Instant::now());
                health.last_error = None;
            }
            Ok(false) => {}
            Err(e) => health.last_error = Some(e.to_string()),
        }
        result.map(|_| ())
    }

    /// Fetches the key set; `Ok(false)` when nothing was fetched.
    async fn fetch_keys(&self, on_demand: bool) -> Result<bool, TokenError> {
        let Some(http) = &self.http else {
            return Ok(false);
        };
        let mut last = self.refresh.lock().await;
        if on_demand {
            if last.is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let unavailable = |e: String| TokenError::KeysUnavailable(e);
        // reqwest's errors name the URL; what is reported names the step.
        let plain = |e: reqwest::Error| e.without_url().to_string();
        // The fetch token goes to the discovery document's own origin only
        // (or to a configured jwksUrl): a `jwks_uri` elsewhere is fetched
        // without it, whatever the document says.
        let get = |url: &str, with_token: bool| {
            let mut req = http.get(url);
            if let Some(t) = self.settings.fetch_token.as_ref().filter(|_| with_token) {
                req = req.bearer_auth(t.expose_secret());
            }
            req
        };
        let fetch = |url: String, with_token: bool, step: &'static str, limit: usize| async move {
            let resp = get(&url, with_token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| unavailable(format!("{step}: {}", plain(e))))?;
            crate::read_capped(resp, limit)
                .await
                .map_err(|e| unavailable(format!("{step}: {e}")))
        };
        let (jwks_url, with_token) = match &self.settings.jwks {
            JwksSource::Url(u) => (u.clone(), true),
            JwksSource::Discovery(base) => {
                let url = discovery_document_url(base);
                let body = fetch(url.clone(), true, "discovery", MAX_DISCOVERY_BYTES).await?;
                let doc: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|_| unavailable("discovery document: not JSON".into()))?;
                if doc["issuer"].as_str() != Some(self.settings.issuer.as_str()) {
                    return Err(unavailable(format!(
                        "discovery names issuer {}, expected {}",
                        doc["issuer"], self.settings.issuer
                    )));
                }
                let jwks_uri = doc["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| unavailable("discovery document has no jwks_uri".into()))?
                    .to_string();
                let same_origin = same_origin(&url, &jwks_uri);
                if !same_origin && self.settings.fetch_token.is_some() {
                    tracing::warn!("the discovery document's jwks_uri is on another origin: fetched without the broker's token");
                }
                (jwks_uri, same_origin)
            }
            JwksSource::Static(_) => return Ok(false),
        };
        let body = fetch(jwks_url, with_token, "jwks", MAX_JWKS_BYTES).await?;
        let text = String::from_utf8(body).map_err(|_| unavailable("jwks: not UTF-8".into()))?;
        let set = parse_jwks(&text, self.settings.dev_keys_allowed).map_err(unavailable)?;
        tracing::info!(
            keys = set.by_kid.len(),
            "service-account issuer keys loaded"
        );
        self.keys.store(Arc::new(set));
        Ok(true)
    }

    fn key_for(&self, kid: &str) -> Option<(Option<Algorithm>, Arc<DecodingKey>)> {
        self.keys.load().by_kid.get(kid).cloned()
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub async fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Oversized);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.verified.lock().expect("poisoned").get(&hash).cloned();
        let leeway = secs(self.settings.leeway);
        let verified = match cached {
            // Still valid, and its key is still the issuer's.
            Some((v, kid))
                if v.expires_at.saturating_add(leeway) >= now
                    && self.keys.load().by_kid.contains_key(&kid) =>
            {
                v
            }
            _ => {
                let (v, kid) = self.verify_uncached(token, now).await?;
                let mut cache = self.verified.lock().expect("poisoned");
                if cache.len() >= 100_000 {
                    cache.retain(|_, (t, _)| t.expires_at >= now);
                    if cache.len() >= 100_000 {
                        cache.clear();
                    }
                }
                cache.insert(hash, (v.clone(), kid));
                v
            }
        };
        if let Some(reviewer) = &self.reviewer {
            let outcome = reviewer
                .review(hash, token, std::slice::from_ref(&self.settings.audience))
                .await
                .map_err(TokenError::ReviewUnavailable)?;
            if !outcome.authenticated {
                return Err(TokenError::Revoked(
                    outcome.error.unwrap_or_else(|| "not authenticated".into()),
                ));
            }
            if outcome.username.as_deref() != Some(verified.subject.to_string().as_str()) {
                return Err(TokenError::Revoked("TokenReview names another user".into()));
            }
        }
        Ok(verified)
    }

    /// The identity and the `kid` of the key that verified it.
    async fn verify_uncached(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(VerifiedToken, String), TokenError> {
        // The header is read by hand first so the allow-list applies before
        // anything else — jsonwebtoken would reject `none` with a generic error.
        let header_b64 = token.split('.').next().unwrap_or_default();
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed(
                "not three dot-separated parts".into(),
            ));
        }
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| TokenError::Malformed("header is not base64url JSON".into()))?;
        let alg_name = header["alg"]
            .as_str()
            .ok_or_else(|| TokenError::Malformed("header has no alg".into()))?;
        let alg = alg_name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| ALLOWED.contains(a))
            .ok_or_else(|| {
                TokenError::Algorithm(format!("{alg_name} (allowed: RS256, ES256, PS256, EdDSA)"))
            })?;
        if header.get("crit").is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported".into(),
            ));
        }
        let kid = header["kid"]
            .as_str()
            .ok_or_else(|| TokenError::Malformed("header has no kid".into()))?;
        let key = match self.key_for(kid) {
            Some(k) => k,
            None => {
                self.refresh_keys(true).await?;
                self.key_for(kid)
                    .ok_or_else(|| TokenError::UnknownKey(kid.chars().take(64).collect()))?
            }
        };
        if let (Some(key_alg), _) = &key {
            if *key_alg != alg {
                return Err(TokenError::Algorithm(format!(
                    "{alg_name} does not match the key's {key_alg:?}"
                )));
            }
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&[self.settings.audience.as_str()]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.1, &validation).map_err(map_jwt_error)?;
        let claims = data.claims;
        let leeway = secs(self.settings.leeway);
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_add(leeway) < now {
            return Err(TokenError::Expired);
        }
        Ok((subject_from(claims)?, kid.to_string()))
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAudience => TokenError::Audience,
        K::InvalidSignature => TokenError::Signature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
            TokenError::Algorithm("does not fit the key".into())
        }
        K::MissingRequiredClaim(c) => TokenError::Claims(format!("{c} is required")),
        K::InvalidClaimFormat(c) => TokenError::Claims(format!("{c} has the wrong type")),
        K::InvalidSubject => TokenError::Claims("sub is invalid".into()),
        // serde messages may quote claim values; a claim is not a secret, but
        // keep the class and drop the text.
        K::Json(_) => TokenError::Claims("a claim has the wrong type or shape".into()),
        K::Base64(_) | K::Utf8(_) | K::InvalidToken => {
            TokenError::Malformed("not a valid JWS".into())
        }
        _ => TokenError::Malformed("cannot be decoded".into()),
    }
}

/// The subject, from the `kubernetes.io` claim (projected tokens) or the
/// legacy claims, cross-checked with `sub`.
fn subject_from(c: Claims) -> Result<VerifiedToken, TokenError> {
    let from_sub = Subject::parse_username(&c.sub)
        .map_err(|_| TokenError::Claims("sub is not a service account".into()))?;
    let (subject, uid, pod, node) = match c.kubernetes {
        Some(k) => (
            Subject::new(k.namespace, k.serviceaccount.name),
            k.serviceaccount.uid,
            k.pod.map(|p| (p.name, p.uid.unwrap_or_default())),
            k.node.map(|n| n.name),
        ),
        None => match (c.legacy_namespace, c.legacy_name) {
            (Some(ns), Some(name)) => (Subject::new(ns, name), c.legacy_uid, None, None),
            _ => (from_sub.clone(), None, None, None),
        },
    };
    if subject != from_sub {
        return Err(TokenError::Claims(
            "sub contradicts the kubernetes.io claims".into(),
        ));
    }
    Ok(VerifiedToken {
        subject,
        service_account_uid: uid,
        pod,
        node,
        expires_at: c.exp,
    })
}
/// The discovery document's URL from `discoveryUrl`, which may be the
/// issuer's base URL (`https://api:6443`) or already the document's full URL
/// (`…/.well-known/openid-configuration`): both are what operators write.
pub fn discovery_document_url(configured: &str) -> String {
    const SUFFIX: &str = "/.well-known/openid-configuration";
    let trimmed = configured.trim_end_matches('/');
    if trimmed.ends_with(SUFFIX) {
        trimmed.to_string()
    } else {
        format!("{trimmed}{SUFFIX}")
    }
}
