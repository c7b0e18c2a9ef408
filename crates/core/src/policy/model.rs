//! The policy documents: `RegistryCredential` and `PullGrant` (group
//! `pullbroker.dev`, version `v1alpha1`, cluster-scoped). They are plain serde
//! types with JSON schemas so the Kubernetes adapter can turn them into CRDs;
//! the standalone broker reads the same documents from a YAML file.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::glob;

pub const GROUP: &str = "pullbroker.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "pullbroker.dev/v1alpha1";

/// Longest credential lifetime a grant may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(12 * 3600);
/// Lifetime when a grant names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// Which registries a credential covers and where its secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "pullbroker.dev",
        version = "v1alpha1",
        kind = "RegistryCredential",
        shortname = "regcred",
        status = "RegistryCredentialStatus",
        printcolumn = r#"{"name":"Registries","type":"string","jsonPath":".spec.registries"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Next Rotation","type":"date","jsonPath":".status.nextRotation"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryCredentialSpec {
    /// Registry patterns, `host[:port]`; `*` matches one DNS label.
    #[schemars(length(min = 1))]
    pub registries: Vec<String>,
    pub source: CredentialSource,
    /// How the broker reaches these registries (default: HTTPS verified
    /// against the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<RegistryTransport>,
}

/// TLS trust and plain HTTP for a credential's registries. Every path
/// that contacts them honours it: resolve, admission, token realms.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryTransport {
    /// A PEM CA bundle the registries' certificates chain to (an internal
    /// CA), from a Secret or ConfigMap in the system namespace; trusted
    /// beside the system's roots. A change takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Trust only `caBundle`, not the system's roots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca_only: bool,
    /// Speak plain HTTP to these registries: passwords and tokens cross the
    /// network readable. Without it, only loopback registries fall back to
    /// HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
}

/// A key of a Secret or a ConfigMap in the system namespace: exactly one
/// of `secretName` and `configMapName`. A CA is no secret, so the
/// ConfigMaps that cluster-wide trust distributors (trust-manager, OpenShift's
/// injected bundles) keep current serve as well as a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaBundleRef {
    /// Secret name in the broker's system namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// ConfigMap name in the broker's system namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// Key holding the PEM bundle (default `ca.crt`).
    #[serde(default = "default_ca_key")]
    pub key: String,
}

/// Where a CA bundle is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundleSource<'a> {
    Secret(&'a str),
    ConfigMap(&'a str),
}

impl CaBundleRef {
    /// The one object it names; `None` when it names none or both
    /// (refused by [`RegistryCredentialSpec::validate`]).
    pub fn source(&self) -> Option<CaBundleSource<'_>> {
        match (&self.secret_name, &self.config_map_name) {
            (Some(s), None) if !s.is_empty() => Some(CaBundleSource::Secret(s)),
            (None, Some(c)) if !c.is_empty() => Some(CaBundleSource::ConfigMap(c)),
            _ => None,
        }
    }
}

impl std::fmt::Display for CaBundleSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaBundleSource::Secret(n) => write!(f, "Secret {n:?}"),
            CaBundleSource::ConfigMap(n) => write!(f, "ConfigMap {n:?}"),
        }
    }
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Exactly one source must be set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSource {
    /// A `kubernetes.io/dockerconfigjson` Secret in the system namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// A key the registry trusts: the broker mints repository-scoped registry tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<TokenIssuer>,
    /// Short-lived upstream credentials (ECR-style) from an executable,
    /// refreshed from their real expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecSource>,
    /// Amazon ECR tokens obtained with the broker's own AWS identity (IRSA,
    /// EKS Pod Identity, environment credentials): no static keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr: Option<EcrSource>,
}

/// Amazon ECR `GetAuthorizationToken` with the identity the broker and
/// controller run as, optionally assuming `roleArn` first. The token is
/// refreshed from its real `expiresAt` and opens every registry and
/// repository the identity can read in the region (ECR's deprecated
/// `registryIds` never narrowed that, so there is no such field): a grant
/// narrows who gets it, never what it opens upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EcrSource {
    /// AWS region (default: the region in the registries' host names,
    /// `ACCOUNT.dkr.ecr.REGION.amazonaws.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A role to assume with the broker's identity for this credential
    /// (`arn:aws:iam::ACCOUNT:role/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

impl EcrSource {
    /// The region the token is asked in: `region`, else the one every
    /// registry host names.
    pub fn region_for(&self, registries: &[String]) -> Result<String, String> {
        if let Some(r) = &self.region {
            return Ok(r.clone());
        }
        let mut found: Option<&str> = None;
        for host in registries {
            let host = host.split(':').next().unwrap_or_default();
            let region = ecr_host_region(host).ok_or_else(|| {
                format!("ecr.region is required: registry {host:?} is not ACCOUNT.dkr.ecr.REGION.amazonaws.com")
            })?;
            if found.is_some_and(|f| f != region) {
                return Err(format!(
                    "ecr.region is required: the registries name two regions ({} and {region})",
                    found.unwrap_or_default()
                ));
            }
            found = Some(region);
        }
        found
            .map(str::to_string)
            .ok_or_else(|| "ecr.region is required".to_string())
    }
}

/// `us-east-1` of `123456789012.dkr.ecr.us-east-1.amazonaws.com` (also
/// `.amazonaws.com.cn`, `dkr-ecr` FIPS names and a `*` account label).
fn ecr_host_region(host: &str) -> Option<&str> {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (_, after) = rest
        .split_once(".dkr.ecr.")
        .or_else(|| rest.split_once(".dkr.ecr-fips."))?;
    valid_region(after).then_some(after)
}

fn valid_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
fn valid_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty() && !n.ends_with('/'))
}

/// An executable speaking the kubelet credential-provider exec protocol
/// (`CredentialProviderRequest` on stdin, `CredentialProviderResponse` on
/// stdout), so existing provider plugins (ECR, ACR, GCR, …) serve as sources.
/// Only a file name: it is looked up in the directory the operator gives
/// the broker and controller (`execSourceDir` / `--exec-source-dir`), never
/// a path a document could point anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecSource {
    /// Executable name in the exec source directory.
    #[schemars(length(min = 1))]
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Lifetime when the response gives no `cacheDuration` (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_lifetime: Option<String>,
    /// How long the executable may run (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name in the broker's system namespace.
    pub name: String,
}

/// The registry trusts tokens signed with this key (`auth.token` in distribution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIssuer {
    /// `kubernetes.io/tls` Secret: `tls.key` (EC P-256 PKCS#8) signs, `tls.crt` is published.
    pub signing_key_secret_ref: SecretRef,
    /// The previous key during a rotation: published and accepted, never used to sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_key_secret_ref: Option<SecretRef>,
    /// The registry's `auth.token.service` (the JWT `aud`).
    pub service: String,
    /// The registry's `auth.token.issuer` (the JWT `iss`).
    pub issuer: String,
    /// Lifetime of minted registry tokens (default 5m, capped by the grant's ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<String>,
}

/// Who may use which credential, for which repositories and purposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "pullbroker.dev",
        version = "v1alpha1",
        kind = "PullGrant",
        shortname = "pgrant",
        status = "PullGrantStatus",
        printcolumn = r#"{"name":"Credential","type":"string","jsonPath":".spec.credential"}"#,
        printcolumn = r#"{"name":"Purposes","type":"string","jsonPath":".spec.purposes"}"#,
        printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.selectedNamespaces"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullGrantSpec {
    /// Name of a RegistryCredential.
    #[schemars(length(min = 1))]
    pub credential: String,
    pub subjects: Subjects,
    /// Repository globs (`apps/team-a/**`); `*` stays within one path component.
    #[schemars(length(min = 1))]
    pub repositories: Vec<String>,
    #[schemars(length(min = 1))]
    pub purposes: Vec<Purpose>,
    /// Longest lifetime of anything issued under this grant (e.g. `15m`; max 12h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Controllers (`namespace/serviceaccount` globs) allowed to resolve digests
    /// on behalf of the subject namespaces (purpose `resolve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// Sync may copy the credential's upstream secret into namespaces
    /// (flagged): a static password, or an exec source's token, which opens
    /// everything its upstream identity can read and stays valid upstream
    /// until its own expiry even after the synced Secret is deleted. A token
    /// issuer's credentials are minted per namespace and need no opt-in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_upstream_copy: bool,
    /// Deprecated: use `allowUpstreamCopy` (still honoured, for every kind of
    /// upstream copy; `pullbroker audit` flags it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_static_copy: bool,
    /// How admission pinning treats images this grant covers (purpose `resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionSettings>,
}

/// Admission pinning settings of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdmissionSettings {
    /// What to do when an image cannot be resolved: `Fail` (default) denies
    /// the object naming the image and the reason; `Ignore` admits it
    /// unchanged with a warning.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

impl PullGrantSpec {
    /// The admission failure policy (default `Fail`: fail closed).
    pub fn failure_policy(&self) -> FailurePolicy {
        self.admission
            .as_ref()
            .map(|a| a.failure_policy)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subjects {
    /// Namespace name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces whose (operator-controlled) labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Service account name globs within the selected namespaces.
    #[schemars(length(min = 1))]
    pub service_accounts: Vec<String>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes semantics: every label and every expression must hold; an
    /// empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    LabelOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    LabelOperator::Exists => value.is_some(),
                    LabelOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// What a credential may be used for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Digest resolution (controllers, admission).
    Resolve,
    /// Image pulls (kubelet plugin, registry token server).
    Pull,
    /// Short-lived pull secrets synced into namespaces.
    Sync,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Resolve => "resolve",
            Purpose::Pull => "pull",
            Purpose::Sync => "sync",
        })
    }
}

impl std::str::FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "resolve" => Ok(Purpose::Resolve),
            "pull" => Ok(Purpose::Pull),
            "sync" => Ok(Purpose::Sync),
            other => Err(format!("unknown purpose {other:?} (resolve, pull or sync)")),
        }
    }
}

/// A status condition, shaped like Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of a RegistryCredential, written by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 times of the last and next refresh of an expiring upstream credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
}

/// Status of a PullGrant, written by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullGrantStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespaces the grant currently selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_namespaces: Option<i64>,
    /// Set when `allowUpstreamCopy` makes sync copy a static upstream password.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub static_copy: bool,
    /// Set when `allowUpstreamCopy` makes sync copy an upstream token (an
    /// exec source's), valid upstream until its own expiry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream_copy: bool,
}

/// The longest duration any setting takes (ten years); longer is refused.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a duration setting was refused; each names the text it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?} (use e.g. 90s, 15m, 1h30m)")]
    Syntax(String),
    #[error("invalid duration {0:?} (a unit is required: s, m or h)")]
    NoUnit(String),
    #[error("duration {0:?} is too large (at most ten years)")]
    TooLarge(String),
}

/// Parses `15m`, `1h30m`, `90s` (at most [`MAX_DURATION`]).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut saw_unit = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0
            }
            ('h', _) => 3600,
            ('m', _) => 60,
            ('s', _) => 1,
            _ => return Err(DurationError::Syntax(s.to_string())),
        };
        // Checked, not saturating: `u64::MAX` seconds later wraps to `-1` as an
        // i64 lifetime, so an absurd value is refused here with its name.
        let too_large = || DurationError::TooLarge(s.to_string());
        let n: u64 = num.parse().map_err(|_| too_large())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= MAX_DURATION.as_secs())
            .ok_or_else(too_large)?;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(DurationError::NoUnit(s.to_string()));
    }
    Ok(Duration::from_secs(total))
}

/// The longest an exec source may run before it is killed.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The longest `exec.defaultLifetime`: a day, twice a cloud token's 12 h.
pub const MAX_SOURCE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An optional duration setting between 1 s and `max`.
fn bounded(field: &str, value: &Option<String>, max: Duration) -> Result<(), String> {
    let Some(v) = value else { return Ok(()) };
    let d = parse_duration(v).map_err(|e| format!("{field}: {e}"))?;
    if d < Duration::from_secs(1) || d > max {
        return Err(format!(
            "{field} {v:?} must be between 1s and {}",
            human(max)
        ));
    }
    Ok(())
}

/// `12h`, `10m`, `90s`: how the bounds read in errors.
fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What sync copies of a credential whose upstream secret itself would
/// reach tenant namespaces ([`RegistryCredentialSpec::upstream_copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCopy {
    /// A static password (`secretRef`): valid until someone rotates it.
    Password,
    /// A refreshing source's token (`exec`): account- or registry-wide,
    /// valid upstream until its own expiry whatever we delete.
    Token,
}

impl UpstreamCopy {
    pub fn describe(self) -> &'static str {
        match self {
            UpstreamCopy::Password => "a static upstream password",
            UpstreamCopy::Token => "an upstream token that opens everything its identity can read, valid upstream until it expires",
        }
    }
}

impl RegistryCredentialSpec {
    /// What sync would copy verbatim into namespaces; `None` for a token
    /// issuer, whose synced credentials are minted per namespace.
    pub fn upstream_copy(&self) -> Option<UpstreamCopy> {
        if self.source.secret_ref.is_some() {
            Some(UpstreamCopy::Password)
        } else if self.source.exec.is_some() || self.source.ecr.is_some() {
            Some(UpstreamCopy::Token)
        } else {
            None
        }
    }

    /// The central Secrets it reads: a static copy's, or a token issuer's
    /// signing keys (current, then previous), and its CA bundle's.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let s = &self.source;
        s.secret_ref
            .iter()
            .map(|r| r.name.as_str())
            .chain(
                self.transport
                    .iter()
                    .flat_map(|t| t.ca_bundle.iter().filter_map(|b| b.secret_name.as_deref())),
            )
            .chain(s.token_issuer.iter().flat_map(|t| {
                std::iter::once(t.signing_key_secret_ref.name.as_str()).chain(
                    t.previous_signing_key_secret_ref
                        .iter()
                        .map(|r| r.name.as_str()),
                )
            }))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.registries.is_empty() {
            return Err("registries must list at least one registry".into());
        }
        for r in &self.registries {
            glob::validate("registry", r)?;
            if r.contains('/') {
                return Err(format!("registry {r:?} must be host[:port] without a path"));
            }
        }
        let sources = [
            self.source.secret_ref.is_some(),
            self.source.token_issuer.is_some(),
            self.source.exec.is_some(),
            self.source.ecr.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(
                "source must set exactly one of secretRef, tokenIssuer, exec and ecr".into(),
            );
        }
        if let Some(e) = &self.source.ecr {
            if let Some(r) = &e.region {
                if !valid_region(r) {
                    return Err(format!("ecr.region {r:?} is not an AWS region (us-east-1)"));
                }
            }
            e.region_for(&self.registries)?;
            if let Some(arn) = &e.role_arn {
                if !valid_role_arn(arn) {
                    return Err(format!(
                        "ecr.roleArn {arn:?} is not a role ARN (arn:aws:iam::123456789012:role/NAME)"
                    ));
                }
            }
        }
        if let Some(e) = &self.source.exec {
            let c = &e.command;
            if c.is_empty() || c.contains('/') || c == "." || c == ".." || c.contains('\0') {
                return Err(format!(
                    "exec.command {c:?} must be a file name in the exec source directory, not a path"
                ));
            }
            bounded("exec.timeout", &e.timeout, MAX_EXEC_TIMEOUT)?;
            bounded(
                "exec.defaultLifetime",
                &e.default_lifetime,
                MAX_SOURCE_LIFETIME,
            )?;
        }
        if let Some(t) = &self.source.token_issuer {
            if t.service.is_empty() || t.issuer.is_empty() {
                return Err("tokenIssuer.service and tokenIssuer.issuer are required".into());
            }
            bounded("tokenIssuer.tokenTtl", &t.token_ttl, MAX_TTL)?;
        }
        if let Some(t) = &self.transport {
            if t.ca_only && t.ca_bundle.is_none() {
                return Err(
                    "transport.caOnly needs transport.caBundle (whom to trust instead)".into(),
                );
            }
            if t.plain_http && t.ca_bundle.is_some() {
                return Err("transport.plainHttp and transport.caBundle exclude each other: plain HTTP has no certificate to verify".into());
            }
            if let Some(b) = &t.ca_bundle {
                if b.source().is_none() || b.key.is_empty() {
                    return Err(
                        "transport.caBundle needs exactly one of secretName and configMapName, and a key"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

impl PullGrantSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.credential.is_empty() {
            return Err("credential is required".into());
        }
        if self.subjects.namespaces.is_empty() && self.subjects.namespace_selector.is_none() {
            return Err("subjects must name namespaces or a namespaceSelector".into());
        }
        if self.subjects.service_accounts.is_empty() {
            return Err("subjects.serviceAccounts must not be empty (use [\"*\"] for all)".into());
        }
        for n in &self.subjects.namespaces {
            glob::validate("namespace", n)?;
        }
        for n in &self.subjects.service_accounts {
            glob::validate("service account", n)?;
        }
        if self.repositories.is_empty() {
            return Err("repositories must not be empty (use [\"**\"] for all)".into());
        }
        for r in &self.repositories {
            glob::validate("repository", r)?;
        }
        if self.purposes.is_empty() {
            return Err("purposes must not be empty".into());
        }
        for r in &self.resolvers {
            let ok = r
                .split_once('/')
                .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
            if !ok {
                return Err(format!("resolver {r:?} must be namespace/serviceaccount"));
            }
        }
        bounded("ttl", &self.ttl, MAX_TTL)?;
        Ok(())
    }

    /// Whether sync may copy an upstream secret (`allowUpstreamCopy`, or
    /// the deprecated `allowStaticCopy`).
    pub fn allows_upstream_copy(&self) -> bool {
        self.allow_upstream_copy || self.allow_static_copy
    }

    /// The grant's lifetime cap.
    pub fn ttl(&self) -> Duration {
        self.ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::ZERO);
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn label_selectors() {
        let labels = BTreeMap::from([
            ("tenant".to_string(), "a".to_string()),
            ("tier".to_string(), "prod".to_string()),
        ]);
        let sel = |yaml: &str| serde_saphyr::from_str::<LabelSelector>(yaml).unwrap();
        assert!(sel("matchLabels: {tenant: a}").matches(&labels));
        assert!(!sel("matchLabels: {tenant: b}").matches(&labels));
        assert!(
            sel("matchExpressions: [{key: tier, operator: In, values: [prod, stage]}]")
                .matches(&labels)
        );
        assert!(
            !sel("matchExpressions: [{key: tier, operator: NotIn, values: [prod]}]")
                .matches(&labels)
        );
        assert!(sel("matchExpressions: [{key: x, operator: DoesNotExist}]").matches(&labels));
        assert!(!sel("matchExpressions: [{key: x, operator: Exists}]").matches(&labels));
        assert!(sel("{}").matches(&labels));
    }

    #[test]
    fn validation_errors() {
        let grant = |yaml: &str| {
            serde_saphyr::from_str::<PullGrantSpec>(yaml)
                .map_err(|e| e.to_string())
                .and_then(|g| g.validate())
        };
        let base = "credential: c\nsubjects: {namespaces: [a], serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [pull]\n";
        assert!(grant(base).is_ok());
        assert!(grant(&format!("{base}ttl: 13h\n"))
            .unwrap_err()
            .contains("12h"));
        assert!(grant(&format!("{base}resolvers: [controller]\n"))
            .unwrap_err()
            .contains("namespace/serviceaccount"));
        assert!(
            grant(&format!("{base}purposes: [push]\n")).is_err(),
            "unknown purposes are rejected"
        );
        assert!(
            grant(&format!("{base}extra: 1\n")).is_err(),
            "unknown fields are rejected"
        );
        assert!(grant("credential: c\nsubjects: {serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [pull]\n").unwrap_err().contains("namespaces"));
        let cred = |yaml: &str| {
            serde_saphyr::from_str::<RegistryCredentialSpec>(yaml)
                .unwrap()
                .validate()
        };
        assert!(cred("registries: [r.io]\nsource: {}\n")
            .unwrap_err()
            .contains("exactly one"));
        assert!(
            cred("registries: [r.io/x]\nsource: {secretRef: {name: s}}\n")
                .unwrap_err()
                .contains("without a path")
        );
        assert!(cred("registries: [r.io]\nsource: {secretRef: {name: s}}\n").is_ok());
    }

    #[test]
    fn absurd_durations_are_refused_not_saturated() {
        // u64::MAX seconds used to saturate and become a tokenTtl of -1 s.
        for d in [
            "18446744073709551615s",
            "5124095576030431h",
            "99999999999999999999h",
        ] {
            assert_eq!(
                parse_duration(d),
                Err(DurationError::TooLarge(d.to_string())),
                "{d}"
            );
        }
        assert_eq!(parse_duration("87600h").unwrap(), MAX_DURATION);
        assert!(matches!(
            parse_duration("87600h1s"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("15"),
            Err(DurationError::NoUnit(_))
        ));
        assert!(matches!(
            parse_duration("15d"),
            Err(DurationError::Syntax(_))
        ));

        let issuer = |ttl: &str| {
            serde_saphyr::from_str::<RegistryCredentialSpec>(&format!(
                "registries: [r.io]\nsource: {{tokenIssuer: {{service: r.io, issuer: i, tokenTtl: {ttl}, signingKeySecretRef: {{name: k}}}}}}\n"
            ))
            .unwrap()
            .validate()
        };
        assert!(issuer("5m").is_ok());
        assert!(issuer("5124095576030431h")
            .unwrap_err()
            .contains("tokenTtl"));
        assert!(issuer("13h").unwrap_err().contains("between 1s and 12h"));
        assert!(issuer("0s").is_err());
        let exec = |field: &str, v: &str| {
            serde_saphyr::from_str::<RegistryCredentialSpec>(&format!(
                "registries: [r.io]\nsource: {{exec: {{command: c, {field}: {v}}}}}\n"
            ))
            .unwrap()
            .validate()
        };
        assert!(exec("defaultLifetime", "12h").is_ok());
        assert!(exec("defaultLifetime", "25h")
            .unwrap_err()
            .contains("exec.defaultLifetime"));
        assert!(exec("timeout", "2h")
            .unwrap_err()
            .contains("between 1s and 10m"));
    }

    #[test]
    fn an_ecr_source_knows_its_region_and_role() {
        let ecr = |yaml: &str| {
            serde_saphyr::from_str::<RegistryCredentialSpec>(yaml)
                .unwrap()
                .validate()
        };
        assert!(ecr(
            "registries: [123456789012.dkr.ecr.eu-west-1.amazonaws.com]\nsource: {ecr: {}}"
        )
        .is_ok());
        assert!(ecr("registries: ['*.dkr.ecr.cn-north-1.amazonaws.com.cn']\nsource: {ecr: {roleArn: 'arn:aws-cn:iam::123456789012:role/pull'}}").is_ok());
        assert!(ecr("registries: [registry.corp]\nsource: {ecr: {region: us-east-1}}").is_ok());
        let e = ecr("registries: [registry.corp]\nsource: {ecr: {}}").unwrap_err();
        assert!(e.contains("ecr.region is required"), "{e}");
        let e = ecr("registries: [1.dkr.ecr.us-east-1.amazonaws.com, 1.dkr.ecr.us-west-2.amazonaws.com]\nsource: {ecr: {}}").unwrap_err();
        assert!(e.contains("two regions"), "{e}");
        for bad in [
            "arn:aws:iam::123:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:user/x",
            "role/x",
        ] {
            let e = ecr(&format!(
                "registries: [r]\nsource: {{ecr: {{region: us-east-1, roleArn: '{bad}'}}}}"
            ))
            .unwrap_err();
            assert!(e.contains("ecr.roleArn"), "{bad}: {e}");
        }
        let e = ecr("registries: [r]\nsource: {ecr: {region: 'US East'}}").unwrap_err();
        assert!(e.contains("ecr.region"), "{e}");
        assert!(serde_saphyr::from_str::<RegistryCredentialSpec>(
            "registries: [r]\nsource: {ecr: {region: us-east-1, registryIds: ['123456789012']}}"
        )
        .is_err());
        let e = ecr("registries: [r]\nsource: {ecr: {region: us-east-1}, exec: {command: c}}")
            .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let spec: RegistryCredentialSpec =
            serde_saphyr::from_str("registries: [r]\nsource: {ecr: {region: us-east-1}}").unwrap();
        assert_eq!(spec.upstream_copy(), Some(UpstreamCopy::Token));
    }

    proptest::proptest! {
        #[test]
        fn parse_duration_is_total_and_bounded(s in "[0-9]{0,25}[hms]?([0-9]{0,25}[hms])?(ms)?") {
            if let Ok(d) = parse_duration(&s) {
                proptest::prop_assert!(d <= MAX_DURATION);
            }
        }
    }
}
