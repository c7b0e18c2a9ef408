//! `POST /v1/resolve`: a trusted controller resolves digests on behalf of a
//! namespace; credentials never leave the broker.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use pullbroker_core::policy::{Purpose, Request, Subject, Target};
use pullbroker_core::{Credential, Keychain, Reference};
use pullbroker_credentials::mint::{self, Access};
use serde::Deserialize;
use serde_json::json;

use super::{
    bearer, body_error, next_jti, now, ApiError, AppState, Kind, MAX_RESOLVE_IMAGES, REFRESH_AFTER,
};
use crate::config::Snapshot;
use pullbroker_credentials::runtime::Current;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    namespace: String,
    images: Vec<String>,
}

pub(super) async fn resolve(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let st = &*st;
    let token = bearer(&headers).ok_or_else(|| {
        ApiError::new(
            Kind::Unauthenticated,
            "missing_token",
            "Authorization: Bearer <service-account token> is required",
        )
    })?;
    let caller = st.verify(token).await?;
    let req: ResolveRequest = serde_json::from_slice(&body).map_err(body_error)?;
    if req.images.len() > MAX_RESOLVE_IMAGES {
        return Err(ApiError::new(
            Kind::BadRequest,
            "invalid_request",
            format!("at most {MAX_RESOLVE_IMAGES} images per request"),
        ));
    }
    let snapshot = st.snapshot.load_full();
    let results: Vec<serde_json::Value> = futures::stream::iter(req.images.clone())
        .map(|input: String| {
            let (snapshot, caller, ns) = (
                snapshot.clone(),
                caller.subject.clone(),
                req.namespace.clone(),
            );
            async move { resolve_one(st, &snapshot, &caller, &ns, &input).await }
        })
        .buffered(16)
        .collect()
        .await;
    Ok(Json(json!({"namespace": req.namespace, "results": results})).into_response())
}

async fn resolve_one(
    st: &AppState,
    snapshot: &Snapshot,
    caller: &Subject,
    ns: &str,
    input: &str,
) -> serde_json::Value {
    let fail = |class: &str, message: String| json!({"image": input, "error": {"class": class, "message": message}});
    let image = match Reference::parse(input) {
        Ok(r) => r,
        Err(e) => return fail("invalid_reference", e.to_string()),
    };
    let on_behalf_of = (ns != caller.namespace).then_some(ns);
    let d = st.decide(
        snapshot,
        "resolve",
        &Request {
            subject: caller,
            purpose: Purpose::Resolve,
            target: Target::Image {
                registry: image.registry(),
                repository: image.repository(),
            },
            on_behalf_of,
            narrowed_to: None,
        },
    );
    let name = match d.into_allow() {
        Ok(allow) => allow.credential,
        Err(reason) => return fail("denied", reason),
    };
    let who = format!("{caller} for namespace {ns}");
    match resolve_central(st, snapshot, &name, &image, &who).await {
        Ok(r) => {
            let mut out = json!({"image": input, "digest": r.digest.to_string(), "pinned": pullbroker_core::admission::pinned(input, &r.digest)});
            if let Some(m) = r.media_type {
                out["mediaType"] = json!(m);
            }
            out
        }
        Err(f) => fail(f.class, f.message),
    }
}

/// Why a central resolution failed: a class (`unauthorized`, `not_found`,
/// `timeout`, …) and a message naming the image, never a credential.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub class: &'static str,
    pub message: String,
}

/// Resolves `image` with the central credential `name` through the shared
/// resolver (digest cache, single-flight). The caller has already decided
/// that policy allows it; credentials never leave the broker.
pub(super) async fn resolve_central(
    st: &AppState,
    snapshot: &Snapshot,
    name: &str,
    image: &Reference,
    who: &str,
) -> Result<pullbroker_registry::Resolved, Failure> {
    if let Some(hit) = st.resolver.known(image) {
        return Ok(hit);
    }
    let fail = |class: &'static str, message: String| Failure { class, message };
    let runtime = snapshot.credentials.get(name).ok_or_else(|| {
        fail(
            "misconfigured",
            format!("credential {name:?} is not loaded"),
        )
    })?;
    let current = runtime
        .current(name, now(), REFRESH_AFTER)
        .await
        .map_err(|e| fail("source_unavailable", e.to_string()))?;
    let credentials = match &current {
        Current::Mint {
            keys,
            service,
            issuer,
            ..
        } => {
            // The broker mints a one-minute pull token for exactly this
            // repository and uses it itself.
            let access = [Access {
                kind: "repository".into(),
                name: image.repository().to_string(),
                actions: vec!["pull".into()],
            }];
            let token = mint::registry_token(
                &keys.current,
                issuer,
                service,
                who,
                &access,
                now(),
                60,
                &next_jti(st),
            )
            .map_err(|e| fail("internal", e.to_string()))?;
            vec![Credential::RegistryToken {
                token: token.into(),
            }]
        }
        Current::Static(config) => config.credentials_for(image),
        Current::Refreshed(served) => served.upstream.config.credentials_for(image),
    };
    st.resolver
        .resolve_with(image, name, credentials)
        .await
        .map_err(|e| fail(e.class(), e.to_string()))
}
