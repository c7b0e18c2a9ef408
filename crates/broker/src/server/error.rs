//! The one error every handler answers with: what kind of failure it is
//! (which decides the status, in one table), a class a client can act on,
//! a message a person can read, and the body shape its API speaks — ours,
//! the distribution token spec's, or OAuth 2's for the token endpoint's
//! POST form. Messages never carry a token or credential (handlers build
//! them from names and reasons only).

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// What went wrong, as far as the status code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed: a body, an image reference, a review.
    BadRequest,
    /// No or an unusable service-account token or credential.
    Unauthenticated,
    /// A decision said no.
    Denied,
    NotFound,
    /// A credential's source (an exec command, AWS) failed.
    Upstream,
    /// A dependency is down or the broker is at its limits: retry.
    Unavailable,
    /// The broker's own configuration cannot serve this.
    Internal,
}

impl Kind {
    /// The status of each kind: the one place they are chosen.
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Denied => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body an API family writes errors in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"class", "message"}}`: the broker's own APIs.
    Broker,
    /// `{"errors": [{"code", "message"}]}`: the distribution token spec
    /// (`GET /token`); a 401 carries `WWW-Authenticate: Basic`.
    Registry,
    /// `{"error", "error_description"}`: OAuth 2 (RFC 6749 §5.2), the token
    /// endpoint's POST form.
    OAuth,
}

/// An error answer; `?` in a handler turns it into the response.
#[derive(Debug)]
pub struct ApiError {
    kind: Kind,
    class: &'static str,
    message: String,
    shape: Shape,
    retry_after: bool,
}

impl ApiError {
    pub fn new(kind: Kind, class: &'static str, message: impl fmt::Display) -> Self {
        ApiError {
            kind,
            class,
            message: message.to_string(),
            shape: Shape::Broker,
            retry_after: false,
        }
    }

    /// The same error in another API's shape.
    pub fn in_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// Asks the client to retry after a second (`Retry-After: 1`), as
    /// registries and the kubelet plugin do on a 503.
    pub fn retry_after(mut self) -> Self {
        self.retry_after = true;
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.shape {
            Shape::Broker => json!({"error": {"class": self.class, "message": self.message}}),
            Shape::Registry => json!({"errors": [{"code": self.class, "message": self.message}]}),
            Shape::OAuth => json!({"error": self.class, "error_description": self.message}),
        };
        let mut resp = (self.status(), Json(body)).into_response();
        let headers = resp.headers_mut();
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.shape == Shape::Registry && self.kind == Kind::Unauthenticated {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pullbroker\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value, Option<String>) {
        let resp = e.into_response();
        let status = resp.status();
        let auth = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), auth)
    }

    #[tokio::test]
    async fn each_shape_is_its_apis_and_the_status_comes_from_the_kind() {
        let (s, b, a) = body(ApiError::new(Kind::Denied, "denied", "no grant")).await;
        assert_eq!((s, a), (StatusCode::FORBIDDEN, None));
        assert_eq!(
            b,
            json!({"error": {"class": "denied", "message": "no grant"}})
        );
        let e = ApiError::new(
            Kind::Unauthenticated,
            "UNAUTHORIZED",
            "credentials are required",
        )
        .in_shape(Shape::Registry);
        let (s, b, a) = body(e).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(
            b,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "credentials are required"}]})
        );
        assert_eq!(a.as_deref(), Some("Basic realm=\"pullbroker\""));
        let e = ApiError::new(
            Kind::BadRequest,
            "unsupported_grant_type",
            "grant_type \"x\"",
        )
        .in_shape(Shape::OAuth);
        let (s, b, _) = body(e).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            b,
            json!({"error": "unsupported_grant_type", "error_description": "grant_type \"x\""})
        );
        for (kind, code) in [
            (Kind::NotFound, 404),
            (Kind::Upstream, 502),
            (Kind::Unavailable, 503),
            (Kind::Internal, 500),
        ] {
            assert_eq!(kind.status().as_u16(), code);
        }
    }
}
