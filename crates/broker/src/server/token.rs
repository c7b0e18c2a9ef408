//! `GET`/`POST /token`: the distribution token server for registries that
//! trust the broker's signing key. Only `repository:…:pull` is ever granted,
//! intersected with the grants at that moment.

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Form;
use axum::Json;
use pullbroker_core::policy::{Purpose, Request, Subject, Target};
use pullbroker_core::time::secs;
use pullbroker_credentials::mint::{self, Access, BrokerCredential, BROKER_USERNAME};
use serde_json::json;

use super::{basic, next_jti, now, rfc3339, ApiError, AppState, Kind, Shape};
use crate::config::CredentialRuntime;

/// Token endpoint errors: distribution clients read the status; the body
/// follows the registry error format.
fn token_error(kind: Kind, code: &'static str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(kind, code, message).in_shape(Shape::Registry)
}

pub(super) async fn token_get(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let service = q
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let scopes: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string))
        .collect();
    issue_registry_token(&st, &service, &scopes, basic(&headers)).await
}

pub(super) async fn token_post(
    State(st): State<Arc<AppState>>,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let field = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let secret = match field("grant_type").as_deref() {
        Some("password") => field("username").zip(field("password")),
        Some("refresh_token") => field("refresh_token").map(|t| (BROKER_USERNAME.to_string(), t)),
        other => {
            return Err(ApiError::new(
                Kind::BadRequest,
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported (password, refresh_token)",
                    other.unwrap_or("")
                ),
            )
            .in_shape(Shape::OAuth))
        }
    };
    let scopes: Vec<String> = field("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let service = field("service").unwrap_or_default();
    issue_registry_token(&st, &service, &scopes, secret).await
}

/// `repository:NAME:ACTIONS` → (type, name, actions).
fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    (!name.is_empty()).then(|| (kind, name, actions.split(',').collect()))
}

async fn issue_registry_token(
    st: &AppState,
    service: &str,
    scopes: &[String],
    secret: Option<(String, String)>,
) -> Result<Response, ApiError> {
    let Some((_user, password)) = secret else {
        return Err(token_error(
            Kind::Unauthenticated,
            "UNAUTHORIZED",
            "credentials are required",
        ));
    };
    let snapshot = st.snapshot.load();
    let Some((
        cred_name,
        CredentialRuntime::TokenIssuer {
            keys,
            service,
            issuer,
            token_ttl,
        },
    )) = snapshot.by_service(service)
    else {
        return Err(token_error(
            Kind::BadRequest,
            "UNSUPPORTED",
            format!("service {service:?} is not a registry this broker issues tokens for"),
        ));
    };
    let now = now();
    let (subject, auth_expires): (Subject, i64) = if BrokerCredential::is_one(&password) {
        match BrokerCredential::open(&password, keys) {
            Ok(c) if c.cred == cred_name => (c.subject(), c.exp),
            Ok(_) => {
                return Err(token_error(
                    Kind::Unauthenticated,
                    "UNAUTHORIZED",
                    "credential was issued for another registry",
                ))
            }
            Err(e) => {
                tracing::info!(target: "audit", endpoint = "token", reason = e, "broker credential refused");
                return Err(token_error(Kind::Unauthenticated, "UNAUTHORIZED", e));
            }
        }
    } else {
        match st.verify(&password).await {
            Ok(v) => (v.subject, v.expires_at),
            Err(refused) if refused.kind() == Kind::Unavailable => {
                return Err(token_error(
                    Kind::Unavailable,
                    "UNAVAILABLE",
                    "credential verification is temporarily unavailable; retry",
                ))
            }
            Err(_) => {
                return Err(token_error(
                    Kind::Unauthenticated,
                    "UNAUTHORIZED",
                    "invalid credentials",
                ))
            }
        }
    };
    let mut access = Vec::new();
    let mut lifetime = secs(*token_ttl);
    for scope in scopes {
        let Some((kind, name, actions)) = parse_scope(scope) else {
            continue;
        };
        // Only pull is ever granted; push, delete, `*` and catalog are dropped.
        if kind != "repository" || !actions.iter().any(|a| *a == "pull" || *a == "*") {
            tracing::info!(target: "audit", endpoint = "token", subject = %subject, scope = %scope, allowed = false, reason = "only repository pull is ever granted", "decision");
            continue;
        }
        // A synced secret's credential stands for its whole namespace.
        let purpose = if subject.is_namespace() {
            Purpose::Sync
        } else {
            Purpose::Pull
        };
        let d = st.decide(
            &snapshot,
            "token",
            &Request {
                subject: &subject,
                purpose,
                target: Target::Credential {
                    credential: cred_name,
                    repository: name,
                },
                on_behalf_of: None,
                narrowed_to: None,
            },
        );
        if let Some(allow) = d.allow() {
            lifetime = lifetime.min(secs(allow.ttl));
            access.push(Access {
                kind: "repository".into(),
                name: name.to_string(),
                actions: vec!["pull".into()],
            });
        }
    }
    let lifetime = lifetime.min(auth_expires - now);
    if lifetime <= 0 {
        return Err(token_error(
            Kind::Unauthenticated,
            "UNAUTHORIZED",
            "credentials have expired",
        ));
    }
    match mint::registry_token(&keys.current, issuer, service, &subject.to_string(), &access, now, lifetime, &next_jti(st)) {
        Ok(t) => Ok(Json(json!({"token": t, "access_token": t, "expires_in": lifetime, "issued_at": rfc3339(now)})).into_response()),
        Err(e) => Err(token_error(Kind::Internal, "UNKNOWN", e)),
    }
}
