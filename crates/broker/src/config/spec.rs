//! The `BrokerConfig` document's types, as written in the file, and the
//! checks that turn its listener and limit settings into what the broker
//! runs with ([`Listeners`], [`Limits`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pullbroker_core::policy::model::parse_duration;
use serde::Deserialize;

use super::resolve;

/// The broker's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerConfigSpec {
    /// Listen address (default 127.0.0.1:8480).
    #[serde(default)]
    pub listen: Option<String>,
    /// The audience service-account tokens must be minted for (default `pullbroker`).
    #[serde(default)]
    pub audience: Option<String>,
    /// Namespace of central Secrets (default `pullbroker-system`).
    #[serde(default)]
    pub system_namespace: Option<String>,
    pub service_account_issuer: IssuerSpec,
    /// Secret data from files: `{secretName: {key: path}}`.
    #[serde(default)]
    pub secret_files: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// Operator-controlled namespace labels, for `namespaceSelector`s.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Where credentials, grants, central secrets and namespace labels come
    /// from: this file (default) or the cluster's API (watched).
    #[serde(default)]
    pub policy_source: PolicySource,
    /// Directory of exec source executables (relative to this file); exec
    /// sources are refused without it.
    #[serde(default)]
    pub exec_source_dir: Option<PathBuf>,
    /// Serve `listen` over TLS with this certificate and key (PEM files,
    /// reloaded when they change).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Serve `listen` as plain HTTP without `tls`: loopback development only.
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// An extra plain-HTTP listener beside the TLS one (loopback only), e.g.
    /// for a local registry's token realm in a lab.
    #[serde(default)]
    pub plain_http_listen: Option<String>,
    /// Admission pinning settings.
    #[serde(default)]
    pub admission: AdmissionSpec,
    /// Bounds on the work requests may cause (read at start).
    #[serde(default)]
    pub limits: LimitsSpec,
}

impl BrokerConfigSpec {
    /// Where central Secrets and CA bundles live (default `pullbroker-system`).
    pub fn system_namespace(&self) -> String {
        self.system_namespace
            .clone()
            .unwrap_or_else(|| "pullbroker-system".into())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Longest a request may take before it is answered 503 (default 30s).
    #[serde(default)]
    pub request_timeout: Option<String>,
    /// Requests served at once; more are answered 503 at once (default 1024).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
}

/// How much work the API endpoints take on (`/healthz`, `/readyz` and
/// `/metrics` are never limited, so probes still answer under load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
        }
    }
}

/// The duration setting `field`, `default` when unset; a refusal names it.
pub(super) fn duration_setting(
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    value
        .map(parse_duration)
        .transpose()
        .map(|d| d.unwrap_or(default))
        .map_err(|e| format!("{field}: {e}"))
}

pub(super) fn limits(spec: &LimitsSpec) -> Result<Limits, String> {
    let mut l = Limits::default();
    if let Some(t) = &spec.request_timeout {
        l.request_timeout = parse_duration(t).map_err(|e| format!("limits.requestTimeout: {e}"))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&l.request_timeout) {
            return Err(format!(
                "limits.requestTimeout {t:?} must be between 1s and 10m"
            ));
        }
    }
    if let Some(n) = spec.max_concurrent_requests {
        if !(1..=65_536).contains(&n) {
            return Err(format!(
                "limits.maxConcurrentRequests {n} must be between 1 and 65536"
            ));
        }
        l.max_concurrent_requests = n;
    }
    Ok(l)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdmissionSpec {
    /// Registries whose images are never pinned (Knative's
    /// `registries-skipping-tag-resolving`: exact `host[:port]` match).
    #[serde(default)]
    pub skip_registries: Vec<String>,
    /// Admission's own listener (TLS with the broker's certificate). When
    /// set, `/v1/admission/pin` is served there and nowhere else, with its
    /// own concurrency limit, so a pull storm on the credential port cannot
    /// make pod creation fail, and a NetworkPolicy can admit only the API
    /// server to it.
    #[serde(default)]
    pub listen: Option<String>,
    /// PEM bundle of the CA that signs the API server's client certificate
    /// (kube-apiserver's `AdmissionConfiguration` kubeconfig): a client
    /// without a certificate it signed is refused at the TLS handshake,
    /// before any registry is asked anything. Needs `listen`.
    #[serde(default, rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
    /// Reviews served at once on that listener; more are answered 503 at
    /// once (default 256).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
}

/// Admission's own listener ([`AdmissionSpec::listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionListener {
    pub listen: SocketAddr,
    /// Client certificates required, signed by this CA bundle.
    pub client_ca_file: Option<PathBuf>,
    pub max_concurrent_requests: usize,
}

/// How the broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// The main listener: TLS with `tls`, else plain HTTP (loopback only).
    pub listen: SocketAddr,
    pub tls: Option<TlsSpec>,
    /// Extra plain-HTTP listener (loopback only).
    pub plain_http: Option<SocketAddr>,
    /// Admission's own listener; `None` serves admission on `listen`.
    pub admission: Option<AdmissionListener>,
}

pub(super) fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    #[default]
    File,
    /// `RegistryCredential`/`PullGrant` objects, Secrets of the system
    /// namespace and namespace labels, from the Kubernetes API.
    Kubernetes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    /// Expected `iss` (e.g. https://kubernetes.default.svc).
    pub issuer: String,
    /// One of: a JWKS file, a JWKS URL, or an OIDC discovery base URL.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Clock leeway for exp/nbf/iat (default 30s, at most 60s).
    #[serde(default)]
    pub leeway: Option<String>,
    /// How often remote keys are fetched again once loaded (default 5m): a
    /// key the issuer removed stops verifying, cached verifications included.
    #[serde(default)]
    pub keys_refresh_interval: Option<String>,
    /// Bearer token file for fetching discovery/JWKS.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Online revocation check through an API server's TokenReview.
    #[serde(default)]
    pub token_review: Option<TokenReviewSpec>,
    /// With `policySource: kubernetes`, tokens are also checked by
    /// TokenReview over the cluster connection unless this is `true`.
    /// Offline verification alone accepts the token of a deleted service
    /// account or pod until the token expires.
    #[serde(default)]
    pub offline_verification: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenReviewSpec {
    pub api_server: String,
    pub token_file: PathBuf,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a positive verdict is reused (default 5s, at most 60s): a
    /// revoked token is refused within the API server's own ~10 s plus this.
    #[serde(default)]
    pub cache_ttl: Option<String>,
    /// How long a negative verdict is reused (default 2s, at most 60s).
    #[serde(default)]
    pub negative_cache_ttl: Option<String>,
}

/// The listeners `broker` asks for, each checked: TLS wherever a token or
/// credential travels, plain HTTP on loopback only. Every problem found is
/// pushed; `None` when there was one.
pub(super) fn listeners(
    broker: &BrokerConfigSpec,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Listeners> {
    let before = problems.len();
    let listen = broker
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8480".into());
    let listen: Result<SocketAddr, _> = listen.parse().map_err(|_| {
        problems.push(format!(
            "listen {listen:?} is not an address like 127.0.0.1:8480"
        ));
    });
    let tls = broker.tls.clone().map(|t| TlsSpec {
        cert_file: resolve(base, &t.cert_file),
        key_file: resolve(base, &t.key_file),
    });
    let plain_http = broker.plain_http_listen.as_deref().and_then(|a| {
        match a.parse::<SocketAddr>() {
            Ok(addr) if is_loopback(&addr) => Some(addr),
            Ok(_) => {
                problems.push(format!("plainHttpListen {a:?}: plain HTTP is only served on loopback (127.0.0.0/8, ::1); use tls for anything else"));
                None
            }
            Err(_) => {
                problems.push(format!("plainHttpListen {a:?} is not an address like 127.0.0.1:8481"));
                None
            }
        }
    });
    if let Ok(addr) = &listen {
        match (&tls, broker.insecure_plain_http) {
            (Some(_), true) => problems.push("set either tls or insecurePlainHttp, not both (plainHttpListen adds a plain listener beside TLS)".into()),
            (None, false) => problems.push(format!("listen {addr}: tokens and credentials travel over this listener, so it needs tls (certFile, keyFile); for loopback development only, set insecurePlainHttp: true")),
            (None, true) if !is_loopback(addr) => problems.push(format!("listen {addr}: insecurePlainHttp is only allowed on loopback (127.0.0.0/8, ::1); use tls")),
            _ => {}
        }
    }
    let admission = admission_listener(broker, base, tls.is_some())
        .map_err(|e| problems.push(e))
        .ok()
        .flatten();
    let listen = listen.ok()?;
    (problems.len() == before).then_some(Listeners {
        listen,
        tls,
        plain_http,
        admission,
    })
}

fn admission_listener(
    broker: &BrokerConfigSpec,
    base: &Path,
    tls: bool,
) -> Result<Option<AdmissionListener>, String> {
    let a = &broker.admission;
    let Some(listen) = &a.listen else {
        return match (&a.client_ca_file, a.max_concurrent_requests) {
            (None, None) => Ok(None),
            _ => Err("admission.clientCAFile and admission.maxConcurrentRequests need admission.listen (admission's own listener)".into()),
        };
    };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("admission.listen {listen:?} is not an address like 0.0.0.0:8444"))?;
    if !tls && !is_loopback(&addr) {
        return Err(format!("admission.listen {addr}: the API server calls webhooks over TLS only; configure tls (plain HTTP is for loopback development)"));
    }
    if a.client_ca_file.is_some() && !tls {
        return Err("admission.clientCAFile: client certificates need tls".into());
    }
    let max = a.max_concurrent_requests.unwrap_or(256);
    if !(1..=65_536).contains(&max) {
        return Err(format!(
            "admission.maxConcurrentRequests {max} must be between 1 and 65536"
        ));
    }
    Ok(Some(AdmissionListener {
        listen: addr,
        client_ca_file: a.client_ca_file.as_ref().map(|f| resolve(base, f)),
        max_concurrent_requests: max,
    }))
}
