//! The online check: Kubernetes TokenReview, which sees what offline
//! verification cannot — a pod-bound token whose pod was deleted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

/// What TokenReview said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewOutcome {
    pub authenticated: bool,
    pub username: Option<String>,
    pub error: Option<String>,
}

/// The seam tests replace.
pub trait TokenReviewer: Send + Sync {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<ReviewOutcome, String>>;
}

/// A TokenReview answer is a few hundred bytes; more is refused unread.
const MAX_REVIEW_BYTES: usize = 64 * 1024;

/// `POST /apis/authentication.k8s.io/v1/tokenreviews` on an API server.
pub struct HttpTokenReview {
    url: String,
    bearer: SecretString,
    http: reqwest::Client,
}

impl HttpTokenReview {
    pub fn new(
        api_server: &str,
        bearer: SecretString,
        ca_pem: Option<&[u8]>,
    ) -> crate::Result<Self> {
        Ok(HttpTokenReview {
            url: format!(
                "{}/apis/authentication.k8s.io/v1/tokenreviews",
                api_server.trim_end_matches('/')
            ),
            bearer,
            http: crate::http_client(ca_pem)?,
        })
    }
}

impl TokenReviewer for HttpTokenReview {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<ReviewOutcome, String>> {
        Box::pin(async move {
            let body = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences},
            });
            let resp = self
                .http
                .post(&self.url)
                .bearer_auth(self.bearer.expose_secret())
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("TokenReview request failed: {}", e.without_url()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("TokenReview answered HTTP {}", status.as_u16()));
            }
            let body = crate::read_capped(resp, MAX_REVIEW_BYTES)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let review: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| "TokenReview answer is not JSON".to_string())?;
            let s = &review["status"];
            Ok(ReviewOutcome {
                authenticated: s["authenticated"].as_bool().unwrap_or(false),
                username: s["user"]["username"].as_str().map(str::to_string),
                error: s["error"].as_str().map(str::to_string),
            })
        })
    }
}

/// How long TokenReview verdicts are reused (per token and audience).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewCacheSettings {
    /// A positive verdict. With the API server's own ~10 s cache, a revoked
    /// token is refused within about `10 s + positive`.
    pub positive: Duration,
    /// A negative verdict (a burst of a bad token costs one review).
    pub negative: Duration,
    /// While TokenReview cannot be reached, a positive verdict this recent
    /// still counts; older, the answer is 503 (no verdict), never 401.
    pub stale_if_unavailable: Duration,
    /// Tokens remembered at most.
    pub max_entries: usize,
    /// How long one review may take. An API server that accepts the
    /// connection and never answers is "unavailable" after this, exactly as
    /// one that refuses it: the kubelet plugin gives up after 5 s.
    pub timeout: Duration,
    /// How long a token with a usable stale verdict waits for a review
    /// before the stale verdict is served (the review goes on for the
    /// callers that have nothing else).
    pub stale_after: Duration,
}

impl Default for ReviewCacheSettings {
    fn default() -> Self {
        ReviewCacheSettings {
            positive: Duration::from_secs(5),
            negative: Duration::from_secs(2),
            stale_if_unavailable: Duration::from_secs(60),
            max_entries: 100_000,
            timeout: Duration::from_secs(2),
            stale_after: Duration::from_millis(500),
        }
    }
}

struct Entry {
    started: Instant,
    /// Filled once by the first caller; concurrent callers wait for it, so a
    /// burst of one token costs one review.
    verdict: tokio::sync::OnceCell<(ReviewOutcome, Instant)>,
    /// The positive verdict this entry replaced, for `stale_if_unavailable`.
    fallback: Option<(ReviewOutcome, Instant)>,
}

/// A bounded cache in front of a [`TokenReviewer`], keyed by token hash (the
/// token itself is never kept).
pub struct CachedReview {
    inner: Arc<dyn TokenReviewer>,
    settings: ReviewCacheSettings,
    entries: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    /// Reviews actually sent (for metrics and the benchmark).
    pub calls: AtomicU64,
}

impl CachedReview {
    pub fn new(inner: Arc<dyn TokenReviewer>, settings: ReviewCacheSettings) -> Self {
        CachedReview {
            inner,
            settings,
            entries: Mutex::default(),
            calls: AtomicU64::new(0),
        }
    }

    fn ttl(&self, o: &ReviewOutcome) -> Duration {
        if o.authenticated {
            self.settings.positive
        } else {
            self.settings.negative
        }
    }

    /// The verdict for `token` (identified by `hash`), from the cache or one
    /// review shared by every concurrent caller.
    pub async fn review(
        &self,
        hash: [u8; 32],
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewOutcome, String> {
        let entry = {
            let mut entries = self.entries.lock().expect("poisoned");
            let current = entries.get(&hash).cloned();
            match current {
                Some(e)
                    if match e.verdict.get() {
                        Some((o, at)) => at.elapsed() < self.ttl(o),
                        // In flight, or the last try failed: join or retry it.
                        None => e.started.elapsed() < self.settings.positive,
                    } =>
                {
                    e
                }
                previous => {
                    if entries.len() >= self.settings.max_entries {
                        let keep = self
                            .settings
                            .positive
                            .max(self.settings.stale_if_unavailable);
                        entries.retain(|_, e| e.started.elapsed() < keep);
                        if entries.len() >= self.settings.max_entries {
                            entries.clear();
                        }
                    }
                    let fallback = previous.and_then(|p| {
                        p.verdict
                            .get()
                            .filter(|(o, _)| o.authenticated)
                            .cloned()
                            .or_else(|| p.fallback.clone())
                    });
                    let e = Arc::new(Entry {
                        started: Instant::now(),
                        verdict: tokio::sync::OnceCell::new(),
                        fallback,
                    });
                    entries.insert(hash, e.clone());
                    e
                }
            }
        };
        if let Some((o, _)) = entry.verdict.get() {
            return Ok(o.clone());
        }
        let review = entry.verdict.get_or_try_init(|| async {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(self.settings.timeout, self.inner.review(token, audiences))
                .await
            {
                Ok(answer) => answer.map(|o| (o, Instant::now())),
                Err(_) => Err(format!(
                    "TokenReview did not answer within {:?}",
                    self.settings.timeout
                )),
            }
        });
        let stale = entry
            .fallback
            .as_ref()
            .filter(|(_, at)| at.elapsed() < self.settings.stale_if_unavailable)
            .map(|(o, _)| o.clone());
        let result = match &stale {
            // A hung API server must not hold a token it answered for a
            // minute ago: past `stale_after` that answer is served.
            Some(o) => match tokio::time::timeout(self.settings.stale_after, review).await {
                Ok(r) => r,
                Err(_) => return Ok(o.clone()),
            },
            None => review.await,
        };
        match result {
            Ok((o, _)) => Ok(o.clone()),
            Err(e) => stale.ok_or(e),
        }
    }
}
