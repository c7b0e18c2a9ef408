//! `pullbroker audit`'s findings, pure: the cluster's pull secrets, service
//! accounts and pods, and pullbroker's own grants and managed secrets in;
//! findings (severity, objects, what is wrong, the fix) and an inventory of
//! pull secrets out. Never a secret value: credentials are compared by a
//! keyed hash that is never printed, and messages name entries and users.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dockerconfig::DockerConfig;
use crate::jwt::unverified_expiry;
use crate::policy::model::UpstreamCopy;
use crate::policy::{Policy, Purpose, Request, Subject, Target};
use crate::sync::{GRANT_LABEL, MANAGED_BY};
use crate::Reference;

pub const TYPE_DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the kind of finding (`secret.malformed`, …).
    pub code: &'static str,
    /// `Kind namespace/name` of each object involved.
    pub objects: Vec<String>,
    pub message: String,
    pub fix: String,
}

/// A Secret as audit sees it: metadata always, the docker config only for
/// the two pull-secret types.
#[derive(Debug, Clone, Default)]
pub struct SecretInfo {
    pub namespace: String,
    pub name: String,
    pub type_: String,
    /// Seconds since the epoch.
    pub created: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// A managed secret's `pullbroker.dev/issued-at` and `expires-at`
    /// annotations, as seconds since the epoch (the adapter parses them).
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// `.dockerconfigjson` or `.dockercfg` bytes (absent: the key is missing).
    pub config: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct AccountInfo {
    pub namespace: String,
    pub name: String,
    pub pull_secrets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub pull_secrets: Vec<String>,
    pub images: Vec<String>,
    /// Containers kubelet reports waiting on a pull (`ErrImagePull`,
    /// `ImagePullBackOff`, …) right now.
    pub pull_waits: Vec<PullWait>,
}

/// A container waiting on an image pull, as kubelet reports it in the pod's
/// status (`state.waiting`).
#[derive(Debug, Clone, Default)]
pub struct PullWait {
    pub container: String,
    pub image: String,
    pub reason: String,
    pub message: String,
}

/// The `state.waiting.reason`s kubelet gives a container whose image it
/// cannot pull.
pub const PULL_WAIT_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// A RegistryCredential's `Ready` condition, as its status reports it.
#[derive(Debug, Clone)]
pub struct CredentialState {
    pub name: String,
    pub ready: Option<bool>,
    pub reason: String,
}

/// One pull secret in the inventory (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullSecretSummary {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub entries: Vec<EntrySummary>,
    pub age_seconds: Option<i64>,
    pub managed_by_pullbroker: bool,
    /// Why the docker config cannot be used, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntrySummary {
    pub registry: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Expiry of a JWT credential (seconds since the epoch), read unverified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

pub struct Inputs<'a> {
    pub secrets: &'a [SecretInfo],
    pub accounts: &'a [AccountInfo],
    pub pods: &'a [PodInfo],
    /// pullbroker's policy from the cluster (None: CRDs not installed).
    pub policy: Option<&'a Policy>,
    pub credential_states: &'a [CredentialState],
    pub now: i64,
    /// A JWT credential expiring sooner than this (seconds) is a warning.
    pub warn_within: i64,
    /// Key of the hash that groups identical credentials (random per run).
    pub hash_key: [u8; 32],
    /// Each grant's use as a broker counted it (`audit --broker-url`).
    pub grant_use: Option<&'a GrantUse>,
}

/// What a broker's `/metrics` says of each grant's use since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantUse {
    /// Seconds the broker has been counting.
    pub window_seconds: i64,
    /// (grant, purpose) pairs that allowed at least one request.
    pub used: BTreeSet<(String, String)>,
}

impl GrantUse {
    /// Reads `pullbroker_grant_allows_total{grant=…,purpose=…} N` and
    /// `pullbroker_started_timestamp_seconds T` from a broker's `/metrics`
    /// (Prometheus or OpenMetrics text). Grant and purpose names are DNS
    /// names and words: no escapes to undo.
    pub fn parse(metrics: &str, now: i64) -> Result<GrantUse, String> {
        let mut started = None;
        let mut used = BTreeSet::new();
        for line in metrics.lines() {
            if let Some(v) = line.strip_prefix("pullbroker_started_timestamp_seconds ") {
                started = v.trim().parse::<f64>().ok().map(|t| t as i64);
            } else if let Some(rest) = line.strip_prefix("pullbroker_grant_allows_total{") {
                let (labels, value) = rest
                    .split_once("} ")
                    .ok_or_else(|| format!("unreadable line {line:?}"))?;
                let label = |key: &str| {
                    labels.split(',').find_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        (k == key).then(|| v.trim_matches('"').to_string())
                    })
                };
                let count: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("unreadable count in {line:?}"))?;
                if let (Some(g), Some(p)) = (label("grant"), label("purpose")) {
                    if count > 0.0 {
                        used.insert((g, p));
                    }
                }
            }
        }
        let started = started.ok_or(
            "no pullbroker_started_timestamp_seconds: is that a pullbroker broker's /metrics?",
        )?;
        Ok(GrantUse {
            window_seconds: now.saturating_sub(started).max(0),
            used,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub findings: Vec<Finding>,
    pub pull_secrets: Vec<PullSecretSummary>,
}

/// Where one credential was found: its registry key, user and secrets.
struct Copies {
    registry: String,
    user: Option<String>,
    holders: BTreeSet<(String, String)>,
}

fn obj(kind: &str, ns: &str, name: &str) -> String {
    if ns.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

/// The data key holding a pull secret's docker config, by the Secret's type.
pub fn config_key(type_: &str) -> &'static str {
    if type_ == TYPE_DOCKERCFG {
        ".dockercfg"
    } else {
        ".dockerconfigjson"
    }
}

/// A pull secret's docker config from its type and the bytes under
/// [`config_key`] (`None`: the key is missing), or why kubelet cannot use it.
pub fn pull_secret_config(type_: &str, bytes: Option<&[u8]>) -> Result<DockerConfig, String> {
    let bytes = bytes.ok_or_else(|| format!("has no {} key", config_key(type_)))?;
    let parsed = if type_ == TYPE_DOCKERCFG {
        DockerConfig::parse_legacy(bytes)
    } else {
        DockerConfig::parse(bytes)
    };
    parsed.map_err(|e| e.to_string())
}

fn parse(s: &SecretInfo) -> Result<DockerConfig, String> {
    pull_secret_config(&s.type_, s.config.as_deref())
}

fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Everything audit finds, sorted by severity (worst first), then code.
pub fn audit(inp: &Inputs<'_>) -> Report {
    let mut findings = Vec::new();
    let mut summaries = Vec::new();
    let pull_types = [TYPE_DOCKERCONFIGJSON, TYPE_DOCKERCFG];
    let existing: BTreeSet<(&str, &str)> = inp
        .secrets
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    // Parsed pull secrets by (namespace, name), for the pods' candidates.
    let mut configs: BTreeMap<(&str, &str), DockerConfig> = BTreeMap::new();
    // Identical credentials, by keyed hash.
    let mut copies: BTreeMap<[u8; 32], Copies> = BTreeMap::new();

    for s in inp
        .secrets
        .iter()
        .filter(|s| pull_types.contains(&s.type_.as_str()))
    {
        let here = obj("Secret", &s.namespace, &s.name);
        let managed = s
            .labels
            .get(MANAGED_BY.0)
            .is_some_and(|v| v == MANAGED_BY.1);
        let mut summary = PullSecretSummary {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            type_: s.type_.clone(),
            entries: Vec::new(),
            age_seconds: s.created.map(|c| inp.now - c),
            managed_by_pullbroker: managed,
            invalid: None,
        };
        match parse(s) {
            Err(e) if e.contains("has no credentials") => {
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: "secret.empty-entry",
                    objects: vec![here.clone()],
                    message: format!("{e}: an entry with empty username, password and auth (what a merge of two configs leaves behind) makes the whole secret unusable"),
                    fix: "remove the empty entry, or recreate the secret (pullbroker secret create)".into(),
                });
                summary.invalid = Some(e);
            }
            Err(e) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: "secret.malformed",
                    objects: vec![here.clone()],
                    message: format!("not a usable pull secret: {e}"),
                    fix: "fix or recreate it (pullbroker secret validate names the field)".into(),
                });
                summary.invalid = Some(e);
            }
            Ok(config) => {
                for e in config.entries() {
                    let credential = e.credential();
                    let expires_at = credential.secret().and_then(unverified_expiry);
                    match expires_at {
                        Some(exp) if exp <= inp.now => findings.push(Finding {
                            severity: Severity::Error,
                            code: "secret.expired",
                            objects: vec![here.clone()],
                            message: format!("the credential for {} expired {} ago", e.key(), duration(inp.now - exp)),
                            fix: if managed { "the controller reissues it: check that it leads (pullbroker_controller_leader)".into() } else { "rotate it — or let pullbroker mint short-lived credentials instead (a RegistryCredential with tokenIssuer or exec)".into() },
                        }),
                        Some(exp) if exp - inp.now <= inp.warn_within => findings.push(Finding {
                            severity: Severity::Warning,
                            code: "secret.expiring",
                            objects: vec![here.clone()],
                            message: format!("the credential for {} expires in {}", e.key(), duration(exp - inp.now)),
                            fix: "rotate it before then".into(),
                        }),
                        _ => {}
                    }
                    if !managed {
                        let mut h = Sha256::new();
                        h.update(inp.hash_key);
                        h.update(e.key().as_bytes());
                        h.update([0]);
                        h.update(credential.id().as_bytes());
                        let entry = copies.entry(h.finalize().into()).or_insert_with(|| Copies {
                            registry: e.key().to_string(),
                            user: credential.username().map(String::from),
                            holders: BTreeSet::new(),
                        });
                        entry.holders.insert((s.namespace.clone(), s.name.clone()));
                    }
                    summary.entries.push(EntrySummary {
                        registry: e.key().to_string(),
                        kind: credential.kind(),
                        username: credential.username().map(String::from),
                        expires_at,
                    });
                }
                configs.insert((s.namespace.as_str(), s.name.as_str()), config);
            }
        }
        summaries.push(summary);
    }

    for Copies {
        registry,
        user,
        holders,
    } in copies.values()
    {
        let namespaces: BTreeSet<&str> = holders.iter().map(|(n, _)| n.as_str()).collect();
        if namespaces.len() < 2 {
            continue;
        }
        let list: Vec<&str> = namespaces.iter().copied().collect();
        findings.push(Finding {
            severity: Severity::Warning,
            code: "secret.copied",
            objects: holders.iter().map(|(n, s)| obj("Secret", n, s)).collect(),
            message: format!(
                "the same credential for {registry}{} is copied into {} namespaces ({}): every tenant there can read it, and rotating it means finding every copy",
                user.as_deref().map(|u| format!(" (user {u})")).unwrap_or_default(),
                namespaces.len(),
                list.join(", ")
            ),
            fix: format!(
                "keep it once in pullbroker-system as a RegistryCredential for {registry} and grant the namespaces instead: PullGrant {{credential: …, subjects: {{namespaces: [{}]}}, repositories: [\"**\"], purposes: [pull]}} — then delete the copies",
                list.join(", ")
            ),
        });
    }

    // References to secrets that do not exist.
    for a in inp.accounts {
        for s in &a.pull_secrets {
            if !existing.contains(&(a.namespace.as_str(), s.as_str())) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: "serviceaccount.missing-secret",
                    objects: vec![obj("ServiceAccount", &a.namespace, &a.name)],
                    message: format!(
                        "imagePullSecrets names {s:?}, which does not exist in {}",
                        a.namespace
                    ),
                    fix: format!("create Secret {}/{s} or remove the entry", a.namespace),
                });
            }
        }
    }
    let accounts: BTreeMap<(&str, &str), &AccountInfo> = inp
        .accounts
        .iter()
        .map(|a| ((a.namespace.as_str(), a.name.as_str()), a))
        .collect();
    // Registries some credential is known for: an image elsewhere is public
    // as far as audit can tell, and its pod is not flagged.
    // One pattern per distinct key (thousands of secrets share a handful),
    // and one answer per distinct image (pods share images).
    let keys: BTreeMap<&str, &crate::dockerconfig::AuthPattern> = configs
        .values()
        .flat_map(|c| c.entries().iter().map(|e| (e.key(), e.pattern())))
        .collect();
    let mut known_images: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    let patterns: Vec<&str> = inp
        .policy
        .iter()
        .flat_map(|p| p.credentials().values())
        .flat_map(|c| c.registries.iter().map(String::as_str))
        .collect();
    for pod in inp.pods {
        let here = obj("Pod", &pod.namespace, &pod.name);
        // Failing now, whatever the registry: kubelet's own report,
        // classified as `pullbroker diagnose` does.
        for w in &pod.pull_waits {
            let failure = crate::diagnose::classify(&format!("{} {}", w.reason, w.message));
            findings.push(Finding {
                severity: Severity::Error,
                code: "pod.pull-failing",
                objects: vec![here.clone()],
                message: format!(
                    "container {} waits with {} pulling {}: {} — {}",
                    w.container,
                    w.reason,
                    w.image,
                    failure.name(),
                    failure.hint()
                ),
                fix: format!(
                    "pullbroker diagnose pod {}/{} (kubelet said: {})",
                    pod.namespace,
                    pod.name,
                    if w.message.is_empty() {
                        &w.reason
                    } else {
                        &w.message
                    }
                ),
            });
        }
        for s in &pod.pull_secrets {
            if !existing.contains(&(pod.namespace.as_str(), s.as_str())) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: "pod.missing-secret",
                    objects: vec![here.clone()],
                    message: format!("imagePullSecrets names {s:?}, which does not exist in {}", pod.namespace),
                    fix: format!("create Secret {}/{s} (pods cannot change imagePullSecrets: recreate the pod afterwards)", pod.namespace),
                });
            }
        }
        let sa = accounts.get(&(pod.namespace.as_str(), pod.service_account.as_str()));
        for image in &pod.images {
            let Ok(r) = Reference::parse(image) else {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: "pod.invalid-image",
                    objects: vec![here.clone()],
                    message: format!("image {image:?} is not a valid reference"),
                    fix: "fix the image name in its workload".into(),
                });
                continue;
            };
            let known = *known_images.entry(image.as_str()).or_insert_with(|| {
                keys.values().any(|k| k.matches(&r))
                    || patterns
                        .iter()
                        .any(|p| crate::policy::glob::registry_matches(p, r.registry()))
            });
            if !known {
                continue;
            }
            // Kubelet's order: the pod's own secrets (those copied from its
            // service account at admission included), then the plugin
            // through pullbroker's grants.
            let from_pod = pod.pull_secrets.iter().any(|s| {
                configs
                    .get(&(pod.namespace.as_str(), s.as_str()))
                    .is_some_and(|c| !c.candidates(&r).is_empty())
            });
            let from_sa = sa.is_some_and(|a| {
                a.pull_secrets.iter().any(|s| {
                    configs
                        .get(&(pod.namespace.as_str(), s.as_str()))
                        .is_some_and(|c| !c.candidates(&r).is_empty())
                })
            });
            let from_grant = inp.policy.is_some_and(|p| {
                p.decide(&Request {
                    subject: &Subject::new(&pod.namespace, &pod.service_account),
                    purpose: Purpose::Pull,
                    target: Target::Image {
                        registry: r.registry(),
                        repository: r.repository(),
                    },
                    on_behalf_of: None,
                    narrowed_to: None,
                })
                .is_allowed()
            });
            if from_pod || from_grant {
                continue;
            }
            let (message, fix) = if from_sa {
                (
                    format!("image {image}: its service account {:?} has a secret for it now, but the pod was admitted without it", pod.service_account),
                    "recreate the pod (imagePullSecrets are copied from the service account only at admission)".to_string(),
                )
            } else {
                (
                    format!("image {image}: no pull secret of the pod or its service account {:?} and no PullGrant covers it, though {} needs credentials elsewhere in this cluster", pod.service_account, r.registry()),
                    format!("grant it: PullGrant {{subjects: {{namespaces: [{}], serviceAccounts: [{}]}}, repositories: [{}], purposes: [pull]}}", pod.namespace, pod.service_account, r.repository()),
                )
            };
            findings.push(Finding {
                severity: Severity::Warning,
                code: "pod.no-credential",
                objects: vec![here.clone()],
                message,
                fix,
            });
        }
    }

    if let Some(policy) = inp.policy {
        audit_policy(inp, policy, &mut findings);
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.code.cmp(b.code))
            .then(a.objects.cmp(&b.objects))
    });
    Report {
        findings,
        pull_secrets: summaries,
    }
}

fn audit_policy(inp: &Inputs<'_>, policy: &Policy, findings: &mut Vec<Finding>) {
    for g in policy.grants() {
        let here = obj("PullGrant", "", &g.name);
        let spec = &g.spec;
        if let Some(usage) = inp.grant_use {
            let copies = policy
                .credentials()
                .get(&spec.credential)
                .and_then(|c| c.upstream_copy())
                .is_some();
            for purpose in &spec.purposes {
                // A copied upstream secret is used at the registry, where
                // the broker never sees it.
                if *purpose == Purpose::Sync && copies {
                    continue;
                }
                if !usage.used.contains(&(g.name.clone(), purpose.to_string())) {
                    findings.push(Finding {
                        severity: Severity::Info,
                        code: "grant.unused",
                        objects: vec![here.clone()],
                        message: format!(
                            "purpose {purpose} allowed nothing in the {}s the broker has been counting",
                            usage.window_seconds
                        ),
                        fix: "least privilege: drop the purpose or the grant if nothing needs it (pullbroker can-i shows whom it covers)".into(),
                    });
                }
            }
        }
        let static_source = policy
            .credentials()
            .get(&spec.credential)
            .is_some_and(|c| c.source.secret_ref.is_some());
        if spec.subjects.namespaces.iter().any(|n| n == "*") {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "grant.every-namespace",
                objects: vec![here.clone()],
                message: "namespaces: [\"*\"] selects every namespace, including ones created later by anyone allowed to create namespaces".into(),
                fix: "list the namespaces, or select them by an operator-controlled label (namespaceSelector)".into(),
            });
        }
        if spec.subjects.service_accounts.iter().any(|n| n == "*") {
            findings.push(Finding {
                severity: Severity::Info,
                code: "grant.every-service-account",
                objects: vec![here.clone()],
                message: "serviceAccounts: [\"*\"] lets every service account of the selected namespaces pull".into(),
                fix: "name the service accounts that run the workloads".into(),
            });
        }
        if static_source && spec.repositories.iter().any(|r| r == "**") {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "grant.every-repository",
                objects: vec![here.clone()],
                message: format!("repositories: [\"**\"] on credential {:?}, a static password: whoever holds it can pull every repository that account can", spec.credential),
                fix: "list the repositories the workloads use (apps/team-a/**)".into(),
            });
        }
        let copy = policy
            .credentials()
            .get(&spec.credential)
            .and_then(|c| c.upstream_copy())
            .filter(|_| spec.allows_upstream_copy() && spec.purposes.contains(&Purpose::Sync));
        match copy {
            Some(UpstreamCopy::Password) => findings.push(Finding {
                severity: Severity::Warning,
                code: "grant.static-copy",
                objects: vec![here.clone()],
                message: format!("allowUpstreamCopy copies the upstream password of {:?} into every selected namespace", spec.credential),
                fix: "use KEP-4412 (nothing copied) or a tokenIssuer/exec credential (short-lived copies)".into(),
            }),
            Some(UpstreamCopy::Token) => findings.push(Finding {
                severity: Severity::Warning,
                code: "grant.upstream-copy",
                objects: vec![here.clone()],
                message: format!("allowUpstreamCopy copies the upstream token of {:?} into every selected namespace: it opens every repository its identity can read, whatever the grant's repositories, and stays valid upstream until it expires even after the synced Secret is deleted (the grant's ttl caps only the Secret)", spec.credential),
                fix: "use KEP-4412 (nothing copied) or a tokenIssuer credential (repository-scoped, minted per namespace)".into(),
            }),
            None => {}
        }
        if spec.allow_static_copy {
            findings.push(Finding {
                severity: Severity::Info,
                code: "grant.deprecated-field",
                objects: vec![here.clone()],
                message: "allowStaticCopy is deprecated (it now covers every upstream copy)".into(),
                fix: "rename it to allowUpstreamCopy".into(),
            });
        }
    }
    for c in inp.credential_states {
        if c.ready == Some(false) {
            findings.push(Finding {
                severity: Severity::Error,
                code: "credential.unavailable",
                objects: vec![obj("RegistryCredential", "", &c.name)],
                message: format!("not ready: {}", c.reason),
                fix: "see kubectl describe registrycredential and the controller's log".into(),
            });
        }
    }
    let grants: BTreeSet<&str> = policy.grants().iter().map(|g| g.name.as_str()).collect();
    for s in inp.secrets {
        if s.labels.get(MANAGED_BY.0).is_none_or(|v| v != MANAGED_BY.1) {
            continue;
        }
        let here = obj("Secret", &s.namespace, &s.name);
        match s.labels.get(GRANT_LABEL) {
            Some(g) if !grants.contains(g.as_str()) => findings.push(Finding {
                severity: Severity::Warning,
                code: "managed.orphan",
                objects: vec![here.clone()],
                message: format!(
                    "made for PullGrant {g:?}, which no longer exists (or is invalid)"
                ),
                fix:
                    "the controller removes it when it runs; if it does not lead, delete the secret"
                        .into(),
            }),
            _ => {}
        }
        if let (Some(iat), Some(exp)) = (s.issued_at, s.expires_at) {
            if exp <= inp.now {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: "managed.expired",
                    objects: vec![here.clone()],
                    message: format!("its credential expired {} ago: pulls with it fail", duration(inp.now - exp)),
                    fix: "check that the controller leads and can write secrets (its log, pullbroker_controller_reconcile_errors_total)".into(),
                });
            } else if inp.now > iat + (exp - iat) * 3 / 4 {
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: "managed.rotation-overdue",
                    objects: vec![here],
                    message: format!(
                        "past its rotation time; expires in {}",
                        duration(exp - inp.now)
                    ),
                    fix: "check that the controller leads (pullbroker_controller_leader)".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Named;

    fn findings(grant: &str) -> Vec<(&'static str, String)> {
        let creds = vec![
            Named {
                name: "ecr".into(),
                spec: serde_saphyr::from_str(
                    "registries: [e.example]\nsource: {exec: {command: ecr-credential-provider}}",
                )
                .unwrap(),
            },
            Named {
                name: "static".into(),
                spec: serde_saphyr::from_str(
                    "registries: [s.example]\nsource: {secretRef: {name: p}}",
                )
                .unwrap(),
            },
        ];
        let grants = vec![Named {
            name: "g".into(),
            spec: serde_saphyr::from_str(grant).unwrap(),
        }];
        let (policy, problems) = Policy::new(creds, grants, BTreeMap::new());
        assert!(problems.is_empty(), "{problems:?}");
        let report = audit(&Inputs {
            secrets: &[],
            accounts: &[],
            pods: &[],
            policy: Some(&policy),
            credential_states: &[],
            now: 0,
            warn_within: 0,
            hash_key: [0; 32],
            grant_use: None,
        });
        report
            .findings
            .into_iter()
            .map(|f| (f.code, f.message))
            .filter(|(code, _)| code.starts_with("grant.") && !code.starts_with("grant.every"))
            .collect()
    }

    const SYNC: &str = "subjects: {namespaces: [team-a], serviceAccounts: [app]}\nrepositories: [apps/**]\npurposes: [sync]\n";

    #[test]
    fn a_pod_kubelet_reports_rate_limited_is_named_so() {
        let pods = [PodInfo {
            namespace: "team-a".into(),
            name: "web-0".into(),
            service_account: "default".into(),
            images: vec!["docker.io/library/nginx:1.27".into()],
            pull_waits: vec![PullWait {
                container: "web".into(),
                image: "docker.io/library/nginx:1.27".into(),
                reason: "ErrImagePull".into(),
                // containerd's message for Docker Hub's pull limit.
                message: "failed to pull and unpack image \"docker.io/library/nginx:1.27\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/nginx/manifests/sha256:ab: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit".into(),
            }],
            ..Default::default()
        }];
        let report = audit(&Inputs {
            secrets: &[],
            accounts: &[],
            pods: &pods,
            policy: None,
            credential_states: &[],
            now: 0,
            warn_within: 0,
            hash_key: [0; 32],
            grant_use: None,
        });
        let f = report
            .findings
            .iter()
            .find(|f| f.code == "pod.pull-failing")
            .unwrap();
        assert!(f.message.contains("rate_limited"), "{}", f.message);
        assert!(f.message.contains("rate-limits"), "{}", f.message);
        assert!(f.fix.starts_with("pullbroker diagnose pod team-a/web-0"));
    }

    #[test]
    fn grants_that_allowed_nothing_are_reported_by_purpose() {
        let metrics = "# HELP pullbroker_grant_allows Requests each PullGrant allowed\n\
            # TYPE pullbroker_grant_allows counter\n\
            pullbroker_grant_allows_total{grant=\"g\",purpose=\"pull\"} 3\n\
            pullbroker_grant_allows_total{grant=\"g\",purpose=\"resolve\"} 0\n\
            pullbroker_started_timestamp_seconds 1000\n";
        let usage = GrantUse::parse(metrics, 4600).unwrap();
        assert_eq!(usage.window_seconds, 3600);
        assert_eq!(
            usage.used,
            BTreeSet::from([("g".to_string(), "pull".to_string())])
        );
        assert!(GrantUse::parse("other_metric 1\n", 0)
            .unwrap_err()
            .contains("pullbroker"));

        let report = |grant: &str| {
            let creds = vec![Named {
                name: "corp".into(),
                spec: serde_saphyr::from_str("registries: [r.example]\nsource: {tokenIssuer: {signingKeySecretRef: {name: k}, service: s, issuer: i}}").unwrap(),
            }];
            let grants = vec![Named {
                name: "g".into(),
                spec: serde_saphyr::from_str(grant).unwrap(),
            }];
            let (policy, _) = Policy::new(creds, grants, BTreeMap::new());
            audit(&Inputs {
                secrets: &[],
                accounts: &[],
                pods: &[],
                policy: Some(&policy),
                credential_states: &[],
                now: 4600,
                warn_within: 0,
                hash_key: [0; 32],
                grant_use: Some(&usage),
            })
            .findings
            .into_iter()
            .filter(|f| f.code == "grant.unused")
            .map(|f| f.message)
            .collect::<Vec<_>>()
        };
        let unused = report("credential: corp\nsubjects: {namespaces: [a], serviceAccounts: [app]}\nrepositories: ['**']\npurposes: [pull, resolve, sync]\n");
        assert_eq!(unused.len(), 2, "{unused:?}");
        assert!(
            unused.iter().any(|m| m.starts_with("purpose resolve ")),
            "{unused:?}"
        );
        assert!(
            unused.iter().any(|m| m.starts_with("purpose sync ")),
            "{unused:?}"
        );
        assert!(unused[0].contains("3600s"), "{unused:?}");
    }

    #[test]
    fn every_upstream_copy_is_flagged() {
        let token = findings(&format!("credential: ecr\n{SYNC}allowUpstreamCopy: true\n"));
        assert_eq!(token.len(), 1, "{token:?}");
        assert_eq!(token[0].0, "grant.upstream-copy");
        assert!(
            token[0].1.contains("valid upstream until it expires"),
            "{}",
            token[0].1
        );
        let password = findings(&format!(
            "credential: static\n{SYNC}allowUpstreamCopy: true\n"
        ));
        assert_eq!(
            password.iter().map(|f| f.0).collect::<Vec<_>>(),
            ["grant.static-copy"]
        );
        // The deprecated spelling still copies, and says it is deprecated.
        let old = findings(&format!("credential: ecr\n{SYNC}allowStaticCopy: true\n"));
        let mut codes: Vec<_> = old.iter().map(|f| f.0).collect();
        codes.sort();
        assert_eq!(codes, ["grant.deprecated-field", "grant.upstream-copy"]);
        // Without the opt-in nothing is copied, so nothing is flagged.
        assert!(findings(&format!("credential: ecr\n{SYNC}")).is_empty());
    }
}
