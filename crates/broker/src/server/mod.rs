//! The broker's HTTP surface (axum):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/exchange` | SA token + image → credentials for that image's registry |
//! | `GET/POST /token` | distribution token server for registries that trust the broker |
//! | `POST /v1/resolve` | a controller resolves digests on behalf of a namespace |
//! | `POST /v1/admission/pin` | the mutating webhook: pins tags to digests (AdmissionReview v1) |
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
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::{Decision, Request, Target};
use pullbroker_core::time::UnixTime;
use pullbroker_registry::{ClientSettings, RegistryClient};

mod admission;
mod error;
mod exchange;
mod ops;
mod reload;
mod resolve;
mod token;

pub use error::{ApiError, Kind, Shape};

use crate::config::{CredentialRuntime, Snapshot};
use crate::metrics::{DecisionLabels, Metrics, RequestLabels, TokenLabels};
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
    /// Digest resolution for `/v1/resolve` and admission: one cache and
    /// single-flight for every caller (credentials are given per call).
    resolver: pullbroker_registry::Resolver,
    pub metrics: Metrics,
    reload: Mutex<ReloadStatus>,
    config_path: Option<PathBuf>,
    reviewer_override: Option<Arc<dyn TokenReviewer>>,
    jti: AtomicU64,
    /// With `policySource: kubernetes`: the cluster's policy has arrived.
    cluster_policy: std::sync::atomic::AtomicBool,
    /// Since when the cluster policy may be stale (a watch is failing).
    policy_stale_since: Mutex<Option<std::time::Instant>>,
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

/// The broker's clock: wall time in seconds, as token claims count it.
fn now() -> i64 {
    UnixTime::from_system(SystemTime::now()).0
}

fn rfc3339(t: i64) -> String {
    UnixTime(t).rfc3339()
}

/// What the verifier is built from, by value: Debug redacts the fetch token,
/// and the TokenReview token is a file read at build time, so both go in by
/// content (hashed) — a rotated projected token rebuilds the verifier.
fn issuer_fingerprint(s: &Snapshot) -> String {
    use secrecy::ExposeSecret as _;
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!("{:?}|{:?}", s.issuer, s.token_review));
    if let Some(t) = &s.issuer.fetch_token {
        h.update(t.expose_secret());
    }
    if let Some(r) = &s.token_review {
        for f in std::iter::once(&r.token_file).chain(&r.ca_file) {
            h.update(std::fs::read(f).unwrap_or_default());
        }
    }
    format!("{:x}", h.finalize())
}

async fn build_verifier(
    s: &Snapshot,
    reviewer_override: Option<Arc<dyn TokenReviewer>>,
) -> crate::Result<Arc<Verifier>> {
    let reviewer: Option<Arc<dyn TokenReviewer>> = match (reviewer_override, &s.token_review) {
        (Some(r), _) => Some(r),
        (None, Some(spec)) => {
            let token = std::fs::read_to_string(&spec.token_file)
                .map_err(crate::Error::read(&spec.token_file))?;
            let ca = match &spec.ca_file {
                Some(f) => Some(std::fs::read(f).map_err(crate::Error::read(f))?),
                None => None,
            };
            Some(Arc::new(HttpTokenReview::new(
                &spec.api_server,
                token.trim().to_string().into(),
                ca.as_deref(),
            )?))
        }
        (None, None) => None,
    };
    let verifier = Arc::new(Verifier::new(s.issuer.clone(), reviewer).await?);
    // Detached: it ends by itself once this verifier is replaced and dropped.
    drop(verifier.spawn_refresher());
    Ok(verifier)
}

impl Broker {
    /// A broker serving `snapshot`; `config_path` enables reloads.
    pub async fn new(
        snapshot: Snapshot,
        config_path: Option<PathBuf>,
        client_settings: ClientSettings,
        reviewer_override: Option<Arc<dyn TokenReviewer>>,
    ) -> crate::Result<Broker> {
        let verifier = build_verifier(&snapshot, reviewer_override.clone()).await?;
        let metrics = Metrics::default();
        metrics.config_generation.set(1);
        let client = RegistryClient::new(ClientSettings {
            on_rate_limited: Some(metrics.on_rate_limited()),
            registry_tls: snapshot.registry_tls(),
            ..client_settings
        })?;
        Ok(Broker {
            state: Arc::new(AppState {
                issuer_fingerprint: Mutex::new(issuer_fingerprint(&snapshot)),
                snapshot: ArcSwap::from_pointee(snapshot),
                verifier: ArcSwap::new(verifier),
                resolver: pullbroker_registry::Resolver::new(
                    client,
                    Arc::new(pullbroker_core::keychain::Anonymous),
                    pullbroker_registry::ResolverOptions::default(),
                ),
                metrics,
                reload: Mutex::new(ReloadStatus {
                    generation: 1,
                    last_error: None,
                }),
                config_path,
                reviewer_override,
                jti: AtomicU64::new(0),
                cluster_policy: std::sync::atomic::AtomicBool::new(false),
                policy_stale_since: Mutex::new(None),
            }),
        })
    }

    /// The broker's routes. The API ones are bounded by the snapshot's
    /// [`crate::config::Limits`] as it is now (a change takes a restart, like the
    /// listeners): beyond `maxConcurrentRequests` a request is answered 503
    /// at once, past `requestTimeout` it is answered 503 and its work (an
    /// exec source's run, a registry call) is dropped. Probes and metrics
    /// stay outside the limits.
    ///
    /// With admission on its own listener ([`crate::config::AdmissionListener`])
    /// this router does not serve `/v1/admission/pin`: see
    /// [`Broker::admission_router`].
    pub fn router(&self) -> Router {
        let snapshot = self.snapshot();
        let limits = snapshot.limits;
        let mut api = Router::new()
            .route("/v1/exchange", post(exchange::exchange))
            .route("/token", get(token::token_get).post(token::token_post))
            .route("/v1/resolve", post(resolve::resolve))
            .route(
                "/v1/credentials/{name}/rootcertbundle",
                get(ops::root_cert_bundle),
            );
        if snapshot.listeners.admission.is_none() {
            api = api.route("/v1/admission/pin", admission_route());
        }
        let api = self.limited(api, limits.max_concurrent_requests, limits.request_timeout);
        self.with_probes(api)
    }

    /// Admission's own listener: `/v1/admission/pin` alone (and the probes),
    /// under its own concurrency limit, so exchanges saturating theirs do
    /// not make the API server's calls fail.
    pub fn admission_router(&self) -> Router {
        let snapshot = self.snapshot();
        let max = snapshot
            .listeners
            .admission
            .as_ref()
            .map_or(snapshot.limits.max_concurrent_requests, |a| {
                a.max_concurrent_requests
            });
        let pin = Router::new().route("/v1/admission/pin", admission_route());
        self.with_probes(self.limited(pin, max, snapshot.limits.request_timeout))
    }

    /// `routes` bounded: beyond `max` requests at once the rest are answered
    /// 503 at once, and none runs longer than `timeout`.
    fn limited(
        &self,
        routes: Router<Arc<AppState>>,
        max: usize,
        timeout: Duration,
    ) -> Router<Arc<AppState>> {
        let state = self.state.clone();
        routes.layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    move |e: tower::BoxError| limited(state.clone(), e),
                ))
                .load_shed()
                .concurrency_limit(max)
                .timeout(timeout)
                .layer(axum::middleware::from_fn_with_state(
                    self.state.clone(),
                    in_flight,
                )),
        )
    }

    /// Probes and metrics, outside any limit, beside `api`.
    fn with_probes(&self, api: Router<Arc<AppState>>) -> Router {
        Router::new()
            .merge(api)
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics))
            .layer(DefaultBodyLimit::max(256 * 1024))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                observed,
            ))
            .with_state(self.state.clone())
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.state.snapshot.load()
    }
}

/// Refresh an exec source's credential at half its lifetime.
const REFRESH_AFTER: f64 = 0.5;

fn next_jti(st: &AppState) -> String {
    let n = st.jti.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{n:x}")
}

/// serde's messages can quote values (a token given in the wrong place):
/// report only where the body went wrong.
fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(
        Kind::BadRequest,
        "invalid_request",
        format!(
            "request body is not valid ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

/// Counts a request while its handler runs (inside the limits).
fn admission_route() -> axum::routing::MethodRouter<Arc<AppState>> {
    // The API server sends objects up to its own 3 MiB request limit.
    post(admission::pin).layer(DefaultBodyLimit::max(3 * 1024 * 1024))
}

/// The `endpoint` label of an API route (`pullbroker_requests_total`);
/// probes and metrics are not counted.
fn endpoint(route: &str) -> Option<&'static str> {
    Some(match route {
        "/v1/exchange" => "exchange",
        "/token" => "token",
        "/v1/resolve" => "resolve",
        "/v1/admission/pin" => "admission",
        "/v1/credentials/{name}/rootcertbundle" => "rootcertbundle",
        _ => return None,
    })
}

/// Times and counts every answer by its matched route and status — the
/// limits' refusals and timeouts included (this layer wraps theirs), so
/// no handler counts for itself.
async fn observed(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    if let Some(endpoint) = endpoint(&route) {
        st.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: resp.status().as_u16(),
            })
            .inc();
    }
    st.metrics
        .request_duration
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn in_flight(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    struct Counted<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for Counted<'_> {
        // Also when the timeout drops the handler mid-way.
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    st.metrics.in_flight_requests.inc();
    let _counted = Counted(&st.metrics.in_flight_requests);
    next.run(req).await
}

/// The answer to a request the limits refused: 503 with `Retry-After`, as
/// registries and the kubelet plugin retry those.
async fn limited(st: Arc<AppState>, e: tower::BoxError) -> Response {
    let (reason, message) = if e.is::<tower::timeout::error::Elapsed>() {
        ("timeout", "the request took too long")
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        ("overloaded", "too many requests at once")
    } else {
        ("error", "the request could not be served")
    };
    st.metrics
        .limited_requests
        .get_or_create(&crate::metrics::LimitLabels { reason })
        .inc();
    tracing::warn!(reason, "request refused by the broker's limits");
    ApiError::new(Kind::Unavailable, "unavailable", message)
        .retry_after()
        .into_response()
}

impl AppState {
    async fn verify(&self, token: &str) -> Result<VerifiedToken, ApiError> {
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
                if e.is_unavailable() {
                    // A dependency's failure is not a verdict: retryable, and the
                    // detail (URLs, client errors) stays in our log.
                    tracing::warn!(class = e.class(), error = %e, "cannot verify service-account tokens");
                    return Err(ApiError::new(
                        Kind::Unavailable,
                        "unavailable",
                        "service-account token verification is temporarily unavailable; retry",
                    ));
                }
                tracing::info!(target: "audit", class = e.class(), "service-account token refused");
                Err(ApiError::new(Kind::Unauthenticated, e.class(), e))
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
            allowed = d.is_allowed(),
            grant = d.allow().map_or("", |a| a.grant.as_str()),
            credential = d.allow().map_or("", |a| a.credential.as_str()),
            reason = %d.reason(),
            "decision"
        );
        let outcome = if d.is_allowed() { "allow" } else { "deny" };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                purpose: req.purpose.to_string(),
                outcome,
            })
            .inc();
        if let Some(a) = d.allow() {
            let labels = crate::metrics::GrantLabels {
                grant: a.grant.clone(),
                purpose: req.purpose.to_string(),
            };
            self.metrics.grant_allows.get_or_create(&labels).inc();
            self.metrics
                .grant_last_allowed
                .get_or_create(&labels)
                .set(now());
        }
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

/// The cluster policy source installs into the broker.
impl pullbroker_credentials::runtime::PolicySink for Broker {
    fn install(
        &self,
        policy: pullbroker_core::policy::Policy,
        credentials: BTreeMap<String, CredentialRuntime>,
        trust: BTreeMap<String, pullbroker_credentials::runtime::Trust>,
    ) {
        self.install_policy(policy, credentials, trust)
    }

    fn exec_source_dir(&self) -> Option<PathBuf> {
        self.snapshot().exec_source_dir.clone()
    }

    fn current(&self, current: bool) {
        let mut since = self.state.policy_stale_since.lock().expect("poisoned");
        match (current, since.is_some()) {
            (true, true) => {
                tracing::info!("policy from the cluster is current again");
                *since = None;
            }
            (false, false) => {
                tracing::warn!("cannot watch the cluster policy; serving the last one seen");
                *since = Some(std::time::Instant::now());
            }
            _ => {}
        }
    }
}

impl Broker {
    /// Serves HTTPS on `listener` with `cert` (each new handshake gets the
    /// current certificate) until `shutdown` resolves, then drains in-flight
    /// requests for up to 30 s.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        cert: Arc<crate::tls::ReloadingCert>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve_router_tls(listener, cert.server_config(), self.router(), shutdown).await
    }

    /// Serves plain HTTP on `listener` until `shutdown` resolves, then drains in-flight requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve_router(listener, self.router(), shutdown).await
    }

    /// Serves admission's own listener over TLS, requiring the API server's
    /// client certificate when `admission.clientCAFile` is set. An error
    /// here (an unreadable CA bundle) is a start-up error.
    pub async fn serve_admission_tls(
        self,
        listener: tokio::net::TcpListener,
        cert: Arc<crate::tls::ReloadingCert>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> crate::Result<()> {
        let client_ca = self
            .snapshot()
            .listeners
            .admission
            .as_ref()
            .and_then(|a| a.client_ca_file.clone());
        let config = match client_ca {
            Some(ca) => cert.server_config_requiring_clients(&ca)?,
            None => cert.server_config(),
        };
        serve_router_tls(listener, config, self.admission_router(), shutdown)
            .await
            .map_err(|e| crate::Error::Tls(format!("admission listener: {e}")))
    }

    /// Serves admission's own listener as plain HTTP (loopback development).
    pub async fn serve_admission(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve_router(listener, self.admission_router(), shutdown).await
    }
}

async fn serve_router_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
    // TCP_NODELAY, as axum::serve sets for plain HTTP: without it Nagle's
    // algorithm and the peer's delayed ACK stall small TLS records ~40 ms.
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::from_tcp(listener.into_std()?)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
