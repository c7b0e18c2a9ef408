//! Operations: `/healthz`, `/readyz`, `/metrics`, and the certificates a
//! registry must trust (`/v1/credentials/{name}/rootcertbundle`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{error, AppState};
use crate::config::{self, CredentialRuntime};

pub(super) async fn root_cert_bundle(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    let snapshot = st.snapshot.load();
    let resp = match snapshot.credentials.get(&name) {
        Some(CredentialRuntime::TokenIssuer { keys, .. }) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            keys.bundle(),
        )
            .into_response(),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token-issuer credential {name:?}"),
        ),
    };
    st.count("rootcertbundle", resp)
}

pub(super) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let status = st.reload.lock().expect("poisoned").clone();
    Json(json!({"status": "ok", "configGeneration": status.generation, "lastReloadError": status.last_error})).into_response()
}

/// Ready when tokens can be verified: the issuer's keys are loaded.
pub(super) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.snapshot.load().policy_source == config::PolicySource::Kubernetes
        && !st.cluster_policy.load(Ordering::Relaxed)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the policy from the cluster",
        )
            .into_response();
    }
    match st.verifier.load().key_count() {
        0 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no service-account issuer keys loaded",
        )
            .into_response(),
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}
