//! The broker's HTTP surface (axum):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/exchange` | SA token + image → credentials for that image's registry |
//! | `GET/POST /token` | distribution token server for registries that trust the broker |
//! | `POST /v1/resolve` | a controller resolves digests on behalf of a namespace |
//! | `GET /v1/credentials/{name}/rootcertbundle` | certificates a registry must trust |
//! | `GET /healthz`, `/readyz`, `/metrics` | operations |
//!
//! Every policy decision is logged as one `audit` event (subject, credential,
//! repository, purpose, outcome, reason); no event, error or metric carries a
//! token or credential.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures::StreamExt;
use pullbroker_core::policy::{Decision, Purpose, Request, Subject, Target};
use pullbroker_core::{Credential, Keychain, Reference};
use pullbroker_registry::{ClientSettings, RegistryClient};
use serde::Deserialize;
use serde_json::json;

use crate::config::{self, CredentialRuntime, Snapshot};
use crate::metrics::{DecisionLabels, Metrics, RequestLabels, TokenLabels};
use crate::mint::{self, Access, BrokerCredential, BROKER_CREDENTIAL_PREFIX, BROKER_USERNAME};
use crate::satoken::{VerifiedToken, Verifier};
use crate::tokenreview::{HttpTokenReview, TokenReviewer};

/// Annotation on a service account that narrows (never widens) its access.
pub const NARROW_ANNOTATION: &str = "pullbroker.dev/repositories";
/// Images per `/v1/resolve` request.
const MAX_RESOLVE_IMAGES: usize = 1000;

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    verifier: ArcSwap<Verifier>,
    issuer_fingerprint: Mutex<String>,
    client: RegistryClient,
    pub metrics: Metrics,
    reload: Mutex<ReloadStatus>,
    config_path: Option<PathBuf>,
    reviewer_override: Option<Arc<dyn TokenReviewer>>,
    jti: AtomicU64,
    /// With `policySource: kubernetes`: the cluster's policy has arrived.
    cluster_policy: std::sync::atomic::AtomicBool,
}

#[derive(Default, Clone)]
struct ReloadStatus {
    generation: u64,
    last_error: Option<String>,
}

/// The broker: state plus router.
#[derive(Clone)]
pub struct Broker {
    pub state: Arc<AppState>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn issuer_fingerprint(s: &Snapshot) -> String {
    format!("{:?}|{:?}", s.issuer, s.token_review)
}

async fn build_verifier(
    s: &Snapshot,
    reviewer_override: Option<Arc<dyn TokenReviewer>>,
) -> Result<Verifier, String> {
    let reviewer: Option<Arc<dyn TokenReviewer>> = match (reviewer_override, &s.token_review) {
        (Some(r), _) => Some(r),
        (None, Some(spec)) => {
            let token = std::fs::read_to_string(&spec.token_file)
                .map_err(|e| format!("tokenReview.tokenFile: {e}"))?;
            let ca = spec
                .ca_file
                .as_ref()
                .map(std::fs::read)
                .transpose()
                .map_err(|e| format!("tokenReview.caFile: {e}"))?;
            Some(Arc::new(HttpTokenReview::new(
                &spec.api_server,
                token.trim().to_string().into(),
                ca.as_deref(),
            )?))
        }
        (None, None) => None,
    };
    Verifier::new(s.issuer.clone(), reviewer).await
}

impl Broker {
    /// A broker serving `snapshot`; `config_path` enables reloads.
    pub async fn new(
        snapshot: Snapshot,
        config_path: Option<PathBuf>,
        client_settings: ClientSettings,
        reviewer_override: Option<Arc<dyn TokenReviewer>>,
    ) -> Result<Broker, String> {
        let verifier = build_verifier(&snapshot, reviewer_override.clone()).await?;
        let metrics = Metrics::default();
        metrics.config_generation.set(1);
        Ok(Broker {
            state: Arc::new(AppState {
                issuer_fingerprint: Mutex::new(issuer_fingerprint(&snapshot)),
                snapshot: ArcSwap::from_pointee(snapshot),
                verifier: ArcSwap::from_pointee(verifier),
                client: RegistryClient::new(client_settings)?,
                metrics,
                reload: Mutex::new(ReloadStatus {
                    generation: 1,
                    last_error: None,
                }),
                config_path,
                reviewer_override,
                jti: AtomicU64::new(0),
                cluster_policy: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/exchange", post(exchange))
            .route("/token", get(token_get).post(token_post))
            .route("/v1/resolve", post(resolve))
            .route(
                "/v1/credentials/{name}/rootcertbundle",
                get(root_cert_bundle),
            )
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(256 * 1024))
            .with_state(self.state.clone())
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.state.snapshot.load()
    }

    /// Serves a policy and credentials read from elsewhere (the cluster),
    /// keeping the file's broker settings.
    pub fn install_policy(
        &self,
        policy: pullbroker_core::policy::Policy,
        credentials: std::collections::BTreeMap<String, config::CredentialRuntime>,
    ) {
        let current = self.state.snapshot.load();
        self.state.snapshot.store(Arc::new(Snapshot {
            policy,
            credentials,
            exec_source_dir: current.exec_source_dir.clone(),
            policy_source: current.policy_source,
            system_namespace: current.system_namespace.clone(),
            issuer: current.issuer.clone(),
            token_review: current.token_review.clone(),
            listen: current.listen,
            watched: current.watched.clone(),
        }));
        self.state.cluster_policy.store(true, Ordering::Relaxed);
        let mut status = self.state.reload.lock().expect("poisoned");
        status.generation += 1;
        self.state
            .metrics
            .config_generation
            .set(status.generation as i64);
    }

    /// Loads the config file again; on any problem the running config stays.
    pub async fn reload(&self) -> Result<(), String> {
        let st = &self.state;
        let Some(path) = &st.config_path else {
            return Ok(());
        };
        let result = async {
            let mut snapshot = config::load(path)?;
            if snapshot.policy_source == config::PolicySource::Kubernetes {
                // The policy comes from the cluster; the file only from here.
                let current = st.snapshot.load();
                snapshot.policy = current.policy.clone();
                snapshot.credentials = current.credentials.clone();
            }
            let fp = issuer_fingerprint(&snapshot);
            if *st.issuer_fingerprint.lock().expect("poisoned") != fp {
                let verifier = build_verifier(&snapshot, st.reviewer_override.clone()).await?;
                st.verifier.store(Arc::new(verifier));
                *st.issuer_fingerprint.lock().expect("poisoned") = fp;
            }
            st.snapshot.store(Arc::new(snapshot));
            Ok::<(), String>(())
        }
        .await;
        let mut status = st.reload.lock().expect("poisoned");
        match &result {
            Ok(()) => {
                status.generation += 1;
                status.last_error = None;
                st.metrics.config_generation.set(status.generation as i64);
                tracing::info!(generation = status.generation, "configuration reloaded");
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                st.metrics.config_reload_errors.inc();
                tracing::warn!(error = %e, "configuration change rejected; keeping the last good configuration");
            }
        }
        result
    }

    /// Polls the config file (and files it references) and reloads on change.
    /// Polling works with every editor's save strategy and with ConfigMap
    /// symlink swaps, where inotify watches go stale.
    pub fn spawn_watcher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        // The config file itself is always watched: a rejected edit may have
        // changed which other files it names.
        let current = move |b: &Broker| {
            let mut files = b.snapshot().watched.clone();
            files.extend(b.state.config_path.clone());
            fingerprint(&files)
        };
        tokio::spawn(async move {
            let mut last = current(&broker);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = current(&broker);
                if now != last {
                    let _ = broker.reload().await;
                    // A reload may change which files are watched.
                    last = current(&broker);
                }
            }
        })
    }
}

/// Refresh an exec source's credential at half its lifetime.
const REFRESH_AFTER: f64 = 0.5;

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

fn next_jti(st: &AppState) -> String {
    let n = st.jti.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{n:x}")
}

fn fingerprint(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => format!("{}:{:?}:{}", p.display(), m.modified().ok(), m.len()),
            Err(_) => format!("{}:missing", p.display()),
        })
        .collect()
}

fn error(status: StatusCode, class: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": {"class": class, "message": message.to_string()}})),
    )
        .into_response()
}

impl AppState {
    fn count(&self, endpoint: &'static str, resp: Response) -> Response {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: resp.status().as_u16(),
            })
            .inc();
        resp
    }

    async fn verify(&self, token: &str) -> Result<VerifiedToken, Response> {
        let verifier = self.verifier.load_full();
        match verifier.verify(token, now()).await {
            Ok(v) => {
                self.metrics
                    .token_verifications
                    .get_or_create(&TokenLabels { result: "ok" })
                    .inc();
                Ok(v)
            }
            Err(e) => {
                self.metrics
                    .token_verifications
                    .get_or_create(&TokenLabels { result: e.class() })
                    .inc();
                tracing::info!(target: "audit", class = e.class(), "service-account token refused");
                Err(error(StatusCode::UNAUTHORIZED, e.class(), e))
            }
        }
    }

    fn decide(&self, snapshot: &Snapshot, endpoint: &str, req: &Request<'_>) -> Decision {
        let d = snapshot.policy.decide(req);
        let (registry, repository) = match req.target {
            Target::Image {
                registry,
                repository,
            } => (registry.to_string(), repository),
            Target::Credential {
                credential,
                repository,
            } => (format!("credential:{credential}"), repository),
        };
        tracing::info!(
            target: "audit",
            endpoint,
            subject = %req.subject,
            on_behalf_of = req.on_behalf_of.unwrap_or(""),
            purpose = %req.purpose,
            registry = %registry,
            repository,
            allowed = d.allowed,
            grant = d.grant.as_deref().unwrap_or(""),
            credential = d.credential.as_deref().unwrap_or(""),
            reason = %d.reason,
            "decision"
        );
        let outcome = if d.allowed { "allow" } else { "deny" };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                purpose: req.purpose.to_string(),
                outcome,
            })
            .inc();
        d
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(v.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
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

/// serde's messages can quote values (a token given in the wrong place):
/// report only where the body went wrong.
fn body_error(e: serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!(
            "request body is not valid ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

async fn exchange(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match exchange_inner(&st, &headers, &body).await {
        Ok(r) | Err(r) => r,
    };
    st.count("exchange", resp)
}

async fn exchange_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let req: ExchangeRequest = serde_json::from_slice(body).map_err(body_error)?;
    let token = req
        .token
        .as_deref()
        .or_else(|| bearer(headers))
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "a service-account token is required (body `token` or Authorization: Bearer)",
            )
        })?;
    let verified = st.verify(token).await?;
    let image = Reference::parse(&req.image)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_reference", e))?;
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
    if !decision.allowed {
        return Err(error(StatusCode::FORBIDDEN, "denied", &decision.reason));
    }
    let name = decision
        .credential
        .clone()
        .expect("an allow names its credential");
    let now = now();
    let mut expires_at = (now + decision.ttl.as_secs() as i64).min(verified.expires_at);
    let (username, password, kind) = match snapshot.credentials.get(&name) {
        Some(CredentialRuntime::TokenIssuer { keys, .. }) => {
            let c = BrokerCredential {
                ns: verified.subject.namespace.clone(),
                sa: verified.subject.service_account.clone(),
                cred: name.clone(),
                iat: now,
                exp: expires_at,
            };
            (BROKER_USERNAME.to_string(), c.seal(&keys.current), "broker")
        }
        Some(
            runtime @ (CredentialRuntime::Static { .. } | CredentialRuntime::Refreshing { .. }),
        ) => {
            let upstream;
            let (config, kind) = match runtime {
                CredentialRuntime::Refreshing { source } => {
                    upstream = source.current(now, REFRESH_AFTER).await.map_err(|e| {
                        tracing::warn!(credential = %name, error = %e, "exec source failed");
                        error(
                            StatusCode::BAD_GATEWAY,
                            "source_unavailable",
                            format!("credential {name:?} is unavailable: its source failed"),
                        )
                    })?;
                    expires_at = expires_at.min(upstream.expires_at);
                    (&upstream.config, "refreshing")
                }
                CredentialRuntime::Static { config } => (config, "static"),
                CredentialRuntime::TokenIssuer { .. } => unreachable!("matched above"),
            };
            let (u, p) = basic_for(config, &image).ok_or_else(|| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "misconfigured",
                    format!(
                        "credential {name:?} holds no username/password for {}",
                        image.registry()
                    ),
                )
            })?;
            (u, p, kind)
        }
        None => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "misconfigured",
                format!("credential {name:?} is not loaded"),
            ))
        }
    };
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

/// Token endpoint errors: distribution clients read the status; the body
/// follows the registry error format.
fn token_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let mut resp = (
        status,
        Json(json!({"errors": [{"code": code, "message": message.to_string()}]})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"pullbroker\""),
        );
    }
    resp
}

async fn token_get(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
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
    let resp = issue_registry_token(&st, &service, &scopes, basic(&headers)).await;
    st.count("token", resp)
}

async fn token_post(
    State(st): State<Arc<AppState>>,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let secret = match field("grant_type").as_deref() {
        Some("password") => field("username").zip(field("password")),
        Some("refresh_token") => field("refresh_token").map(|t| (BROKER_USERNAME.to_string(), t)),
        other => {
            let resp = (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type", "error_description": format!("grant_type {:?} is not supported (password, refresh_token)", other.unwrap_or(""))}))).into_response();
            return st.count("token", resp);
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
    let resp = issue_registry_token(&st, &service, &scopes, secret).await;
    st.count("token", resp)
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
) -> Response {
    let Some((_user, password)) = secret else {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "credentials are required",
        );
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
        return token_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!("service {service:?} is not a registry this broker issues tokens for"),
        );
    };
    let now = now();
    let (subject, auth_expires): (Subject, i64) = if password.starts_with(BROKER_CREDENTIAL_PREFIX)
    {
        match BrokerCredential::open(&password, keys, now) {
            Ok(c) if c.cred == cred_name => (c.subject(), c.exp),
            Ok(_) => {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "credential was issued for another registry",
                )
            }
            Err(e) => {
                tracing::info!(target: "audit", endpoint = "token", reason = e, "broker credential refused");
                return token_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e);
            }
        }
    } else {
        match st.verify(&password).await {
            Ok(v) => (v.subject, v.expires_at),
            Err(_) => {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "invalid credentials",
                )
            }
        }
    };
    let mut access = Vec::new();
    let mut lifetime = token_ttl.as_secs() as i64;
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
        if d.allowed {
            lifetime = lifetime.min(d.ttl.as_secs() as i64);
            access.push(Access {
                kind: "repository".into(),
                name: name.to_string(),
                actions: vec!["pull".into()],
            });
        }
    }
    let lifetime = lifetime.min(auth_expires - now);
    if lifetime <= 0 {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "credentials have expired",
        );
    }
    match mint::registry_token(&keys.current, issuer, service, &subject.to_string(), &access, now, lifetime, &next_jti(st)) {
        Ok(t) => Json(json!({"token": t, "access_token": t, "expires_in": lifetime, "issued_at": rfc3339(now)})).into_response(),
        Err(e) => token_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    namespace: String,
    images: Vec<String>,
}

async fn resolve(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match resolve_inner(&st, &headers, &body).await {
        Ok(r) | Err(r) => r,
    };
    st.count("resolve", resp)
}

async fn resolve_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let token = bearer(headers).ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "Authorization: Bearer <service-account token> is required",
        )
    })?;
    let caller = st.verify(token).await?;
    let req: ResolveRequest = serde_json::from_slice(body).map_err(body_error)?;
    if req.images.len() > MAX_RESOLVE_IMAGES {
        return Err(error(
            StatusCode::BAD_REQUEST,
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
    if !d.allowed {
        return fail("denied", d.reason);
    }
    if let Some(digest) = image.digest() {
        return json!({"image": input, "digest": digest.to_string(), "pinned": input});
    }
    let name = d.credential.unwrap_or_default();
    let credentials = match snapshot.credentials.get(&name) {
        Some(CredentialRuntime::TokenIssuer {
            keys,
            service,
            issuer,
            ..
        }) => {
            // Credentials never leave the broker: it mints a one-minute pull
            // token for exactly this repository and uses it itself.
            let access = [Access {
                kind: "repository".into(),
                name: image.repository().to_string(),
                actions: vec!["pull".into()],
            }];
            let who = format!("{caller} for namespace {ns}");
            match mint::registry_token(
                &keys.current,
                issuer,
                service,
                &who,
                &access,
                now(),
                60,
                &next_jti(st),
            ) {
                Ok(t) => vec![Credential::RegistryToken { token: t.into() }],
                Err(e) => return fail("internal", e),
            }
        }
        Some(CredentialRuntime::Static { config }) => config.credentials_for(&image),
        Some(CredentialRuntime::Refreshing { source }) => {
            match source.current(now(), REFRESH_AFTER).await {
                Ok(upstream) => upstream.config.credentials_for(&image),
                Err(e) => {
                    tracing::warn!(credential = %name, error = %e, "exec source failed");
                    return fail(
                        "source_unavailable",
                        format!("credential {name:?} is unavailable: its source failed"),
                    );
                }
            }
        }
        None => {
            return fail(
                "misconfigured",
                format!("credential {name:?} is not loaded"),
            )
        }
    };
    match st.client.head_manifest(&image, &credentials).await {
        Ok(info) => {
            let base = input.split('@').next().unwrap_or(input);
            json!({"image": input, "digest": info.digest.to_string(), "pinned": format!("{base}@{}", info.digest), "mediaType": info.media_type})
        }
        Err(e) => fail(e.class(), e.to_string()),
    }
}

async fn root_cert_bundle(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
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

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let status = st.reload.lock().expect("poisoned").clone();
    Json(json!({"status": "ok", "configGeneration": status.generation, "lastReloadError": status.last_error})).into_response()
}

/// Ready when tokens can be verified: the issuer's keys are loaded.
async fn readyz(State(st): State<Arc<AppState>>) -> Response {
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

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

impl Broker {
    /// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
