//! `POST /v1/exchange`: a service-account token and an image in, credentials
//! for that image's registry out (the kubelet plugin's call).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pullbroker_core::policy::{Purpose, Request, Target};
use pullbroker_core::time::UnixTime;
use pullbroker_core::{Credential, Keychain, Reference};
use pullbroker_credentials::mint::{BrokerCredential, BROKER_USERNAME};
use serde::Deserialize;
use serde_json::json;

use super::{
    bearer, body_error, now, rfc3339, ApiError, AppState, Kind, NARROW_ANNOTATION, REFRESH_AFTER,
};
use pullbroker_credentials::runtime::Current;

/// The first username/password pair a docker config holds for `image`.
fn basic_for(
    config: &pullbroker_core::DockerConfig,
    image: &pullbroker_core::Reference,
) -> Option<(String, String)> {
    config
        .credentials_for(image)
        .into_iter()
        .find_map(|c| match c {
            Credential::Basic { .. } => Some((
                c.username().unwrap_or_default().to_string(),
                c.secret().unwrap_or_default().to_string(),
            )),
            _ => None,
        })
}

/// Body of `POST /v1/exchange`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExchangeRequest {
    /// The SA token (or send `Authorization: Bearer`).
    #[serde(default)]
    token: Option<String>,
    image: String,
    /// As kubelet passes them; only [`NARROW_ANNOTATION`] is read.
    #[serde(default)]
    service_account_annotations: BTreeMap<String, String>,
}

pub(super) async fn exchange(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ExchangeRequest = serde_json::from_slice(&body).map_err(body_error)?;
    let token = req
        .token
        .as_deref()
        .or_else(|| bearer(&headers))
        .ok_or_else(|| {
            ApiError::new(
                Kind::Unauthenticated,
                "missing_token",
                "a service-account token is required (body `token` or Authorization: Bearer)",
            )
        })?;
    let verified = st.verify(token).await?;
    let image = Reference::parse(&req.image)
        .map_err(|e| ApiError::new(Kind::BadRequest, "invalid_reference", e))?;
    let narrowed: Option<Vec<String>> =
        req.service_account_annotations
            .get(NARROW_ANNOTATION)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
    let snapshot = st.snapshot.load();
    let decision = st.decide(
        &snapshot,
        "exchange",
        &Request {
            subject: &verified.subject,
            purpose: Purpose::Pull,
            target: Target::Image {
                registry: image.registry(),
                repository: image.repository(),
            },
            on_behalf_of: None,
            narrowed_to: narrowed.as_deref(),
        },
    );
    let decision = decision
        .into_allow()
        .map_err(|reason| ApiError::new(Kind::Denied, "denied", reason))?;
    let name = decision.credential.clone();
    let now = now();
    let mut expires_at = UnixTime(now).plus(decision.ttl).0.min(verified.expires_at);
    let runtime = snapshot.credentials.get(&name).ok_or_else(|| {
        ApiError::new(
            Kind::Internal,
            "misconfigured",
            format!("credential {name:?} is not loaded"),
        )
    })?;
    let current = runtime
        .current(&name, now, REFRESH_AFTER)
        .await
        .map_err(|e| ApiError::new(Kind::Upstream, "source_unavailable", e))?;
    let kind = current.kind();
    let pair = match &current {
        Current::Mint { keys, .. } => {
            let c = BrokerCredential {
                ns: verified.subject.namespace.clone(),
                sa: verified.subject.service_account.clone(),
                cred: name.clone(),
                iat: now,
                exp: expires_at,
            };
            Some((BROKER_USERNAME.to_string(), c.seal(&keys.current)))
        }
        Current::Static(config) => basic_for(config, &image),
        Current::Refreshed(served) => {
            expires_at = expires_at.min(served.upstream.expires_at);
            basic_for(&served.upstream.config, &image)
        }
    };
    let (username, password) = pair.ok_or_else(|| {
        ApiError::new(
            Kind::Internal,
            "misconfigured",
            format!(
                "credential {name:?} holds no username/password for {}",
                image.registry()
            ),
        )
    })?;
    Ok(Json(json!({
        "registry": image.registry(),
        "authKey": format!("{}/{}", image.registry(), image.repository()),
        "username": username,
        "password": password,
        "expiresAt": rfc3339(expires_at),
        "cacheSeconds": (expires_at - now).max(0),
        "grant": decision.grant,
        "credential": name,
        "kind": kind,
    }))
    .into_response())
}
