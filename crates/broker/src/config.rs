//! Standalone mode: everything from one YAML file of Kubernetes-shaped
//! documents — a `BrokerConfig`, `RegistryCredential`s, `PullGrant`s,
//! `Secret`s and `Namespace`s (for labels) — so the same documents can later
//! be applied to a cluster. Secret data may also come from files
//! (`BrokerConfig.spec.secretFiles`), relative to the config file.
//!
//! A file is accepted whole or not at all: any problem is an error, so a bad
//! edit never half-applies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::model::{parse_duration, API_VERSION};
use pullbroker_core::policy::{Named, Policy, PullGrantSpec, RegistryCredentialSpec};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::satoken::{IssuerSettings, JwksSource};
use crate::Error;
pub use pullbroker_credentials::runtime::{
    assemble, credential_runtime, Assembled, ConfigMaps, CredentialRuntime, Secrets, Trust,
};
pub use pullbroker_credentials::source::Refreshers;

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
fn duration_setting(
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

fn limits(spec: &LimitsSpec) -> Result<Limits, String> {
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

fn is_loopback(addr: &SocketAddr) -> bool {
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

/// Everything the broker serves from, swapped whole on reload. `Clone` so
/// a swap can be retried on a fresh current value (`ArcSwap::rcu`).
#[derive(Clone)]
pub struct Snapshot {
    /// Shared, so a snapshot that changes only settings (or only the policy)
    /// is made without copying the other.
    pub policy: std::sync::Arc<Policy>,
    pub credentials: std::sync::Arc<BTreeMap<String, CredentialRuntime>>,
    /// How each credential's registries are reached (its `transport`).
    pub trust: std::sync::Arc<BTreeMap<String, Trust>>,
    pub exec_source_dir: Option<PathBuf>,
    pub policy_source: PolicySource,
    pub system_namespace: String,
    pub issuer: IssuerSettings,
    pub token_review: Option<TokenReviewSpec>,
    /// Whether TokenReview was explicitly turned off (`offlineVerification`).
    pub offline_verification: bool,
    pub listeners: Listeners,
    /// Registries admission never pins.
    pub admission_skip_registries: Vec<String>,
    pub limits: Limits,
    /// Files whose change triggers a reload.
    pub watched: Vec<PathBuf>,
    /// The exec-source refreshers `credentials` were built with; a reload
    /// builds with the same ones ([`load_with`]), keeping current credentials.
    pub refreshers: std::sync::Arc<Refreshers>,
}

impl Snapshot {
    /// The registry client's per-registry trust, in credential-name order
    /// (as grants decide), from each credential's `transport`.
    pub fn registry_tls(&self) -> Vec<pullbroker_registry::RegistryTls> {
        self.trust.values().map(registry_tls).collect()
    }

    /// The token-issuer credential whose registry `service` this is.
    pub fn by_service(&self, service: &str) -> Option<(&str, &CredentialRuntime)> {
        self.credentials.iter().find_map(|(name, c)| match c {
            CredentialRuntime::TokenIssuer { service: s, .. } if s == service => {
                Some((name.as_str(), c))
            }
            _ => None,
        })
    }
}

/// A credential's trust as the registry client takes it.
pub fn registry_tls(t: &Trust) -> pullbroker_registry::RegistryTls {
    pullbroker_registry::RegistryTls {
        registries: t.registries.clone(),
        ca_pems: t.ca_pem.iter().cloned().collect(),
        ca_only: t.ca_only,
        plain_http: t.plain_http,
    }
}

/// The documents of a YAML stream, each with the line of the file it starts
/// on. Split by hand because the YAML parser's stream API skips empty
/// documents, and problems are reported by document number: a `---` at
/// column 0 is always a document marker (YAML forbids it as content, even
/// in block or quoted scalars), so splitting there is exact. A marker may
/// carry content (`--- {…}`); an empty stretch before the first marker is
/// no document.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs: Vec<(usize, String)> = vec![(1, String::new())];
    for (n, line) in text.lines().enumerate() {
        let rest = line
            .strip_prefix("---")
            .filter(|r| r.is_empty() || r.starts_with([' ', '\t']));
        match rest {
            Some(rest) => docs.push((n + 1, format!("{rest}\n"))),
            None => {
                let doc = &mut docs.last_mut().expect("one at least").1;
                doc.push_str(line);
                doc.push('\n');
            }
        }
    }
    if docs.len() > 1 && blank(&docs[0].1) {
        docs.remove(0);
    }
    docs
}

/// Only blank lines and comments: an empty document.
fn blank(doc: &str) -> bool {
    doc.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

fn meta_name(doc: &Value) -> Result<String, String> {
    doc.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "metadata.name is required".to_string())
}

fn spec<T: serde::de::DeserializeOwned>(doc: &Value, what: &str) -> Result<T, String> {
    let spec = doc
        .get("spec")
        .cloned()
        .ok_or_else(|| format!("{what}: spec is required"))?;
    // serde's messages quote values; specs hold no secrets, so keep them.
    serde_json::from_value(spec).map_err(|e| format!("{what}: {e}"))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads and validates a standalone config file (once: its exec sources
/// get refreshers of their own).
pub fn load(path: &Path) -> crate::Result<Snapshot> {
    load_with(path, &Default::default())
}

/// Loads and validates a standalone config file, its exec sources served
/// by `refreshers` (a running broker's, kept across reloads).
pub fn load_with(path: &Path, refreshers: &std::sync::Arc<Refreshers>) -> crate::Result<Snapshot> {
    let text = std::fs::read_to_string(path).map_err(Error::read(path))?;
    parse_with(&text, path, refreshers)
}

/// Validates config `text` as if read from `path` (files it names are
/// resolved against `path`'s directory and read; nothing is written).
pub fn parse(text: &str, path: &Path) -> crate::Result<Snapshot> {
    parse_with(text, path, &Default::default())
}

fn parse_with(
    text: &str,
    path: &Path,
    refreshers: &std::sync::Arc<Refreshers>,
) -> crate::Result<Snapshot> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems: Vec<String> = Vec::new();
    let mut broker: Option<BrokerConfigSpec> = None;
    let mut credentials = Vec::new();
    let mut grants = Vec::new();
    let mut secrets: Secrets = BTreeMap::new();
    // Shaped like the Secrets (name → namespace, data) until the namespace is checked.
    let mut config_maps: Secrets = BTreeMap::new();
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();

    for (i, (first_line, source)) in documents(text).into_iter().enumerate() {
        if blank(&source) {
            continue;
        }
        let doc = match serde_saphyr::from_str::<Value>(&source) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                return Err(Error::Yaml {
                    path: path.to_path_buf(),
                    document: i + 1,
                    // The line in the file, not in the document.
                    line: e
                        .location()
                        .filter(|l| l.line() > 0)
                        .map(|l| first_line + l.line() as usize - 1),
                });
            }
        };
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let api = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = match meta_name(&doc) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("document {} ({kind}): {e}", i + 1));
                continue;
            }
        };
        let what = format!("{kind} {name:?}");
        let expect_api = |want: &str| -> Result<(), String> {
            if api == want {
                Ok(())
            } else {
                Err(format!("{what}: apiVersion must be {want}, found {api:?}"))
            }
        };
        let result: Result<(), String> = match kind.as_str() {
            "BrokerConfig" => expect_api(API_VERSION).and_then(|_| {
                if broker.is_some() {
                    return Err("more than one BrokerConfig".into());
                }
                broker = Some(spec(&doc, &what)?);
                Ok(())
            }),
            "RegistryCredential" => expect_api(API_VERSION).and_then(|_| {
                credentials.push(Named { name: name.clone(), spec: spec::<RegistryCredentialSpec>(&doc, &what)? });
                Ok(())
            }),
            "PullGrant" => expect_api(API_VERSION).and_then(|_| {
                grants.push(Named { name: name.clone(), spec: spec::<PullGrantSpec>(&doc, &what)? });
                Ok(())
            }),
            "Secret" => expect_api("v1").and_then(|_| {
                let data = secret_data(&doc).map_err(|e| format!("{what}: {e}"))?;
                let ns = doc.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
                secrets.insert(name.clone(), (ns, data));
                Ok(())
            }),
            "ConfigMap" => expect_api("v1").and_then(|_| {
                let data = config_map_data(&doc).map_err(|e| format!("{what}: {e}"))?;
                let ns = doc.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
                config_maps.insert(name.clone(), (ns, data));
                Ok(())
            }),
            "Namespace" => expect_api("v1").and_then(|_| {
                let labels = doc
                    .get("metadata")
                    .and_then(|m| m.get("labels"))
                    .cloned()
                    .map(serde_json::from_value::<BTreeMap<String, String>>)
                    .transpose()
                    .map_err(|e| format!("{what}: labels: {e}"))?
                    .unwrap_or_default();
                namespaces.insert(name.clone(), labels);
                Ok(())
            }),
            other => Err(format!("document {} has unsupported kind {other:?} (BrokerConfig, RegistryCredential, PullGrant, Secret, ConfigMap, Namespace)", i + 1)),
        };
        if let Err(e) = result {
            problems.push(e);
        }
    }
    let Some(broker) = broker else {
        problems.push("no BrokerConfig document".into());
        return Err(report(path, problems));
    };
    if broker.policy_source == PolicySource::Kubernetes
        && !(credentials.is_empty()
            && grants.is_empty()
            && secrets.is_empty()
            && config_maps.is_empty()
            && namespaces.is_empty())
    {
        problems.push("with policySource: kubernetes, RegistryCredentials, PullGrants, Secrets, ConfigMaps and Namespaces come from the cluster; remove them from the file".into());
    }
    let system_ns = broker
        .system_namespace
        .clone()
        .unwrap_or_else(|| "pullbroker-system".into());
    for (kind, name, ns) in secrets
        .iter()
        .map(|(name, (ns, _))| ("Secret", name, ns))
        .chain(
            config_maps
                .iter()
                .map(|(name, (ns, _))| ("ConfigMap", name, ns)),
        )
    {
        if ns.as_deref().is_some_and(|n| n != system_ns) {
            problems.push(format!(
                "{kind} {name:?}: central secrets and CA bundles live in namespace {system_ns:?}"
            ));
        }
    }
    let config_maps: ConfigMaps = config_maps
        .into_iter()
        .map(|(name, (_, data))| (name, data))
        .collect();
    let mut watched = vec![path.to_path_buf()];
    for (secret, files) in &broker.secret_files {
        let entry = secrets.entry(secret.clone()).or_default();
        for (key, file) in files {
            let file = resolve(base, file);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    entry.1.insert(key.clone(), bytes);
                }
                Err(e) => problems.push(format!(
                    "secretFiles[{secret:?}][{key:?}]: cannot read {}: {e}",
                    file.display()
                )),
            }
            watched.push(file);
        }
    }
    for (ns, labels) in &broker.namespaces {
        namespaces
            .entry(ns.clone())
            .or_default()
            .extend(labels.clone());
    }

    let exec_dir = broker.exec_source_dir.as_ref().map(|d| resolve(base, d));
    let Assembled {
        policy,
        runtimes,
        trust,
        problems: policy_problems,
    } = assemble(
        credentials,
        grants,
        &secrets,
        &config_maps,
        namespaces,
        exec_dir.as_deref(),
        refreshers,
    );
    problems.extend(policy_problems.iter().map(ToString::to_string));

    // Its files are read when the verifier is built: resolved against the
    // config's directory like every other path, and watched (a projected
    // token is rotated in place).
    let token_review = broker
        .service_account_issuer
        .token_review
        .clone()
        .map(|mut r| {
            r.token_file = resolve(base, &r.token_file);
            r.ca_file = r.ca_file.map(|c| resolve(base, &c));
            watched.push(r.token_file.clone());
            watched.extend(r.ca_file.clone());
            r
        });
    let issuer = issuer_settings(&broker, base, &mut watched).map_err(|e| {
        problems.push(e);
    });
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
    let admission = admission_listener(&broker, base, tls.is_some())
        .map_err(|e| problems.push(e))
        .ok()
        .flatten();
    let limits = limits(&broker.limits).map_err(|e| problems.push(e));
    if !problems.is_empty() {
        return Err(report(path, problems));
    }
    // Each of these pushed a problem when it failed, and there are none.
    let listen = listen.expect("no problems");
    Ok(Snapshot {
        policy: policy.into(),
        credentials: runtimes.into(),
        trust: trust.into(),
        exec_source_dir: exec_dir,
        policy_source: broker.policy_source,
        system_namespace: system_ns,
        issuer: IssuerSettings {
            // Only a broker no other machine can reach may trust the
            // development issuer (plainHttpListen is loopback-only anyway).
            dev_keys_allowed: is_loopback(&listen)
                && admission.as_ref().is_none_or(|a| is_loopback(&a.listen)),
            ..issuer.expect("no problems")
        },
        token_review: token_review.clone(),
        offline_verification: broker.service_account_issuer.offline_verification,
        listeners: Listeners {
            listen,
            tls,
            plain_http,
            admission,
        },
        admission_skip_registries: broker.admission.skip_registries.clone(),
        limits: limits.expect("no problems"),
        watched,
        refreshers: refreshers.clone(),
    })
}

fn report(path: &Path, problems: Vec<String>) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        problems,
    }
}

/// A Secret's `data` (base64) and `stringData` (text).
fn secret_data(doc: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = entries(doc, "data", Encoding::Base64)?;
    out.extend(entries(doc, "stringData", Encoding::Text)?);
    Ok(out)
}

/// A ConfigMap's `data` (text) and `binaryData` (base64).
fn config_map_data(doc: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = entries(doc, "data", Encoding::Text)?;
    out.extend(entries(doc, "binaryData", Encoding::Base64)?);
    Ok(out)
}

#[derive(Clone, Copy)]
enum Encoding {
    Base64,
    Text,
}

/// The string map at `field`, decoded.
fn entries(
    doc: &Value,
    field: &str,
    encoding: Encoding,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let Some(data) = doc.get(field).and_then(Value::as_object) else {
        return Ok(out);
    };
    for (k, v) in data {
        let v = v.as_str().ok_or_else(|| match encoding {
            Encoding::Base64 => format!("{field}[{k:?}] must be a base64 string"),
            Encoding::Text => format!("{field}[{k:?}] must be a string"),
        })?;
        let bytes = match encoding {
            Encoding::Text => v.as_bytes().to_vec(),
            Encoding::Base64 => {
                let compact: String = v.split_whitespace().collect();
                STANDARD
                    .decode(compact)
                    .map_err(|_| format!("{field}[{k:?}] is not valid base64"))?
            }
        };
        out.insert(k.clone(), bytes);
    }
    Ok(out)
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

fn issuer_settings(
    broker: &BrokerConfigSpec,
    base: &Path,
    watched: &mut Vec<PathBuf>,
) -> Result<IssuerSettings, String> {
    let s = &broker.service_account_issuer;
    let jwks = match (&s.jwks_file, &s.jwks_url, &s.discovery_url) {
        (Some(f), None, None) => {
            let f = resolve(base, f);
            watched.push(f.clone());
            JwksSource::Static(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("jwksFile {}: {e}", f.display()))?,
            )
        }
        (None, Some(u), None) => JwksSource::Url(u.clone()),
        (None, None, Some(u)) => JwksSource::Discovery(u.clone()),
        _ => {
            return Err(
                "serviceAccountIssuer needs exactly one of jwksFile, jwksUrl, discoveryUrl".into(),
            )
        }
    };
    let leeway = duration_setting(
        "serviceAccountIssuer.leeway",
        s.leeway.as_deref(),
        Duration::from_secs(30),
    )?;
    if leeway > crate::satoken::MAX_LEEWAY {
        return Err("serviceAccountIssuer.leeway must be at most 60s".into());
    }
    let keys_refresh_interval = duration_setting(
        "serviceAccountIssuer.keysRefreshInterval",
        s.keys_refresh_interval.as_deref(),
        crate::satoken::KEYS_REFRESH_EVERY,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&keys_refresh_interval) {
        return Err("serviceAccountIssuer.keysRefreshInterval must be between 1s and 24h".into());
    }
    let mut review_cache = crate::tokenreview::ReviewCacheSettings::default();
    if let Some(r) = &s.token_review {
        let ttl = |v: &Option<String>,
                   field: &str,
                   default: Duration|
         -> Result<Duration, String> {
            let d = duration_setting(
                &format!("serviceAccountIssuer.tokenReview.{field}"),
                v.as_deref(),
                default,
            )?;
            if d > Duration::from_secs(60) {
                return Err(format!("serviceAccountIssuer.tokenReview.{field} must be at most 60s: revocation waits for it"));
            }
            Ok(d)
        };
        review_cache.positive = ttl(&r.cache_ttl, "cacheTtl", review_cache.positive)?;
        review_cache.negative = ttl(
            &r.negative_cache_ttl,
            "negativeCacheTtl",
            review_cache.negative,
        )?;
    }
    watched.extend(
        s.token_file
            .iter()
            .chain(&s.ca_file)
            .map(|p| resolve(base, p)),
    );
    let read =
        |p: &PathBuf| std::fs::read(resolve(base, p)).map_err(|e| format!("{}: {e}", p.display()));
    Ok(IssuerSettings {
        issuer: s.issuer.clone(),
        audience: broker
            .audience
            .clone()
            .unwrap_or_else(|| "pullbroker".into()),
        jwks,
        leeway,
        fetch_token: s
            .token_file
            .as_ref()
            .map(|p| {
                read(p).map(|b| SecretString::from(String::from_utf8_lossy(&b).trim().to_string()))
            })
            .transpose()?,
        ca_pem: s.ca_file.as_ref().map(read).transpose()?,
        min_refresh_interval: Duration::from_secs(10),
        keys_refresh_interval,
        review_cache,
        dev_keys_allowed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        (dir, path)
    }

    const BROKER: &str = "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {name: b}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer: {issuer: https://kubernetes.default.svc, jwksFile: jwks.json}\n";

    #[test]
    fn refusals_are_structured_values() {
        let (_d, path) = write(BROKER);
        let missing = path.with_file_name("absent.yaml");
        match load(&missing) {
            Err(Error::Read { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected a read error, got {:?}", other.err()),
        }
        let (_d, path) = write(&format!("{BROKER}---\nkind: [unclosed\n"));
        match load(&path) {
            Err(Error::Yaml { document, line, .. }) => {
                assert_eq!(document, 2);
                assert!(line.is_some(), "the line is reported");
            }
            other => panic!("expected a YAML error, got {:?}", other.err()),
        }
        let (_d, path) = write(&BROKER.replace("jwksFile: jwks.json", "jwksFile: none.json"));
        match load(&path) {
            Err(Error::Invalid { problems, .. }) => {
                assert!(
                    problems.iter().any(|p| p.contains("none.json")),
                    "{problems:?}"
                )
            }
            other => panic!("expected the problems, got {:?}", other.err()),
        }
    }

    #[test]
    fn admissions_own_listener_is_checked_whole() {
        let with = |admission: &str| {
            BROKER.replace(
                "  policySource",
                &format!("  admission: {admission}\n  policySource"),
            )
        };
        let problems = |admission: &str| match load(&write(&with(admission)).1) {
            Err(Error::Invalid { problems, .. }) => problems.join("; "),
            other => panic!(
                "{admission}: expected problems, got {:?}",
                other.map(|s| s.listeners)
            ),
        };
        assert!(problems("{clientCAFile: ca.crt}").contains("need admission.listen"));
        assert!(problems("{listen: '0.0.0.0:8444'}").contains("over TLS only"));
        assert!(problems("{listen: '127.0.0.1:8444', clientCAFile: ca.crt}").contains("need tls"));
        assert!(problems("{listen: 'port 80'}").contains("not an address"));
        assert!(
            problems("{listen: '127.0.0.1:8444', maxConcurrentRequests: 0}")
                .contains("between 1 and 65536")
        );
        let (_d, path) = write(&with("{listen: '127.0.0.1:8444'}"));
        let a = load(&path).unwrap().listeners.admission.unwrap();
        assert_eq!(
            (a.listen.port(), a.max_concurrent_requests, a.client_ca_file),
            (8444, 256, None)
        );
        assert!(load(&write(BROKER).1)
            .unwrap()
            .listeners
            .admission
            .is_none());
    }

    #[test]
    fn kubernetes_policy_source_takes_no_policy_from_the_file() {
        let (_d, path) = write(BROKER);
        let s = load(&path).unwrap();
        assert_eq!(s.policy_source, PolicySource::Kubernetes);
        assert!(
            s.policy.grants().is_empty(),
            "nothing until the cluster says"
        );
        assert_eq!(s.system_namespace, "pullbroker-system");

        let (_d, path) = write(&format!("{BROKER}---\napiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {{name: g}}\nspec: {{credential: c, subjects: {{namespaces: [a], serviceAccounts: [b]}}, repositories: ['**'], purposes: [pull]}}\n"));
        let err = load(&path).err().unwrap();
        assert!(err.to_string().contains("come from the cluster"), "{err}");

        let (_d, path) = write(&BROKER.replace("kubernetes", "etcd"));
        assert!(load(&path).is_err(), "unknown policySource");
    }
}
