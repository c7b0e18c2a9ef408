//! Sync mode's decisions, with no I/O: from the policy and what is observed in
//! the cluster, the managed pull secrets and service-account references that
//! should exist, and the actions that get there.
//!
//! The controller (a kube-runtime adapter) observes, calls [`plan`], and
//! carries out the [`Action`]s; everything that can be decided without the API
//! server is decided here, so it is tested exhaustively. Rules:
//!
//! - one managed secret per (grant with purpose `sync`, selected namespace),
//!   named [`secret_name`], labelled [`MANAGED_BY`]/[`GRANT_LABEL`];
//! - it is referenced from the `imagePullSecrets` of every service account of
//!   that namespace the grant's subjects select — only our own entry is ever
//!   added or removed, users' entries are never touched;
//! - a secret is rotated once `rotate_after` of its lifetime has passed, or
//!   at once when its credential's source changed (its *source version*: a
//!   new signing key, a new upstream password); a static copy does not
//!   expire and is rewritten only then — never with identical content;
//! - secrets without our label are never deleted, whatever their name;
//! - an upstream secret (a `secretRef` credential's password, an exec
//!   source's token) is synced only when the grant sets `allowUpstreamCopy`
//!   (or the deprecated `allowStaticCopy`); otherwise the grant is reported
//!   blocked;
//! - a managed secret lives in a tenant's namespace, so the tenant can edit
//!   it: what the controller wrote carries a [`crate::seal`] (a keyed MAC over its
//!   data, our labels and our annotations, rotation times included) and one
//!   that does not verify is *damaged* and reissued whole — nothing a tenant
//!   writes (a moved `expires-at`, an added key) can steer rotation.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::policy::decide::Policy;
use crate::policy::model::{PullGrantSpec, Purpose, UpstreamCopy};
use crate::policy::Subject;

/// Label on every object pullbroker manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "pullbroker");
/// Label naming the grant a managed secret serves.
pub const GRANT_LABEL: &str = "pullbroker.dev/grant";

/// The managed secret's name for `grant`: `pullbroker-<grant>`, shortened with
/// a hash when the grant name is long (Secret names are DNS subdomains ≤ 253).
/// Total: a name that is not a DNS subdomain as given (a file's grant names
/// are not validated by an API server) is cut on a character boundary, and
/// the kept part never ends in `-` or `.` before the hash.
pub fn secret_name(grant: &str) -> String {
    let name = format!("pullbroker-{grant}");
    if name.len() <= 253 && is_dns_subdomain(&name) {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(grant.as_bytes())[..6]);
    let kept: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(240)
        .collect();
    format!("{}-{hash}", kept.trim_end_matches(['-', '.']))
}

/// Lowercase alphanumerics, `-` and `.`, starting and ending alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A namespace as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNamespace {
    pub name: String,
    /// Being deleted: nothing new is written there.
    pub terminating: bool,
}

/// A service account as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedServiceAccount {
    pub namespace: String,
    pub name: String,
    pub image_pull_secrets: Vec<String>,
}

/// A secret carrying our label, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSecret {
    pub namespace: String,
    pub name: String,
    pub grant: String,
    /// When its credential was issued and expires (seconds since the epoch).
    pub issued_at: i64,
    pub expires_at: i64,
    /// The source version it was written from (empty if unknown).
    pub source_version: String,
    /// A copy of a static upstream password (does not expire).
    pub static_copy: bool,
    /// Written by someone else since we wrote it (its [`crate::seal`] does not
    /// verify): its times and content are not ours to trust.
    pub damaged: bool,
}

impl ObservedSecret {
    /// When it is due for reissue by time, if it ever is.
    pub fn due(&self, rotate_after: f64) -> Option<i64> {
        let lifetime = (self.expires_at - self.issued_at).max(0) as f64;
        (!self.static_copy).then(|| self.issued_at + (lifetime * rotate_after) as i64)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub namespaces: Vec<ObservedNamespace>,
    pub service_accounts: Vec<ObservedServiceAccount>,
    /// Only secrets labelled [`MANAGED_BY`]; unmanaged ones are never listed.
    pub managed_secrets: Vec<ObservedSecret>,
    /// Each credential's current source version, where one is known.
    pub source_versions: BTreeMap<String, String>,
}

/// What a managed secret must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    pub namespace: String,
    pub name: String,
    pub grant: String,
    pub credential: String,
    /// A static upstream password copied on the grant's explicit opt-in.
    pub static_copy: bool,
    /// The grant's ttl (seconds): a copy that would outlive it is reissued.
    pub ttl: i64,
}

/// One step towards the desired state. The variants are declared in the
/// order they must be carried out (the plan is sorted by it): a secret is
/// issued before an account points at it, and deleted only after every
/// reference to it is gone — see [`Plan::deletions`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Create or refresh the secret's content (new credential).
    IssueSecret(IssueSecret),
    /// Change one service account's imagePullSecrets: add ours, remove ours
    /// (only ours) — one write per account.
    UpdateReferences(ReferenceChange),
    /// Delete a managed secret that no grant wants any more.
    DeleteSecret(SecretId),
}

/// A managed secret to (re)issue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IssueSecret {
    pub namespace: String,
    pub name: String,
    pub grant: String,
    pub credential: String,
    pub static_copy: bool,
    /// Its rotation time has come (or its source changed).
    pub rotation: bool,
    /// The object holds what someone else wrote: replace it whole, so no
    /// key, label or annotation of theirs survives.
    pub repair: bool,
}

/// Our entries to add to and remove from one service account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReferenceChange {
    pub namespace: String,
    pub service_account: String,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// A namespaced secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretId {
    pub namespace: String,
    pub name: String,
}

/// Per-grant outcome, for status conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrantReport {
    pub selected_namespaces: usize,
    /// Why the grant cannot sync, if it cannot.
    pub blocked: Option<String>,
    pub static_copy: bool,
    /// An exec source's upstream token is copied (`allowUpstreamCopy`).
    pub upstream_copy: bool,
}

/// The decisions for one pass.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub grants: BTreeMap<String, GrantReport>,
}

impl Plan {
    /// The secrets to delete once the reference changes have been carried
    /// out, given the `(namespace, secret)` pairs of removals that failed.
    /// A secret still referenced must stay: deleted, its entry would dangle
    /// in the account for good, since the plan removes a reference only
    /// while its managed secret exists (after that it cannot be told from a
    /// user's own). The next pass removes the reference, then deletes.
    pub fn deletions<'a>(
        &'a self,
        failed_removals: &BTreeSet<(&str, &str)>,
    ) -> Vec<(&'a str, &'a str)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteSecret(SecretId { namespace, name }) => {
                    Some((namespace.as_str(), name.as_str()))
                }
                _ => None,
            })
            .filter(|key| !failed_removals.contains(key))
            .collect()
    }
}

/// The managed secrets a service account's pods should carry: those of the
/// sync grants that select its namespace and name it, and that the
/// controller can serve (an upstream copy only with `allowUpstreamCopy`).
/// Admission adds them to pods created before the account was patched.
pub fn secrets_for_account(policy: &Policy, namespace: &str, service_account: &str) -> Vec<String> {
    policy
        .grants()
        .iter()
        .filter(|g| g.spec.purposes.contains(&Purpose::Sync))
        .filter(|g| copy_blocked(policy, &g.spec).is_none())
        .filter(|g| policy.selects(&g.spec, &Subject::new(namespace, service_account)))
        .map(|g| secret_name(&g.name))
        .collect()
}

fn upstream_copy(policy: &Policy, grant: &PullGrantSpec) -> Option<UpstreamCopy> {
    policy
        .credentials()
        .get(&grant.credential)
        .and_then(|c| c.upstream_copy())
}

/// Why a sync grant may not copy its credential's upstream secret, if it
/// may not: every upstream copy needs the operator's explicit opt-in.
fn copy_blocked(policy: &Policy, grant: &PullGrantSpec) -> Option<String> {
    let copy = upstream_copy(policy, grant)?;
    (!grant.allows_upstream_copy()).then(|| {
        format!(
            "credential {:?} is {}; syncing it copies it into every selected namespace — set allowUpstreamCopy: true to accept that",
            grant.credential,
            copy.describe()
        )
    })
}

/// The desired secrets and references.
pub fn desired(
    policy: &Policy,
    observed: &Observed,
) -> (Vec<DesiredSecret>, BTreeMap<String, GrantReport>) {
    let mut secrets = Vec::new();
    let mut reports = BTreeMap::new();
    for g in policy.grants() {
        if !g.spec.purposes.contains(&Purpose::Sync) {
            continue;
        }
        let mut report = GrantReport::default();
        if let Some(why) = copy_blocked(policy, &g.spec) {
            report.blocked = Some(why);
            reports.insert(g.name.clone(), report);
            continue;
        }
        let copy = upstream_copy(policy, &g.spec);
        let static_source = copy == Some(UpstreamCopy::Password);
        report.static_copy = static_source;
        report.upstream_copy = copy == Some(UpstreamCopy::Token);
        for ns in observed
            .namespaces
            .iter()
            .filter(|n| !n.terminating && policy.selects(&g.spec, &Subject::namespace(&n.name)))
        {
            report.selected_namespaces += 1;
            secrets.push(DesiredSecret {
                namespace: ns.name.clone(),
                name: secret_name(&g.name),
                grant: g.name.clone(),
                credential: g.spec.credential.clone(),
                static_copy: static_source,
                ttl: crate::time::secs(g.spec.ttl()),
            });
        }
        reports.insert(g.name.clone(), report);
    }
    (secrets, reports)
}

/// The actions that take `observed` to the desired state at `now`.
/// `rotate_after` is the fraction of a credential's lifetime after which it is
/// reissued (e.g. 0.5).
pub fn plan(policy: &Policy, observed: &Observed, now: i64, rotate_after: f64) -> Plan {
    let (wanted, grants) = desired(policy, observed);
    let mut actions = BTreeSet::new();
    let have: BTreeMap<(&str, &str), &ObservedSecret> = observed
        .managed_secrets
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    let want: BTreeMap<(&str, &str), &DesiredSecret> = wanted
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();

    for d in &wanted {
        let issue = |rotation, repair| {
            Action::IssueSecret(IssueSecret {
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                grant: d.grant.clone(),
                credential: d.credential.clone(),
                static_copy: d.static_copy,
                rotation,
                repair,
            })
        };
        match have.get(&(d.namespace.as_str(), d.name.as_str())) {
            None => {
                actions.insert(issue(false, false));
            }
            Some(s) if s.damaged || s.grant != d.grant => {
                actions.insert(issue(false, true));
            }
            Some(s) => {
                let source_changed = observed
                    .source_versions
                    .get(&d.credential)
                    .is_some_and(|v| *v != s.source_version);
                let expired = s
                    .due(rotate_after)
                    .is_some_and(|due| now >= due || now >= s.expires_at);
                // The grant's ttl was shortened: no copy outlives the new one.
                let outlives_ttl = !s.static_copy && s.expires_at > now.saturating_add(d.ttl);
                if source_changed || expired || outlives_ttl {
                    actions.insert(issue(true, false));
                }
            }
        }
    }
    for s in &observed.managed_secrets {
        if !want.contains_key(&(s.namespace.as_str(), s.name.as_str())) {
            actions.insert(Action::DeleteSecret(SecretId {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            }));
        }
    }

    // References: every selected SA of a wanted secret's namespace carries
    // it. A reference is ours to remove only if it names a managed secret of
    // that same namespace (a user's own secret may share our naming pattern).
    let managed_in = |ns: &str| -> BTreeSet<&str> {
        observed
            .managed_secrets
            .iter()
            .filter(|s| s.namespace == ns)
            .map(|s| s.name.as_str())
            .collect()
    };
    for sa in &observed.service_accounts {
        let wanted_here: BTreeSet<&str> = wanted
            .iter()
            .filter(|d| d.namespace == sa.namespace)
            .filter(|d| {
                policy
                    .grants()
                    .iter()
                    .find(|g| g.name == d.grant)
                    .is_some_and(|g| {
                        policy.selects(&g.spec, &Subject::new(&sa.namespace, &sa.name))
                    })
            })
            .map(|d| d.name.as_str())
            .collect();
        let add: BTreeSet<String> = wanted_here
            .iter()
            .filter(|name| !sa.image_pull_secrets.iter().any(|s| s == *name))
            .map(|name| name.to_string())
            .collect();
        let ours = managed_in(&sa.namespace);
        let remove: BTreeSet<String> = sa
            .image_pull_secrets
            .iter()
            .filter(|name| ours.contains(name.as_str()) && !wanted_here.contains(name.as_str()))
            .cloned()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            actions.insert(Action::UpdateReferences(ReferenceChange {
                namespace: sa.namespace.clone(),
                service_account: sa.name.clone(),
                add: add.into_iter().collect(),
                remove: remove.into_iter().collect(),
            }));
        }
    }
    Plan {
        actions: actions.into_iter().collect(),
        grants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decide::Named;
    use proptest::prelude::*;

    fn policy(grants: &[(&str, &str)], labels: &[(&str, &str, &str)]) -> Policy {
        let creds = vec![
            Named { name: "corp".into(), spec: serde_saphyr::from_str("registries: [r.example]\nsource: {tokenIssuer: {signingKeySecretRef: {name: k}, service: s, issuer: i}}").unwrap() },
            Named { name: "static".into(), spec: serde_saphyr::from_str("registries: [s.example]\nsource: {secretRef: {name: p}}").unwrap() },
            Named { name: "ecr".into(), spec: serde_saphyr::from_str("registries: [e.example]\nsource: {exec: {command: ecr-credential-provider}}").unwrap() },
        ];
        let grants = grants
            .iter()
            .map(|(n, y)| Named {
                name: n.to_string(),
                spec: serde_saphyr::from_str(y).unwrap(),
            })
            .collect();
        let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (ns, k, v) in labels {
            ns_labels
                .entry(ns.to_string())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
        let (p, problems) = Policy::new(creds, grants, ns_labels);
        assert!(problems.is_empty(), "{problems:?}");
        p
    }

    const TEAM_A: &str = "credential: corp\nsubjects: {namespaces: [team-a, team-a-*], serviceAccounts: [app, worker]}\nrepositories: ['**']\npurposes: [sync]\n";

    fn ns(names: &[&str]) -> Vec<ObservedNamespace> {
        names
            .iter()
            .map(|n| ObservedNamespace {
                name: n.to_string(),
                terminating: false,
            })
            .collect()
    }

    fn sa(ns: &str, name: &str, refs: &[&str]) -> ObservedServiceAccount {
        ObservedServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            image_pull_secrets: refs.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Carries out a plan on the observed state, as the controller would.
    fn apply(observed: &mut Observed, plan: &Plan, now: i64, lifetime: i64) {
        apply_failing(observed, plan, now, lifetime, None)
    }

    /// As the controller carries a plan out: issues, then reference changes
    /// (those of `failing`, a namespace's account, fail as a refused patch
    /// would), then the deletions [`Plan::deletions`] still allows.
    fn apply_failing(
        observed: &mut Observed,
        plan: &Plan,
        now: i64,
        lifetime: i64,
        failing: Option<(&str, &str)>,
    ) {
        let mut failed = BTreeSet::new();
        for a in &plan.actions {
            if let Action::UpdateReferences(r) = a {
                if failing == Some((r.namespace.as_str(), r.service_account.as_str())) {
                    failed.extend(r.remove.iter().map(|s| (r.namespace.as_str(), s.as_str())));
                }
            }
        }
        let deletions = plan.deletions(&failed);
        for a in &plan.actions {
            match a {
                Action::IssueSecret(IssueSecret {
                    namespace,
                    name,
                    grant,
                    ..
                }) => {
                    observed
                        .managed_secrets
                        .retain(|s| !(s.namespace == *namespace && s.name == *name));
                    observed.managed_secrets.push(ObservedSecret {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        grant: grant.clone(),
                        issued_at: now,
                        expires_at: now + lifetime,
                        source_version: String::new(),
                        static_copy: false,
                        damaged: false,
                    });
                }
                Action::DeleteSecret(SecretId { namespace, name }) => {
                    if deletions.contains(&(namespace.as_str(), name.as_str())) {
                        observed
                            .managed_secrets
                            .retain(|s| !(s.namespace == *namespace && s.name == *name))
                    }
                }
                Action::UpdateReferences(r)
                    if failing == Some((r.namespace.as_str(), r.service_account.as_str())) => {}
                Action::UpdateReferences(r) => {
                    let sa = observed
                        .service_accounts
                        .iter_mut()
                        .find(|s| s.namespace == r.namespace && s.name == r.service_account)
                        .unwrap();
                    sa.image_pull_secrets.retain(|s| !r.remove.contains(s));
                    sa.image_pull_secrets.extend(r.add.iter().cloned());
                }
            }
        }
    }

    #[test]
    fn creates_references_and_converges() {
        let p = policy(&[("team-a", TEAM_A)], &[]);
        let mut o = Observed {
            namespaces: ns(&["team-a", "team-a-dev", "team-ab", "other"]),
            service_accounts: vec![
                sa("team-a", "app", &["user-own"]),
                sa("team-a", "default", &[]),
                sa("team-a-dev", "worker", &[]),
                sa("team-ab", "app", &[]),
            ],
            managed_secrets: vec![],
            ..Default::default()
        };
        let plan1 = plan(&p, &o, 1000, 0.5);
        let issued: Vec<&str> = plan1
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::IssueSecret(i) => Some(i.namespace.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            issued,
            ["team-a", "team-a-dev"],
            "exactly the selected namespaces"
        );
        assert!(plan1
            .actions
            .contains(&Action::UpdateReferences(ReferenceChange {
                namespace: "team-a".into(),
                service_account: "app".into(),
                add: vec!["pullbroker-team-a".into()],
                remove: vec![],
            })));
        assert!(
            !plan1.actions.iter().any(
                |a| matches!(a, Action::UpdateReferences(r) if r.service_account == "default")
            ),
            "only selected service accounts"
        );
        assert_eq!(plan1.grants["team-a"].selected_namespaces, 2);
        apply(&mut o, &plan1, 1000, 600);
        assert!(
            plan(&p, &o, 1001, 0.5).actions.is_empty(),
            "idempotent: nothing left to do"
        );
        assert_eq!(
            o.service_accounts[0].image_pull_secrets,
            ["user-own", "pullbroker-team-a"],
            "users' entries stay"
        );
    }

    #[test]
    fn rotates_at_the_fraction_of_real_lifetime() {
        let p = policy(&[("team-a", TEAM_A)], &[]);
        let o = Observed {
            namespaces: ns(&["team-a"]),
            service_accounts: vec![],
            managed_secrets: vec![ObservedSecret {
                namespace: "team-a".into(),
                name: "pullbroker-team-a".into(),
                grant: "team-a".into(),
                issued_at: 1000,
                expires_at: 1600,
                source_version: String::new(),
                static_copy: false,
                damaged: false,
            }],
            ..Default::default()
        };
        assert!(plan(&p, &o, 1299, 0.5).actions.is_empty());
        assert!(matches!(
            plan(&p, &o, 1300, 0.5).actions[..],
            [Action::IssueSecret(IssueSecret { rotation: true, .. })]
        ));
        assert!(
            matches!(
                plan(&p, &o, 5000, 0.9).actions[..],
                [Action::IssueSecret(IssueSecret { rotation: true, .. })]
            ),
            "expired: reissue"
        );
    }

    #[test]
    fn a_copy_that_outlives_a_shortened_ttl_is_reissued() {
        let o = |expires_at| Observed {
            namespaces: ns(&["team-a"]),
            managed_secrets: vec![ObservedSecret {
                namespace: "team-a".into(),
                name: "pullbroker-team-a".into(),
                grant: "team-a".into(),
                issued_at: 1000,
                expires_at,
                source_version: String::new(),
                static_copy: false,
                damaged: false,
            }],
            ..Default::default()
        };
        // Issued for the default 15 min; the grant now says 2 min.
        let short = policy(&[("team-a", &format!("{TEAM_A}ttl: 2m\n"))], &[]);
        assert!(matches!(
            plan(&short, &o(1900), 1001, 0.5).actions[..],
            [Action::IssueSecret(IssueSecret { rotation: true, .. })]
        ));
        // Reissued for 2 min: nothing more until its rotation.
        assert!(plan(&short, &o(1120), 1001, 0.5).actions.is_empty());
    }

    #[test]
    fn a_changed_source_reissues_and_a_static_copy_never_expires() {
        let secret = |static_copy, version: &str| ObservedSecret {
            namespace: "team-a".into(),
            name: "pullbroker-g".into(),
            grant: "g".into(),
            issued_at: 1000,
            expires_at: 1600,
            source_version: version.into(),
            static_copy,
            damaged: false,
        };
        let observed = |s: ObservedSecret, current: &str| Observed {
            namespaces: ns(&["team-a"]),
            managed_secrets: vec![s],
            source_versions: BTreeMap::from([("static".to_string(), current.to_string())]),
            ..Default::default()
        };
        let copy = "credential: static\nsubjects: {namespaces: [team-a], serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [sync]\nallowStaticCopy: true\n";
        let p = policy(&[("g", copy)], &[]);
        // Long past its nominal expiry, same source: nothing to write.
        assert!(plan(&p, &observed(secret(true, "v1"), "v1"), 99_999, 0.5)
            .actions
            .is_empty());
        // The central password changed: rewritten at once.
        assert!(matches!(
            plan(&p, &observed(secret(true, "v1"), "v2"), 1001, 0.5).actions[..],
            [Action::IssueSecret(IssueSecret { rotation: true, .. })]
        ));
        // A minted credential still rotates by time, and on a new key too.
        let p = policy(&[("g", &TEAM_A.replace("team-a-*", "x"))], &[]);
        let minted = |version: &str| Observed {
            namespaces: ns(&["team-a"]),
            managed_secrets: vec![ObservedSecret {
                name: "pullbroker-g".into(),
                ..secret(false, version)
            }],
            source_versions: BTreeMap::from([("corp".to_string(), "k1".to_string())]),
            ..Default::default()
        };
        assert!(plan(&p, &minted("k1"), 1001, 0.5).actions.is_empty());
        assert_eq!(
            plan(&p, &minted("k1"), 1300, 0.5).actions.len(),
            1,
            "half its lifetime"
        );
        assert_eq!(
            plan(&p, &minted("k0"), 1001, 0.5).actions.len(),
            1,
            "a new signing key"
        );
        assert_eq!(secret(true, "").due(0.5), None);
        assert_eq!(secret(false, "").due(0.5), Some(1300));
    }

    #[test]
    fn narrowing_and_deletion_clean_up_only_ours() {
        let p_before = policy(&[("team-a", TEAM_A)], &[]);
        let mut o = Observed {
            namespaces: ns(&["team-a", "team-a-dev"]),
            service_accounts: vec![
                sa("team-a", "app", &["user-own"]),
                sa("team-a-dev", "app", &["user-own"]),
            ],
            managed_secrets: vec![],
            ..Default::default()
        };
        let first = plan(&p_before, &o, 0, 0.5);
        apply(&mut o, &first, 0, 600);
        // The grant narrows to team-a only.
        let narrowed = policy(&[("team-a", "credential: corp\nsubjects: {namespaces: [team-a], serviceAccounts: [app]}\nrepositories: ['**']\npurposes: [sync]\n")], &[]);
        let second = plan(&narrowed, &o, 1, 0.5);
        assert_eq!(
            second.actions,
            vec![
                Action::UpdateReferences(ReferenceChange {
                    namespace: "team-a-dev".into(),
                    service_account: "app".into(),
                    add: vec![],
                    remove: vec!["pullbroker-team-a".into()],
                }),
                Action::DeleteSecret(SecretId {
                    namespace: "team-a-dev".into(),
                    name: "pullbroker-team-a".into()
                }),
            ]
        );
        apply(&mut o, &second, 1, 600);
        // The grant is deleted: everything of ours goes, users' entries stay.
        let none = policy(&[], &[]);
        let third = plan(&none, &o, 2, 0.5);
        apply(&mut o, &third, 2, 600);
        assert!(o.managed_secrets.is_empty());
        assert!(o
            .service_accounts
            .iter()
            .all(|s| s.image_pull_secrets == ["user-own"]));
        assert!(plan(&none, &o, 3, 0.5).actions.is_empty());
    }

    #[test]
    fn every_upstream_copy_needs_an_explicit_opt_in() {
        let o = Observed {
            namespaces: ns(&["team-a"]),
            ..Default::default()
        };
        for (credential, kind) in [
            ("static", UpstreamCopy::Password),
            ("ecr", UpstreamCopy::Token),
        ] {
            let copy = format!("credential: {credential}\nsubjects: {{namespaces: [team-a], serviceAccounts: ['*']}}\nrepositories: ['**']\npurposes: [sync]\n");
            let blocked = plan(&policy(&[("g", &copy)], &[]), &o, 0, 0.5);
            assert!(blocked.actions.is_empty(), "{credential}");
            let why = blocked.grants["g"].blocked.as_deref().unwrap();
            assert!(why.contains("allowUpstreamCopy"), "{why}");
            assert!(why.contains(kind.describe()), "{why}");
            assert!(secrets_for_account(&policy(&[("g", &copy)], &[]), "team-a", "app").is_empty());
            // The new field, and the deprecated one it generalises.
            for opt_in in ["allowUpstreamCopy", "allowStaticCopy"] {
                let p = policy(&[("g", &format!("{copy}{opt_in}: true\n"))], &[]);
                let allowed = plan(&p, &o, 0, 0.5);
                assert!(
                    matches!(
                        &allowed.actions[..],
                        [Action::IssueSecret(IssueSecret { static_copy, .. })] if *static_copy == (kind == UpstreamCopy::Password)
                    ),
                    "{credential} {opt_in}: {:?}",
                    allowed.actions
                );
                let report = &allowed.grants["g"];
                assert_eq!(
                    (report.static_copy, report.upstream_copy),
                    (kind == UpstreamCopy::Password, kind == UpstreamCopy::Token),
                    "flagged for status"
                );
                assert_eq!(secrets_for_account(&p, "team-a", "app"), [secret_name("g")]);
            }
        }
        // A token issuer mints per namespace: no opt-in needed.
        assert!(plan(&policy(&[("g", TEAM_A)], &[]), &o, 0, 0.5).grants["g"]
            .blocked
            .is_none());
    }

    #[test]
    fn label_selectors_and_terminating_namespaces() {
        let by_label = "credential: corp\nsubjects: {namespaceSelector: {matchLabels: {tenant: b}}, serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [sync]\n";
        let p = policy(
            &[("b", by_label)],
            &[("b-prod", "tenant", "b"), ("b-gone", "tenant", "b")],
        );
        let o = Observed {
            namespaces: vec![
                ObservedNamespace {
                    name: "b-prod".into(),
                    terminating: false,
                },
                ObservedNamespace {
                    name: "b-gone".into(),
                    terminating: true,
                },
                ObservedNamespace {
                    name: "c".into(),
                    terminating: false,
                },
            ],
            ..Default::default()
        };
        let issued: Vec<String> = plan(&p, &o, 0, 0.5)
            .actions
            .into_iter()
            .filter_map(|a| match a {
                Action::IssueSecret(i) => Some(i.namespace),
                _ => None,
            })
            .collect();
        assert_eq!(issued, ["b-prod"]);
    }

    #[test]
    fn a_damaged_secret_is_replaced_whole() {
        let p = policy(&[("team-a", TEAM_A)], &[]);
        let secret = |damaged| ObservedSecret {
            namespace: "team-a".into(),
            name: "pullbroker-team-a".into(),
            grant: "team-a".into(),
            issued_at: 1000,
            // The grant's default 15 min: not due at 1001.
            expires_at: 1900,
            source_version: String::new(),
            static_copy: false,
            damaged,
        };
        let observed = |damaged| Observed {
            namespaces: ns(&["team-a"]),
            service_accounts: vec![sa("team-a", "app", &["pullbroker-team-a"])],
            managed_secrets: vec![secret(damaged)],
            ..Default::default()
        };
        assert!(plan(&p, &observed(false), 1001, 0.5).actions.is_empty());
        assert!(matches!(
            &plan(&p, &observed(true), 1001, 0.5).actions[..],
            [Action::IssueSecret(IssueSecret {
                repair: true,
                rotation: false,
                ..
            })]
        ));
    }

    #[test]
    fn a_users_secret_with_our_naming_pattern_is_not_ours() {
        let p = policy(&[("team-a", TEAM_A)], &[]);
        let o = Observed {
            namespaces: ns(&["elsewhere"]),
            service_accounts: vec![sa("elsewhere", "app", &["pullbroker-team-a"])],
            managed_secrets: vec![],
            ..Default::default()
        };
        assert!(
            plan(&p, &o, 0, 0.5).actions.is_empty(),
            "no managed secret of that name here: hands off"
        );
    }

    #[test]
    fn multi_byte_and_odd_grant_names_give_valid_secret_names() {
        // 239 ASCII bytes then multi-byte characters: byte 240 falls inside one.
        for grant in [
            format!("{}é", "a".repeat(228)).repeat(2),
            "Team_A".into(),
            "x".repeat(229) + "-.-.-" + &"y".repeat(30),
            "ü".into(),
        ] {
            let name = secret_name(&grant);
            assert!(name.len() <= 253, "{name}");
            assert!(is_dns_subdomain(&name), "{name}");
            assert_ne!(
                secret_name(&format!("{grant}2")),
                name,
                "distinct grants, distinct names"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn secret_names_are_always_dns_subdomains(grant in "\\PC{0,300}") {
            let name = secret_name(&grant);
            proptest::prop_assert!(name.len() <= 253 && is_dns_subdomain(&name), "{}", name);
        }
    }

    #[test]
    fn long_grant_names_give_valid_secret_names() {
        let long = "g".repeat(300);
        let name = secret_name(&long);
        assert!(name.len() <= 253);
        assert_ne!(
            name,
            secret_name(&"g".repeat(301)),
            "distinct grants, distinct names"
        );
        assert_eq!(secret_name("team-a"), "pullbroker-team-a");
    }

    proptest! {
        /// Whatever the starting point, one plan carried out reaches a state
        /// where the next plan is empty, and users' own entries survive.
        #[test]
        fn one_plan_reaches_a_fixpoint(
            selected in proptest::collection::vec(any::<bool>(), 4),
            refs in proptest::collection::vec(proptest::collection::vec(0usize..4, 0..3), 4),
            stale in any::<bool>(),
        ) {
            let names = ["team-a", "team-a-x", "team-b", "other"];
            let grant = format!(
                "credential: corp\nsubjects: {{namespaces: [{}], serviceAccounts: [app]}}\nrepositories: ['**']\npurposes: [sync]\n",
                names.iter().zip(&selected).filter(|(_, s)| **s).map(|(n, _)| *n).chain(std::iter::once("none")).collect::<Vec<_>>().join(", ")
            );
            let p = policy(&[("g", &grant)], &[]);
            let pool = ["user-own", "pullbroker-g", "pullbroker-old", "other-secret"];
            let mut o = Observed {
                namespaces: ns(&names),
                service_accounts: names.iter().zip(&refs).map(|(n, r)| sa(n, "app", &r.iter().map(|i| pool[*i]).collect::<Vec<_>>())).collect(),
                managed_secrets: if stale { vec![ObservedSecret { namespace: "other".into(), name: "pullbroker-old".into(), grant: "old".into(), issued_at: 0, expires_at: 600, source_version: String::new(), static_copy: false, damaged: false }] } else { vec![] },
                ..Default::default()
            };
            let before: Vec<Vec<String>> = o.service_accounts.iter().map(|s| s.image_pull_secrets.iter().filter(|n| !n.starts_with("pullbroker-")).cloned().collect()).collect();
            let first = plan(&p, &o, 100, 0.5);
            apply(&mut o, &first, 100, 600);
            prop_assert!(plan(&p, &o, 101, 0.5).actions.is_empty());
            let after: Vec<Vec<String>> = o.service_accounts.iter().map(|s| s.image_pull_secrets.iter().filter(|n| !n.starts_with("pullbroker-")).cloned().collect()).collect();
            prop_assert_eq!(before, after);
        }

        /// A reference removal that fails between the plan and the delete
        /// never leaves an entry pointing at a deleted managed secret, and
        /// the next pass, once the API answers again, converges.
        #[test]
        fn a_failed_removal_keeps_its_secret_and_the_next_pass_converges(
            refs in proptest::collection::vec(proptest::collection::vec(0usize..3, 0..3), 3),
            failing in 0usize..3,
        ) {
            let names = ["team-a", "team-b", "other"];
            let p = policy(&[("g", "credential: corp\nsubjects: {namespaces: [team-a], serviceAccounts: [app]}\nrepositories: ['**']\npurposes: [sync]\n")], &[]);
            let pool = ["user-own", "pullbroker-g", "pullbroker-old"];
            let managed = |ns: &str, name: &str, grant: &str| ObservedSecret { namespace: ns.into(), name: name.into(), grant: grant.into(), issued_at: 0, expires_at: 600, source_version: String::new(), static_copy: false, damaged: false };
            let mut o = Observed {
                namespaces: ns(&names),
                service_accounts: names.iter().zip(&refs).map(|(n, r)| sa(n, "app", &r.iter().map(|i| pool[*i]).collect::<Vec<_>>())).collect(),
                // Every namespace holds both: `pullbroker-old` is wanted by no
                // grant, `pullbroker-g` only in team-a.
                managed_secrets: names.iter().flat_map(|n| [managed(n, "pullbroker-old", "old"), managed(n, "pullbroker-g", "g")]).collect(),
                ..Default::default()
            };
            let first = plan(&p, &o, 100, 0.5);
            apply_failing(&mut o, &first, 100, 600, Some((names[failing], "app")));
            for a in &o.service_accounts {
                for r in a.image_pull_secrets.iter().filter(|r| r.starts_with("pullbroker-")) {
                    prop_assert!(
                        o.managed_secrets.iter().any(|s| s.namespace == a.namespace && &s.name == r),
                        "{}/{} points at deleted {}", a.namespace, a.name, r
                    );
                }
            }
            let second = plan(&p, &o, 101, 0.5);
            apply(&mut o, &second, 101, 600);
            prop_assert!(plan(&p, &o, 102, 0.5).actions.is_empty());
        }
    }
}
