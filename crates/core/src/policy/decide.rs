//! The one decision every consumer asks: may this service account use a
//! credential for this repository, for this purpose — and why (not)?
//! Default deny; an allow names the grant that allowed it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::glob::{name_matches, registry_matches, repository_matches};
use super::model::{PullGrantSpec, Purpose, RegistryCredentialSpec};

/// A named document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    pub name: String,
    pub spec: T,
}

/// A Kubernetes service account identity — or, with an empty
/// `service_account`, a whole namespace: what a synced pull secret stands for,
/// since any pod of its namespace can name it. Only `sync` decisions accept a
/// whole namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub namespace: String,
    pub service_account: String,
}

impl Subject {
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        Subject {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// A whole namespace (the holder of a synced pull secret).
    pub fn namespace(namespace: impl Into<String>) -> Self {
        Subject::new(namespace, "")
    }

    pub fn is_namespace(&self) -> bool {
        self.service_account.is_empty()
    }

    /// Parses `system:serviceaccount:NAMESPACE:NAME`.
    pub fn parse_username(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("system:serviceaccount:").ok_or_else(|| {
            format!(
                "{s:?} is not a service account (expected system:serviceaccount:NAMESPACE:NAME)"
            )
        })?;
        match rest.split_once(':') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
                Ok(Subject::new(ns, name))
            }
            _ => Err(format!(
                "{s:?} is not a service account (expected system:serviceaccount:NAMESPACE:NAME)"
            )),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_namespace() {
            // Kubernetes' group of every service account of a namespace.
            return write!(f, "system:serviceaccounts:{}", self.namespace);
        }
        write!(
            f,
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// What is being accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An image's registry and repository (exchange, resolve, can-i).
    Image {
        registry: &'a str,
        repository: &'a str,
    },
    /// A repository under a known credential (the registry token server knows
    /// the credential from the `service` parameter, not the registry host).
    Credential {
        credential: &'a str,
        repository: &'a str,
    },
}

impl Target<'_> {
    fn repository(&self) -> &str {
        match self {
            Target::Image { repository, .. } | Target::Credential { repository, .. } => repository,
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Image {
                registry,
                repository,
            } => write!(f, "{registry}/{repository}"),
            Target::Credential {
                credential,
                repository,
            } => write!(f, "{repository} (credential {credential})"),
        }
    }
}

/// A question for [`Policy::decide`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub subject: &'a Subject,
    pub purpose: Purpose,
    pub target: Target<'a>,
    /// Resolve on behalf of this namespace (the subject is a controller).
    pub on_behalf_of: Option<&'a str>,
    /// Repository globs from the workload's own annotation: they can only
    /// narrow what grants allow, never widen it.
    pub narrowed_to: Option<&'a [String]>,
}

/// The answer, with its reason. Only an allow names a credential, so no
/// caller can read one from a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny { reason: String },
}

/// What an allow grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub grant: String,
    pub credential: String,
    /// Longest lifetime of anything issued for this decision.
    pub ttl: Duration,
    pub reason: String,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Why: the grant that allowed, or why each grant did not.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow(a) => &a.reason,
            Decision::Deny { reason } => reason,
        }
    }

    pub fn allow(&self) -> Option<&Allowed> {
        match self {
            Decision::Allow(a) => Some(a),
            Decision::Deny { .. } => None,
        }
    }

    /// The allow, or the denial's reason.
    pub fn into_allow(self) -> Result<Allowed, String> {
        match self {
            Decision::Allow(a) => Ok(a),
            Decision::Deny { reason } => Err(reason),
        }
    }
}

/// What is wrong with one document of a policy. Statuses find theirs by
/// `kind` and `name`, never by parsing the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: DocumentKind,
    pub name: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    RegistryCredential,
    PullGrant,
}

impl Problem {
    pub fn credential(name: &str, message: impl Into<String>) -> Self {
        Problem {
            kind: DocumentKind::RegistryCredential,
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn grant(name: &str, message: impl Into<String>) -> Self {
        Problem {
            kind: DocumentKind::PullGrant,
            name: name.into(),
            message: message.into(),
        }
    }

    /// Whether it is about this document.
    pub fn is_about(&self, kind: DocumentKind, name: &str) -> bool {
        self.kind == kind && self.name == name
    }
}

impl fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocumentKind::RegistryCredential => "RegistryCredential",
            DocumentKind::PullGrant => "PullGrant",
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.kind, self.name, self.message)
    }
}

/// Credentials, grants and the namespaces' operator-controlled labels.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    credentials: BTreeMap<String, RegistryCredentialSpec>,
    grants: Vec<Named<PullGrantSpec>>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Policy {
    /// Builds a policy. Invalid documents are left out and reported: an
    /// invalid grant must never widen access, and a broken one must not stop
    /// the valid ones from working.
    pub fn new(
        credentials: Vec<Named<RegistryCredentialSpec>>,
        grants: Vec<Named<PullGrantSpec>>,
        namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    ) -> (Policy, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut creds = BTreeMap::new();
        for c in credentials {
            match c.spec.validate() {
                Ok(()) => {
                    if creds.insert(c.name.clone(), c.spec).is_some() {
                        problems.push(Problem::credential(&c.name, "is defined twice"));
                    }
                }
                Err(e) => problems.push(Problem::credential(&c.name, e)),
            }
        }
        let mut valid = Vec::new();
        for g in grants {
            match g.spec.validate() {
                Ok(()) if !creds.contains_key(&g.spec.credential) => problems.push(Problem::grant(
                    &g.name,
                    format!("credential {:?} does not exist", g.spec.credential),
                )),
                Ok(()) => valid.push(g),
                Err(e) => problems.push(Problem::grant(&g.name, e)),
            }
        }
        valid.sort_by(|a, b| a.name.cmp(&b.name));
        (
            Policy {
                credentials: creds,
                grants: valid,
                namespace_labels,
            },
            problems,
        )
    }

    /// This policy with `credentials` and `grants` applied, the namespaces'
    /// labels kept: what the cluster would decide once they are (`pullbroker
    /// adopt`'s proof). A document named like one the policy has replaces
    /// it, as applying it would. Problems are those of every document, as
    /// in [`Policy::new`].
    pub fn extended(
        &self,
        credentials: Vec<Named<RegistryCredentialSpec>>,
        grants: Vec<Named<PullGrantSpec>>,
    ) -> (Policy, Vec<Problem>) {
        let mut creds: BTreeMap<String, RegistryCredentialSpec> = self.credentials.clone();
        creds.extend(credentials.into_iter().map(|c| (c.name, c.spec)));
        let mut all: BTreeMap<String, PullGrantSpec> = self
            .grants
            .iter()
            .map(|g| (g.name.clone(), g.spec.clone()))
            .collect();
        all.extend(grants.into_iter().map(|g| (g.name, g.spec)));
        Policy::new(
            creds
                .into_iter()
                .map(|(name, spec)| Named { name, spec })
                .collect(),
            all.into_iter()
                .map(|(name, spec)| Named { name, spec })
                .collect(),
            self.namespace_labels.clone(),
        )
    }

    pub fn credentials(&self) -> &BTreeMap<String, RegistryCredentialSpec> {
        &self.credentials
    }

    pub fn grants(&self) -> &[Named<PullGrantSpec>] {
        &self.grants
    }

    /// Whether `grant` names `subject` among its subjects: its namespace
    /// selected (by name glob or label selector) and, for a service account,
    /// its name matched (a namespace subject — a synced secret's holder —
    /// needs its namespace only). **The one subject matcher**: `decide`,
    /// sync's choice of secrets and references, admission's pull secrets and
    /// the audit page all ask it, so none can disagree with another.
    pub fn selects(&self, grant: &PullGrantSpec, subject: &Subject) -> bool {
        self.subject_miss(grant, subject).is_none()
    }

    /// Why `grant` does not name `subject`, if it does not.
    fn subject_miss(&self, grant: &PullGrantSpec, subject: &Subject) -> Option<String> {
        if !self.selects_namespace(grant, &subject.namespace) {
            return Some(format!("namespace {} is not a subject", subject.namespace));
        }
        if !subject.is_namespace()
            && !grant
                .subjects
                .service_accounts
                .iter()
                .any(|p| name_matches(p, &subject.service_account))
        {
            return Some(format!(
                "service account {} is not a subject",
                subject.service_account
            ));
        }
        None
    }

    /// Does `grant` select namespace `ns` (by name glob or label selector)?
    fn selects_namespace(&self, grant: &PullGrantSpec, ns: &str) -> bool {
        grant
            .subjects
            .namespaces
            .iter()
            .any(|p| name_matches(p, ns))
            || grant
                .subjects
                .namespace_selector
                .as_ref()
                .is_some_and(|sel| {
                    // A namespace we know nothing about has no labels.
                    let empty = BTreeMap::new();
                    sel.matches(self.namespace_labels.get(ns).unwrap_or(&empty))
                })
    }

    /// The credential that would serve `registry`, by name order.
    pub fn credential_for_registry(
        &self,
        registry: &str,
    ) -> Option<(&str, &RegistryCredentialSpec)> {
        self.credentials
            .iter()
            .find(|(_, c)| c.registries.iter().any(|p| registry_matches(p, registry)))
            .map(|(n, c)| (n.as_str(), c))
    }

    /// Decides a request. Grants are tried in name order; the first that
    /// allows wins. A denial lists why each grant did not apply.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let deny = |reason: String| Decision::Deny { reason };
        let repository = req.target.repository();
        if let Some(narrow) = req.narrowed_to {
            if !narrow.iter().any(|p| repository_matches(p, repository)) {
                return deny(format!(
                    "the workload's own annotation narrows access to {narrow:?}, which excludes {repository}"
                ));
            }
        }
        if req.on_behalf_of.is_some() && req.purpose != Purpose::Resolve {
            return deny(format!(
                "acting on behalf of a namespace is only possible for resolve, not {}",
                req.purpose
            ));
        }
        let mut misses = Vec::new();
        for g in &self.grants {
            match self.grant_allows(g, req) {
                Ok(()) => {
                    return Decision::Allow(Allowed {
                        grant: g.name.clone(),
                        credential: g.spec.credential.clone(),
                        ttl: g.spec.ttl(),
                        reason: format!(
                            "allowed by PullGrant {:?} (credential {:?})",
                            g.name, g.spec.credential
                        ),
                    })
                }
                Err(Some(miss)) => misses.push(format!("{}: {miss}", g.name)),
                Err(None) => {}
            }
        }
        let who = match req.on_behalf_of {
            Some(ns) => format!("{} on behalf of namespace {ns}", req.subject),
            None => req.subject.to_string(),
        };
        let mut reason = format!(
            "no PullGrant allows {} of {} for {who}",
            req.purpose, req.target
        );
        if misses.is_empty() {
            reason.push_str(" (no grant covers this registry or credential)");
        } else {
            let shown: Vec<&str> = misses.iter().take(5).map(String::as_str).collect();
            reason.push_str(&format!(" — {}", shown.join("; ")));
            if misses.len() > 5 {
                reason.push_str(&format!("; and {} more", misses.len() - 5));
            }
        }
        deny(reason)
    }

    /// `Ok` if `g` allows `req`; `Err(Some(why))` for a near miss worth
    /// reporting; `Err(None)` when the grant is about something else entirely.
    fn grant_allows(
        &self,
        g: &Named<PullGrantSpec>,
        req: &Request<'_>,
    ) -> Result<(), Option<String>> {
        let spec = &g.spec;
        let cred = self.credentials.get(&spec.credential).ok_or(None)?;
        match req.target {
            Target::Image { registry, .. } => {
                if !cred
                    .registries
                    .iter()
                    .any(|p| registry_matches(p, registry))
                {
                    return Err(None);
                }
            }
            Target::Credential { credential, .. } => {
                if spec.credential != credential {
                    return Err(None);
                }
            }
        }
        if !spec.purposes.contains(&req.purpose) {
            return Err(Some(format!("purpose {} is not granted", req.purpose)));
        }
        let repository = req.target.repository();
        if !spec
            .repositories
            .iter()
            .any(|p| repository_matches(p, repository))
        {
            return Err(Some(format!(
                "repository {repository} is not in {:?}",
                spec.repositories
            )));
        }
        match req.on_behalf_of {
            None => {
                if let Some(miss) = self.subject_miss(spec, req.subject) {
                    return Err(Some(miss));
                }
                // A synced secret serves its whole namespace; the grant's
                // serviceAccounts only say whose imagePullSecrets carry it.
                if req.subject.is_namespace() && req.purpose != Purpose::Sync {
                    return Err(Some(format!(
                        "a whole namespace may only hold sync credentials, not {}",
                        req.purpose
                    )));
                }
            }
            Some(ns) => {
                if let Some(miss) = self.subject_miss(spec, &Subject::namespace(ns)) {
                    return Err(Some(miss));
                }
                let caller = format!("{}/{}", req.subject.namespace, req.subject.service_account);
                let is_resolver = spec.resolvers.iter().any(|r| {
                    let (ns_glob, sa_glob) = r.split_once('/').unwrap_or((r, ""));
                    name_matches(ns_glob, &req.subject.namespace)
                        && name_matches(sa_glob, &req.subject.service_account)
                });
                if !is_resolver {
                    return Err(Some(format!("{caller} is not listed in resolvers")));
                }
            }
        }
        Ok(())
    }
}
