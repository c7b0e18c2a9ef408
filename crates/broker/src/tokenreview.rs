//! The online check: Kubernetes TokenReview, which sees what offline
//! verification cannot — a pod-bound token whose pod was deleted.

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
    ) -> Result<Self, String> {
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
            let review: serde_json::Value = resp
                .json()
                .await
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
