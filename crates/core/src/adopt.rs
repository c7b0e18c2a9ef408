//! `pullbroker adopt`, pure: from pull secrets copied across namespaces to
//! central credentials and the narrowest grants that keep every pod pulling.
//!
//! The cluster as `audit` reads it goes in; a [`Plan`] comes out:
//!
//! - one [`PlannedCredential`] per distinct upstream credential found in
//!   copies (same registries, same secret; any Secret name), its registries
//!   those its pods' images use;
//! - the [`PullGrant`](crate::policy::model::PullGrantSpec)s that select
//!   exactly the namespaces and service accounts that use each today, for
//!   the repositories their images use;
//! - the proof: every (pod, image) that pulls with a copy today, decided by
//!   [`Policy::decide`] against the cluster's policy with the plan added;
//! - the clean-up, in an order that never leaves a pod without a credential:
//!   apply, wait for the grants, drop the service-account entries, recreate
//!   the pods that name a copy, and only then delete the copies.
//!
//! Credentials are compared by [`Credential::id`](crate::Credential::id);
//! no secret value is in anything this module prints or serialises — the
//! central Secret's bytes leave only through
//! [`PlannedCredential::config_json_exposing_secrets`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::audit::{AccountInfo, Finding, PodInfo, SecretInfo, Severity, TYPE_DOCKERCFG};
use crate::dockerconfig::DockerConfig;
use crate::policy::model::{CredentialSource, PullGrantSpec, RegistryCredentialSpec, Subjects};
use crate::policy::model::{Purpose, SecretRef};
use crate::policy::{Named, Policy, Request, Subject, Target};
use crate::sync::MANAGED_BY;
use crate::Reference;

/// Sibling repositories under one parent at which the grant names
/// `parent/*` instead of each: fewer than this are listed one by one.
pub const GLOB_SIBLINGS: usize = 3;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the central Secrets go (the broker's system namespace).
    pub system_namespace: String,
    /// Also grant `sync` (clusters without KEP-4412 plugins): the controller
    /// then keeps a short-lived copy in each granted namespace, which for a
    /// static password needs `allowUpstreamCopy`.
    pub sync: bool,
}

pub struct Inputs<'a> {
    pub secrets: &'a [SecretInfo],
    pub accounts: &'a [AccountInfo],
    pub pods: &'a [PodInfo],
    /// pullbroker's policy in the cluster now (None: CRDs not installed).
    pub policy: Option<&'a Policy>,
    /// Namespaces whose images are resolved to digests (Knative Services,
    /// workloads pinned by admission): their grants also allow `resolve`.
    pub resolving_namespaces: &'a BTreeSet<String>,
    pub options: Options,
}

/// A namespaced object, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn oref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// A central credential to create: a Secret of the same name in the system
/// namespace, and the `RegistryCredential` reading it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCredential {
    pub name: String,
    pub spec: RegistryCredentialSpec,
    /// The copies it replaces.
    pub copies: Vec<ObjectRef>,
    /// User name of the upstream credential, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// 0 for the newest value of its kind; 1, 2, … for older values found
    /// in some namespaces (a password rotated in some copies only).
    pub rotation_rank: usize,
    #[serde(skip)]
    config: DockerConfig,
}

impl PlannedCredential {
    /// The central Secret's `.dockerconfigjson`: the copies' entries as
    /// they were (legacy `.dockercfg` converted). Contains the secret.
    pub fn config_json_exposing_secrets(&self) -> String {
        self.config.to_json_exposing_secrets()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedGrant {
    pub name: String,
    pub spec: PullGrantSpec,
    /// Pods that pull with a copy today and will pull through this grant.
    pub pods: usize,
}

/// A (pod, image) the plan would leave without a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub pod: ObjectRef,
    pub image: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    /// (pod, image) pairs that pull with a copy today, each decided.
    pub checked: usize,
    pub broken: Vec<Broken>,
}

/// One step of the clean-up, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub enum Step {
    /// Create the central Secrets, RegistryCredentials and PullGrants
    /// (`adopt --apply` does this, and nothing else).
    Apply {
        credentials: Vec<String>,
        grants: Vec<String>,
    },
    /// Wait until the grants serve: each `Ready`, and the synced secrets
    /// in place (sync) or the nodes' kubelets using the plugin (KEP-4412).
    WaitReady { grants: Vec<String>, sync: bool },
    /// Drop a copy from a service account's `imagePullSecrets`: pods
    /// created from now on no longer get it.
    #[serde(rename_all = "camelCase")]
    RemoveAccountEntry {
        namespace: String,
        service_account: String,
        secret: String,
    },
    /// Recreate a pod that names a copy (pods cannot change their
    /// `imagePullSecrets`), through its workload. `drop_from_template`: copies
    /// the pod names that its service account does not, so its workload's
    /// template does: remove them there first.
    #[serde(rename_all = "camelCase")]
    RecreatePod {
        pod: ObjectRef,
        drop_from_template: Vec<String>,
    },
    /// Delete a copy: no pod and no service account names it any more.
    DeleteSecret { secret: ObjectRef, unused: bool },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub credentials: Vec<PlannedCredential>,
    pub grants: Vec<PlannedGrant>,
    pub proof: Proof,
    pub cleanup: Vec<Step>,
    /// What needs a person's eye: rotated copies, legacy secrets, unused
    /// copies, renamed objects.
    pub notes: Vec<Finding>,
}

impl Plan {
    /// Whether the plan keeps every pod that pulls today pulling.
    pub fn is_safe(&self) -> bool {
        self.proof.broken.is_empty()
    }
}

/// A distinct value's key: its `auths` keys and credential id.
type ValueKey = (Vec<String>, [u8; 32]);

/// One distinct upstream credential as found in copies: the same secret
/// for the same set of `auths` keys.
struct Value<'a> {
    keys: Vec<String>,
    username: Option<String>,
    config: DockerConfig,
    holders: Vec<&'a SecretInfo>,
}

impl Value<'_> {
    fn newest(&self) -> i64 {
        self.holders
            .iter()
            .filter_map(|h| h.created)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// Who uses one value in one namespace.
#[derive(Default)]
struct NsUse {
    accounts: BTreeSet<String>,
    repositories: BTreeSet<String>,
}

/// Everything one value is used for.
#[derive(Default)]
struct Usage<'a> {
    namespaces: BTreeMap<&'a str, NsUse>,
    registries: BTreeSet<String>,
    pulls: Vec<(&'a PodInfo, String)>,
}

/// The plan for a cluster. Deterministic for the same inputs.
pub fn plan(inp: &Inputs<'_>) -> Plan {
    let mut notes = Vec::new();
    let is_managed = |s: &SecretInfo| {
        s.labels
            .get(MANAGED_BY.0)
            .is_some_and(|v| v == MANAGED_BY.1)
    };

    // Distinct values, keyed by their `auths` keys and credential id.
    let mut values: BTreeMap<ValueKey, Value<'_>> = BTreeMap::new();
    // Values each secret holds (a secret may hold several).
    let mut held: BTreeMap<(&str, &str), Vec<ValueKey>> = BTreeMap::new();
    // The system namespace's pull secrets: central, never copies (an
    // earlier `adopt --apply` wrote some of them).
    let mut central: BTreeMap<&str, Vec<ValueKey>> = BTreeMap::new();
    for s in inp.secrets.iter().filter(|s| !is_managed(s)) {
        let Ok(config) = crate::audit::pull_secret_config(&s.type_, s.config.as_deref()) else {
            continue; // not a pull secret, or one kubelet cannot use either
        };
        let mut by_id: BTreeMap<[u8; 32], Vec<String>> = BTreeMap::new();
        for e in config.entries() {
            by_id
                .entry(*e.credential().id().as_bytes())
                .or_default()
                .push(e.key().to_string());
        }
        for (id, mut keys) in by_id {
            keys.sort();
            let key = (keys.clone(), id);
            if s.namespace == inp.options.system_namespace {
                central.entry(s.name.as_str()).or_default().push(key);
                continue;
            }
            let value = values.entry(key.clone()).or_insert_with(|| {
                let subset = config.retain(|e| keys.iter().any(|k| k == e.key()));
                Value {
                    username: subset
                        .entries()
                        .first()
                        .and_then(|e| e.credential().username())
                        .map(String::from),
                    keys: keys.clone(),
                    config: subset,
                    holders: Vec::new(),
                }
            });
            value.holders.push(s);
            held.entry((s.namespace.as_str(), s.name.as_str()))
                .or_default()
                .push(key);
        }
    }

    // Families: the same keys and user. More than one value in a family is
    // a rotation that reached only some copies. A family is adopted when
    // its copies span two namespaces or more.
    let mut families: BTreeMap<(Vec<String>, Option<String>), Vec<ValueKey>> = BTreeMap::new();
    for (key, v) in &values {
        families
            .entry((v.keys.clone(), v.username.clone()))
            .or_default()
            .push(key.clone());
    }
    let mut adopted: Vec<Vec<ValueKey>> = Vec::new();
    for (_, mut members) in families {
        let namespaces: BTreeSet<&str> = members
            .iter()
            .flat_map(|k| values[k].holders.iter().map(|h| h.namespace.as_str()))
            .collect();
        if namespaces.len() < 2 {
            continue;
        }
        // Newest first: it gets the plain name and sorts first.
        members.sort_by_key(|k| std::cmp::Reverse(values[k].newest()));
        adopted.push(members);
    }
    let adopted_keys: BTreeSet<&ValueKey> = adopted.iter().flatten().collect();

    // Who names each secret.
    let mut pods_by_secret: BTreeMap<(&str, &str), Vec<&PodInfo>> = BTreeMap::new();
    for p in inp.pods {
        for s in &p.pull_secrets {
            pods_by_secret
                .entry((p.namespace.as_str(), s.as_str()))
                .or_default()
                .push(p);
        }
    }
    let mut accounts_by_secret: BTreeMap<(&str, &str), Vec<&AccountInfo>> = BTreeMap::new();
    for a in inp.accounts {
        for s in &a.pull_secrets {
            accounts_by_secret
                .entry((a.namespace.as_str(), s.as_str()))
                .or_default()
                .push(a);
        }
    }

    // Names this plan gives out; a name the cluster already has is taken
    // unless it is this plan's own from an earlier run (so `--apply` run
    // again converges instead of adding `-2`s).
    let mut credential_names: BTreeSet<String> = BTreeSet::new();
    let mut grant_names: BTreeSet<String> = BTreeSet::new();
    let existing_credential = |name: &str| inp.policy.and_then(|p| p.credentials().get(name));
    let credential_taken = |name: &str, value: &ValueKey| {
        let by_document = existing_credential(name)
            .is_some_and(|c| c.source.secret_ref.as_ref().map(|r| r.name.as_str()) != Some(name));
        let by_secret = inp
            .secrets
            .iter()
            .any(|s| s.namespace == inp.options.system_namespace && s.name == name)
            && central.get(name) != Some(&vec![value.clone()]);
        by_document || by_secret
    };
    let mut credentials = Vec::new();
    let mut grants = Vec::new();
    let mut pulls: Vec<(&PodInfo, String)> = Vec::new();
    // Secrets whose every value is adopted (granted or unused): deletable.
    let mut unused_values: BTreeSet<&ValueKey> = BTreeSet::new();

    for family in &adopted {
        let base = family_name(family.iter().flat_map(|k| &values[k].holders));
        for (rank, key) in family.iter().enumerate() {
            let v = &values[key];
            let usage = usage(v, &pods_by_secret, &accounts_by_secret);
            let holders: Vec<ObjectRef> = v
                .holders
                .iter()
                .map(|h| oref(&h.namespace, &h.name))
                .collect();
            if usage.pulls.is_empty() {
                unused_values.insert(key);
                notes.push(Finding {
                    severity: Severity::Info,
                    code: "adopt.unused",
                    objects: holders.iter().map(|h| format!("Secret {h}")).collect(),
                    message: format!(
                        "{} copies of the credential for {}{} are used by no pod: nothing is granted for them",
                        holders.len(),
                        v.keys.join(", "),
                        user_note(&v.username)
                    ),
                    fix: "delete them (the clean-up lists them)".into(),
                });
                continue;
            }
            let wanted = if rank == 0 {
                base.clone()
            } else if rank == 1 {
                format!("{base}-previous")
            } else {
                format!("{base}-previous-{rank}")
            };
            let name = unique(&wanted, &mut credential_names, |n| credential_taken(n, key));
            if name != wanted {
                notes.push(Finding {
                    severity: Severity::Info,
                    code: "adopt.renamed",
                    objects: vec![format!("RegistryCredential {name}")],
                    message: format!("{wanted:?} is taken (a RegistryCredential or a Secret in {}): named {name:?}", inp.options.system_namespace),
                    fix: "rename it in the manifests if you prefer another name".into(),
                });
            }
            if rank > 0 {
                notes.push(Finding {
                    severity: Severity::Warning,
                    code: "adopt.rotated",
                    objects: holders.iter().map(|h| format!("Secret {h}")).collect(),
                    message: format!(
                        "these copies hold an older value of the credential for {}{} (a rotation that did not reach them): adopted as {name:?}, after the newest",
                        v.keys.join(", "),
                        user_note(&v.username)
                    ),
                    fix: format!("check which value the registry still accepts; once {base:?} serves these namespaces, delete {name:?} and its grants"),
                });
            }
            if v.holders.iter().any(|h| h.type_ == TYPE_DOCKERCFG) {
                notes.push(Finding {
                    severity: Severity::Info,
                    code: "adopt.legacy",
                    objects: v
                        .holders
                        .iter()
                        .filter(|h| h.type_ == TYPE_DOCKERCFG)
                        .map(|h| format!("Secret {}/{}", h.namespace, h.name))
                        .collect(),
                    message: "legacy kubernetes.io/dockercfg copies: the central Secret is written as kubernetes.io/dockerconfigjson".into(),
                    fix: "nothing to do".into(),
                });
            }
            if v.keys.len() > 1 {
                notes.push(Finding {
                    severity: Severity::Info,
                    code: "adopt.multi-registry",
                    objects: vec![format!("RegistryCredential {name}")],
                    message: format!(
                        "one credential for several registries ({}): one RegistryCredential covers the ones pods use",
                        v.keys.join(", ")
                    ),
                    fix: "nothing to do".into(),
                });
            }
            credentials.push(PlannedCredential {
                name: name.clone(),
                spec: RegistryCredentialSpec {
                    registries: usage.registries.iter().cloned().collect(),
                    source: CredentialSource {
                        secret_ref: Some(SecretRef { name: name.clone() }),
                        ..Default::default()
                    },
                    transport: None,
                },
                copies: holders,
                username: v.username.clone(),
                rotation_rank: rank,
                config: v.config.clone(),
            });
            grants.extend(grants_for(&name, &usage, inp, &mut grant_names));
            pulls.extend(usage.pulls);
        }
    }
    if inp.options.sync && !grants.is_empty() {
        notes.push(Finding {
            severity: Severity::Warning,
            code: "adopt.sync-copy",
            objects: grants
                .iter()
                .map(|g| format!("PullGrant {}", g.name))
                .collect(),
            message: "sync copies each adopted password into the namespaces that use it today (allowUpstreamCopy), as the copies do now — centrally rotated, and only where used".into(),
            fix: "on Kubernetes 1.34+ run the kubelet plugin instead (adopt --mode plugin): no copy leaves the system namespace".into(),
        });
    }

    let proof = prove(inp, &credentials, &grants, &pulls);

    // Secrets to delete: every value they hold adopted.
    let deletable: BTreeMap<(&str, &str), bool> = held
        .iter()
        .filter(|(_, keys)| keys.iter().all(|k| adopted_keys.contains(k)))
        .map(|(s, keys)| (*s, keys.iter().all(|k| unused_values.contains(k))))
        .collect();
    for (s, keys) in &held {
        if !deletable.contains_key(s) && keys.iter().any(|k| adopted_keys.contains(k)) {
            notes.push(Finding {
                severity: Severity::Info,
                code: "adopt.partial",
                objects: vec![format!("Secret {}/{}", s.0, s.1)],
                message: "this secret also holds a credential that is not copied elsewhere: it is not adopted, so the secret is kept".into(),
                fix: "move that credential out of it, or adopt it by hand".into(),
            });
        }
    }
    let cleanup = cleanup(inp, &credentials, &grants, &deletable);
    notes.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.code.cmp(b.code))
            .then(a.objects.cmp(&b.objects))
    });
    Plan {
        credentials,
        grants,
        proof,
        cleanup,
        notes,
    }
}

fn user_note(user: &Option<String>) -> String {
    user.as_deref()
        .map(|u| format!(" (user {u})"))
        .unwrap_or_default()
}

/// Pods and service accounts that use `v` today, and for what.
fn usage<'a>(
    v: &Value<'a>,
    pods_by_secret: &BTreeMap<(&str, &str), Vec<&'a PodInfo>>,
    accounts_by_secret: &BTreeMap<(&str, &str), Vec<&'a AccountInfo>>,
) -> Usage<'a> {
    let mut u = Usage::default();
    let mut seen: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for h in &v.holders {
        for pod in pods_by_secret
            .get(&(h.namespace.as_str(), h.name.as_str()))
            .into_iter()
            .flatten()
        {
            for image in &pod.images {
                let Ok(r) = Reference::parse(image) else {
                    continue;
                };
                if v.config.candidates(&r).is_empty()
                    || !seen.insert((&pod.namespace, &pod.name, image))
                {
                    continue;
                }
                let ns = u.namespaces.entry(pod.namespace.as_str()).or_default();
                ns.accounts.insert(pod.service_account.clone());
                ns.repositories.insert(r.repository().to_string());
                u.registries.insert(r.registry().to_string());
                u.pulls.push((pod, image.clone()));
            }
        }
    }
    // Service accounts that hand the copy to their pods: their next pods
    // pull the same images.
    for h in &v.holders {
        if let Some(ns) = u.namespaces.get_mut(h.namespace.as_str()) {
            for a in accounts_by_secret
                .get(&(h.namespace.as_str(), h.name.as_str()))
                .into_iter()
                .flatten()
            {
                ns.accounts.insert(a.name.clone());
            }
        }
    }
    u
}

/// The narrowest grants for one credential: namespaces that use it the same
/// way (same service accounts, same repositories, same purposes) share one.
fn grants_for(
    credential: &str,
    usage: &Usage<'_>,
    inp: &Inputs<'_>,
    taken: &mut BTreeSet<String>,
) -> Vec<PlannedGrant> {
    type Shape = (Vec<String>, Vec<String>, bool);
    let mut shapes: BTreeMap<Shape, (Vec<String>, usize)> = BTreeMap::new();
    for (ns, u) in &usage.namespaces {
        let shape = (
            u.accounts.iter().cloned().collect(),
            repository_globs(&u.repositories),
            inp.resolving_namespaces.contains(*ns),
        );
        let pods = usage
            .pulls
            .iter()
            .filter(|(p, _)| p.namespace == *ns)
            .map(|(p, _)| &p.name)
            .collect::<BTreeSet<_>>()
            .len();
        let entry = shapes.entry(shape).or_default();
        entry.0.push(ns.to_string());
        entry.1 += pods;
    }
    let many = shapes.len() > 1;
    shapes
        .into_iter()
        .enumerate()
        .map(
            |(i, ((accounts, repositories, resolve), (namespaces, pods)))| {
                let wanted = if many {
                    format!("{credential}-{}", i + 1)
                } else {
                    credential.to_string()
                };
                let mut purposes = vec![Purpose::Pull];
                if inp.options.sync {
                    purposes.push(Purpose::Sync);
                }
                if resolve {
                    purposes.push(Purpose::Resolve);
                }
                PlannedGrant {
                    name: unique(&wanted, taken, |n| {
                        inp.policy.is_some_and(|p| {
                            p.grants()
                                .iter()
                                .any(|g| g.name == n && g.spec.credential != credential)
                        })
                    }),
                    spec: PullGrantSpec {
                        credential: credential.to_string(),
                        subjects: Subjects {
                            namespaces,
                            namespace_selector: None,
                            service_accounts: accounts,
                        },
                        repositories,
                        purposes,
                        ttl: None,
                        resolvers: Vec::new(),
                        allow_upstream_copy: inp.options.sync,
                        allow_static_copy: false,
                        admission: None,
                    },
                    pods,
                }
            },
        )
        .collect()
}

/// Repositories as grant globs: each listed, except that
/// [`GLOB_SIBLINGS`] or more under one parent become `parent/*` (`*` stays
/// inside one path component, so nothing deeper is opened).
pub fn repository_globs(repositories: &BTreeSet<String>) -> Vec<String> {
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in repositories {
        let parent = r.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        by_parent.entry(parent).or_default().push(r);
    }
    let mut out: Vec<String> = by_parent
        .into_iter()
        .flat_map(|(parent, children)| {
            if !parent.is_empty() && children.len() >= GLOB_SIBLINGS {
                vec![format!("{parent}/*")]
            } else {
                children.into_iter().map(String::from).collect()
            }
        })
        .collect();
    out.sort();
    out
}

/// A DNS-label name for a family of copies: their most common Secret name.
fn family_name<'a>(holders: impl Iterator<Item = &'a &'a SecretInfo>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in holders {
        *counts.entry(h.name.as_str()).or_default() += 1;
    }
    let common = counts
        .iter()
        .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
        .map(|(name, _)| *name)
        .unwrap_or("adopted");
    let mut name: String = common
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Room for `-previous-N` and a `-N` suffix within 63 characters.
    name.truncate(40);
    let name = name.trim_matches('-');
    if name.is_empty() {
        "adopted".into()
    } else {
        name.to_string()
    }
}

/// `wanted`, or `wanted-2`, `wanted-3`, … whichever neither this plan
/// (`planned`) nor the cluster (`taken`) uses; marks it planned.
fn unique(wanted: &str, planned: &mut BTreeSet<String>, taken: impl Fn(&str) -> bool) -> String {
    let mut name = wanted.to_string();
    let mut n = 2;
    while planned.contains(&name) || taken(&name) {
        name = format!("{wanted}-{n}");
        n += 1;
    }
    planned.insert(name.clone());
    name
}

/// Decides every (pod, image) that pulls with a copy today against the
/// cluster's policy with the plan added — `can-i`'s answer, before anything
/// is applied.
fn prove(
    inp: &Inputs<'_>,
    credentials: &[PlannedCredential],
    grants: &[PlannedGrant],
    pulls: &[(&PodInfo, String)],
) -> Proof {
    let new_creds = credentials
        .iter()
        .map(|c| Named {
            name: c.name.clone(),
            spec: c.spec.clone(),
        })
        .collect();
    let new_grants = grants
        .iter()
        .map(|g| Named {
            name: g.name.clone(),
            spec: g.spec.clone(),
        })
        .collect();
    let (policy, problems) = match inp.policy {
        Some(p) => p.extended(new_creds, new_grants),
        None => Policy::new(new_creds, new_grants, BTreeMap::new()),
    };
    let planned: BTreeSet<&str> = credentials
        .iter()
        .map(|c| c.name.as_str())
        .chain(grants.iter().map(|g| g.name.as_str()))
        .collect();
    let ours: Vec<String> = problems
        .iter()
        .filter(|p| planned.contains(p.name.as_str()))
        .map(ToString::to_string)
        .collect();
    let mut proof = Proof::default();
    let mut purposes = vec![Purpose::Pull];
    if inp.options.sync {
        purposes.push(Purpose::Sync);
    }
    for (pod, image) in pulls {
        proof.checked += 1;
        let here = oref(&pod.namespace, &pod.name);
        if !ours.is_empty() {
            proof.broken.push(Broken {
                pod: here,
                image: image.clone(),
                reason: format!("the plan's documents are invalid: {}", ours.join("; ")),
            });
            continue;
        }
        let Ok(r) = Reference::parse(image) else {
            continue; // usage() only records images that parse
        };
        for purpose in &purposes {
            let decision = policy.decide(&Request {
                subject: &Subject::new(&pod.namespace, &pod.service_account),
                purpose: *purpose,
                target: Target::Image {
                    registry: r.registry(),
                    repository: r.repository(),
                },
                on_behalf_of: None,
                narrowed_to: None,
            });
            if !decision.is_allowed() {
                proof.broken.push(Broken {
                    pod: here.clone(),
                    image: image.clone(),
                    reason: decision.reason().to_string(),
                });
            }
        }
    }
    proof
}

/// The clean-up, in the only safe order: apply; wait; stop handing copies
/// to new pods; recreate the pods that name one; delete the copies.
fn cleanup(
    inp: &Inputs<'_>,
    credentials: &[PlannedCredential],
    grants: &[PlannedGrant],
    deletable: &BTreeMap<(&str, &str), bool>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if !credentials.is_empty() {
        steps.push(Step::Apply {
            credentials: credentials.iter().map(|c| c.name.clone()).collect(),
            grants: grants.iter().map(|g| g.name.clone()).collect(),
        });
        steps.push(Step::WaitReady {
            grants: grants.iter().map(|g| g.name.clone()).collect(),
            sync: inp.options.sync,
        });
    }
    for a in inp.accounts {
        for s in &a.pull_secrets {
            if deletable.contains_key(&(a.namespace.as_str(), s.as_str())) {
                steps.push(Step::RemoveAccountEntry {
                    namespace: a.namespace.clone(),
                    service_account: a.name.clone(),
                    secret: s.clone(),
                });
            }
        }
    }
    let accounts: BTreeMap<(&str, &str), &AccountInfo> = inp
        .accounts
        .iter()
        .map(|a| ((a.namespace.as_str(), a.name.as_str()), a))
        .collect();
    for p in inp.pods {
        let named: Vec<&String> = p
            .pull_secrets
            .iter()
            .filter(|s| deletable.contains_key(&(p.namespace.as_str(), s.as_str())))
            .collect();
        if named.is_empty() {
            continue;
        }
        let from_account = accounts
            .get(&(p.namespace.as_str(), p.service_account.as_str()))
            .map(|a| &a.pull_secrets);
        steps.push(Step::RecreatePod {
            pod: oref(&p.namespace, &p.name),
            drop_from_template: named
                .into_iter()
                .filter(|s| !from_account.is_some_and(|a| a.contains(s)))
                .cloned()
                .collect(),
        });
    }
    for ((ns, name), unused) in deletable {
        steps.push(Step::DeleteSecret {
            secret: oref(ns, name),
            unused: *unused,
        });
    }
    steps
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Apply { credentials, grants } => write!(
                f,
                "apply {} RegistryCredential(s) with their Secrets in the system namespace and {} PullGrant(s) (pullbroker adopt --apply)",
                credentials.len(),
                grants.len()
            ),
            Step::WaitReady { grants, sync: true } => write!(
                f,
                "wait until the {} grant(s) are Ready and their secrets synced (kubectl get pullgrants; pullbroker audit shows no pod.no-credential)",
                grants.len()
            ),
            Step::WaitReady { grants, sync: false } => write!(
                f,
                "wait until the {} grant(s) are Ready and every node's kubelet runs the pullbroker plugin with service-account tokens (pullbroker kubelet-config)",
                grants.len()
            ),
            Step::RemoveAccountEntry {
                namespace,
                service_account,
                secret,
            } => write!(
                f,
                "remove {secret:?} from ServiceAccount {namespace}/{service_account}'s imagePullSecrets"
            ),
            Step::RecreatePod {
                pod,
                drop_from_template,
            } if drop_from_template.is_empty() => write!(
                f,
                "recreate Pod {pod} (kubectl rollout restart its workload)"
            ),
            Step::RecreatePod {
                pod,
                drop_from_template,
            } => write!(
                f,
                "remove {} from Pod {pod}'s workload template's imagePullSecrets, then recreate it",
                drop_from_template.join(", ")
            ),
            Step::DeleteSecret { secret, unused } => write!(
                f,
                "delete Secret {secret}{}",
                if *unused { " (used by no pod)" } else { "" }
            ),
        }
    }
}
