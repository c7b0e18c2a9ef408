//! TokenReview over the broker's cluster connection (`policySource:
//! kubernetes` without an explicit `tokenReview`). It joins the broker's
//! [`TokenReviewer`] seam with the kube client the policy source already
//! uses, so it lives where both are wired: the binary.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use pullbroker_broker::tokenreview::{ReviewOutcome, TokenReviewer};

pub struct ClusterTokenReview(pub kube::Client);

impl TokenReviewer for ClusterTokenReview {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<ReviewOutcome, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(audiences.to_vec()),
                },
                ..Default::default()
            };
            // The error is kube's (it never carries the request body).
            let answer = Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) => format!("TokenReview answered HTTP {}", s.code),
                    _ => "TokenReview request failed".to_string(),
                })?;
            let status = answer.status.unwrap_or_default();
            Ok(ReviewOutcome {
                authenticated: status.authenticated.unwrap_or(false),
                username: status.user.and_then(|u| u.username),
                error: status.error,
            })
        })
    }
}
