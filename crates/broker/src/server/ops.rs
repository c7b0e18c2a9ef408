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

use super::{ApiError, AppState, Kind};
use crate::config::{self, CredentialRuntime};

pub(super) async fn root_cert_bundle(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    match st.snapshot.load().credentials.get(&name) {
        Some(CredentialRuntime::TokenIssuer { keys, .. }) => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            keys.bundle(),
        )
            .into_response()),
        _ => Err(ApiError::new(
            Kind::NotFound,
            "not_found",
            format!("no token-issuer credential {name:?}"),
        )),
    }
}

/// What the broker depends on, as of now: the issuer's keys and, with
/// `policySource: kubernetes`, the cluster policy's freshness.
struct Dependencies {
    keys: usize,
    /// Seconds since the keys were fetched; `None` if never (static keys: 0).
    keys_age: Option<u64>,
    keys_error: Option<String>,
    kubernetes: bool,
    policy_arrived: bool,
    policy_stale: Option<u64>,
}

fn dependencies(st: &AppState) -> Dependencies {
    let verifier = st.verifier.load();
    let health = verifier.keys_health();
    let remote = !matches!(
        verifier.settings().jwks,
        crate::satoken::JwksSource::Static(_)
    );
    Dependencies {
        keys: verifier.key_count(),
        keys_age: if remote {
            health.loaded_at.map(|t| t.elapsed().as_secs())
        } else {
            Some(0)
        },
        keys_error: health.last_error,
        kubernetes: st.snapshot.load().policy_source == config::PolicySource::Kubernetes,
        policy_arrived: st.cluster_policy.load(Ordering::Relaxed),
        policy_stale: st
            .policy_stale_since
            .lock()
            .expect("poisoned")
            .map(|t| t.elapsed().as_secs()),
    }
}

/// Alive (the process serves), with what it serves from: staleness shows
/// here and in `/metrics`, not as unreadiness — cached keys and policy keep
/// serving through an outage.
pub(super) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let status = st.reload.lock().expect("poisoned").clone();
    let d = dependencies(&st);
    let policy = d.kubernetes.then(|| {
        json!({"source": "kubernetes", "arrived": d.policy_arrived,
               "current": d.policy_arrived && d.policy_stale.is_none(),
               "staleSeconds": d.policy_stale.unwrap_or(0)})
    });
    Json(json!({
        "status": "ok",
        "configGeneration": status.generation,
        "lastReloadError": status.last_error,
        "issuerKeys": {"loaded": d.keys, "ageSeconds": d.keys_age, "lastError": d.keys_error},
        "policy": policy,
    }))
    .into_response()
}

/// Ready when tokens can be verified (the issuer's keys are loaded) and,
/// with `policySource: kubernetes`, the cluster's policy has arrived; 503
/// with the reason otherwise.
pub(super) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match readiness(&dependencies(&st)) {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

fn readiness(d: &Dependencies) -> Result<(), String> {
    if d.kubernetes && !d.policy_arrived {
        return Err("waiting for the policy from the cluster".into());
    }
    if d.keys == 0 {
        let why = d.keys_error.as_deref().unwrap_or("not fetched yet");
        return Err(format!("no service-account issuer keys loaded: {why}"));
    }
    Ok(())
}

pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let d = dependencies(&st);
    let m = &st.metrics;
    m.policy_stale_seconds
        .set(d.policy_stale.unwrap_or(0) as i64);
    m.issuer_keys.set(d.keys as i64);
    m.issuer_keys_age_seconds
        .set(d.keys_age.map_or(-1, |a| a as i64));
    m.ready.set(i64::from(readiness(&d).is_ok()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}
