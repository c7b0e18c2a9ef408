//! One namespace's reconcile: observe (indexes + our own recent writes),
//! [`plan`](pullbroker_core::sync::plan), carry the actions out.
//!
//! Writes: a managed secret is written with server-side apply (field manager
//! `pullbroker`, forced: the object is ours alone). A service account's
//! `imagePullSecrets` is an atomic list for server-side apply, so only our
//! entries are added or removed, by a JSON patch guarded by a `test` of the
//! `resourceVersion` we read; on a conflict the account is read again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::ResourceExt;
use pullbroker_core::policy::Policy;
use pullbroker_core::seal::{self, SealedContent, SEAL};
use pullbroker_core::sync::{
    self, Action, IssueSecret, Observed, ObservedNamespace, ObservedSecret, ObservedServiceAccount,
    ReferenceChange, GRANT_LABEL, MANAGED_BY,
};
use pullbroker_core::time::UnixTime;
use serde_json::json;

use crate::context::Context;
use crate::Error;

pub const ISSUED_AT: &str = "pullbroker.dev/issued-at";
pub const EXPIRES_AT: &str = "pullbroker.dev/expires-at";
pub const CREDENTIAL: &str = "pullbroker.dev/credential";
pub const STATIC_COPY: &str = "pullbroker.dev/static-copy";
pub const SOURCE_VERSION: &str = "pullbroker.dev/source-version";

/// How long our own write is preferred over a cache that has not seen it yet.
const WRITE_MEMORY: Duration = Duration::from_secs(30);

/// What we last wrote to an object, until the watch cache shows it.
#[derive(Debug, Clone)]
pub(crate) enum Written {
    Secret(ObservedSecret),
    SecretDeleted,
    References(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct Mark {
    rv: Option<String>,
    what: Written,
    at: Instant,
}

pub(crate) type Marks = std::collections::HashMap<(&'static str, String, String), Mark>;

/// The controller's clock (wall time, seconds): the one every pass, status
/// and annotation reads.
pub fn now() -> i64 {
    UnixTime::from_system(std::time::SystemTime::now()).0
}

pub(crate) fn rfc3339(t: i64) -> String {
    UnixTime(t).rfc3339()
}

fn parse_time(s: Option<&String>) -> i64 {
    s.and_then(|s| UnixTime::parse_rfc3339(s).ok())
        .map_or(0, |t| t.0)
}

/// A managed secret as the plan sees it. Its times are trusted only because
/// its seal was checked ([`crate::seal`]): `damaged` says it was not intact.
/// Missing or unreadable times read as 0, which makes the plan reissue it.
pub fn observe_secret(meta: &ObjectMeta, damaged: bool) -> ObservedSecret {
    let ann = meta.annotations.clone().unwrap_or_default();
    ObservedSecret {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        grant: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(GRANT_LABEL))
            .cloned()
            .unwrap_or_default(),
        issued_at: parse_time(ann.get(ISSUED_AT)),
        expires_at: parse_time(ann.get(EXPIRES_AT)),
        source_version: ann.get(SOURCE_VERSION).cloned().unwrap_or_default(),
        static_copy: ann.get(STATIC_COPY).is_some_and(|v| v == "true"),
        damaged,
    }
}

fn pull_secret_names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

impl Context {
    /// The namespace's objects as the plan needs them, with our own recent
    /// writes laid over a cache that may not have seen them yet (so a
    /// reconcile triggered by our first write does not redo the second).
    /// Returns the resourceVersions to guard service-account patches with.
    fn observe(
        &self,
        ns: &Namespace,
        policy: &Policy,
        damaged: &BTreeSet<String>,
    ) -> (Observed, BTreeMap<String, Option<String>>) {
        let name = ns.name_any();
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Terminating");
        let mut marks = self.marks.lock().expect("poisoned");
        marks.retain(|_, m| m.at.elapsed() < WRITE_MEMORY);
        // A secret read just now and found damaged is newer than our write.
        marks.retain(|(kind, ns, n), _| !(*kind == "secret" && *ns == name && damaged.contains(n)));
        let mut fresh = |kind: &'static str, obj_name: &str, rv: Option<&String>| {
            let key = (kind, name.clone(), obj_name.to_string());
            match marks.get(&key) {
                Some(m) if m.rv.as_ref() == rv && rv.is_some() => {
                    marks.remove(&key);
                    None
                }
                Some(m) => Some(m.clone()),
                None => None,
            }
        };
        let mut rvs = BTreeMap::new();
        let mut service_accounts = Vec::new();
        for sa in self.service_accounts.in_namespace(&name) {
            let (refs, rv) =
                match fresh("sa", &sa.name_any(), sa.metadata.resource_version.as_ref()) {
                    Some(Mark {
                        what: Written::References(r),
                        rv,
                        ..
                    }) => (r, rv),
                    _ => (pull_secret_names(&sa), sa.metadata.resource_version.clone()),
                };
            rvs.insert(sa.name_any(), rv);
            service_accounts.push(ObservedServiceAccount {
                namespace: name.clone(),
                name: sa.name_any(),
                image_pull_secrets: refs,
            });
        }
        let mut managed_secrets = Vec::new();
        let mut seen = BTreeSet::new();
        for s in self.managed.in_namespace(&name) {
            seen.insert(s.name_any());
            // Read just now and not intact: newer than any write of ours.
            if damaged.contains(&s.name_any()) {
                managed_secrets.push(observe_secret(&s.metadata, true));
                continue;
            }
            match fresh(
                "secret",
                &s.name_any(),
                s.metadata.resource_version.as_ref(),
            ) {
                Some(Mark {
                    what: Written::SecretDeleted,
                    ..
                }) => {}
                Some(Mark {
                    what: Written::Secret(o),
                    ..
                }) => managed_secrets.push(o),
                _ => managed_secrets.push(observe_secret(&s.metadata, false)),
            }
        }
        // Secrets we wrote that the cache has not seen at all yet.
        for ((kind, ns_name, obj), m) in marks.iter() {
            if *kind == "secret" && *ns_name == name && !seen.contains(obj) {
                if let Written::Secret(o) = &m.what {
                    managed_secrets.push(o.clone());
                }
            }
        }
        (
            Observed {
                namespaces: vec![ObservedNamespace { name, terminating }],
                service_accounts,
                managed_secrets,
                source_versions: self.source_versions(policy),
            },
            rvs,
        )
    }

    fn mark(&self, kind: &'static str, ns: &str, name: &str, rv: Option<String>, what: Written) {
        self.marks.lock().expect("poisoned").insert(
            (kind, ns.to_string(), name.to_string()),
            Mark {
                rv,
                what,
                at: Instant::now(),
            },
        );
    }
}

/// Reconciles one namespace. Idempotent: a second run with nothing changed
/// writes nothing.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    ctx.wait_ready().await;
    let _running = ctx.metrics.running();
    let name = ns.name_any();
    let policy = ctx.policy(std::slice::from_ref(&*ns));
    let damaged = ctx.damaged(&name).await?;
    let (observed, rvs) = ctx.observe(&ns, &policy, &damaged);
    let now = now();
    let plan = sync::plan(&policy, &observed, now, ctx.settings.rotate_after);
    tracing::debug!(namespace = %name, service_accounts = observed.service_accounts.len(), managed = observed.managed_secrets.len(), actions = ?plan.actions, "plan");

    let mut next_due: Option<i64> = None;
    let mut due = |s: &ObservedSecret| {
        if let Some(at) = s.due(ctx.settings.rotate_after) {
            next_due = Some(next_due.map_or(at, |d: i64| d.min(at)));
        }
    };
    for s in &observed.managed_secrets {
        due(s);
    }
    // Each action stands alone: one grant whose source fails must not hold
    // up the others. The first error is returned at the end (backoff).
    let mut first_error: Option<Error> = None;
    let mut not_issued: BTreeSet<&str> = BTreeSet::new();
    let mut failed_removals: BTreeSet<(&str, &str)> = BTreeSet::new();
    // In the plan's order: issues, then reference changes (one write per
    // account), then — after the loop — the deletions still allowed.
    for action in &plan.actions {
        let result = match action {
            Action::IssueSecret(w) => {
                let source_version = observed.source_versions.get(&w.credential);
                match issue_secret(&ctx, &policy, now, w, source_version).await {
                    Ok(o) => {
                        due(&o);
                        Ok(())
                    }
                    // The namespace went into deletion after we observed
                    // it: nothing to create there, and no failure — its
                    // watch event brings the reconcile that lets it go.
                    Err(Error::NamespaceTerminating(ns)) => {
                        tracing::info!(namespace = %ns, secret = %w.name, "namespace is being deleted; secret not created");
                        not_issued.insert(&w.name);
                        Ok(())
                    }
                    Err(e) => {
                        not_issued.insert(&w.name);
                        Err(e)
                    }
                }
            }
            Action::UpdateReferences(change) => {
                let current = observed
                    .service_accounts
                    .iter()
                    .find(|s| s.name == change.service_account)
                    .map(|s| s.image_pull_secrets.clone())
                    .unwrap_or_default();
                let rv = rvs.get(change.service_account.as_str()).cloned().flatten();
                // Never point an account at a secret that could not be written.
                let add: Vec<&str> = change
                    .add
                    .iter()
                    .map(String::as_str)
                    .filter(|n| !not_issued.contains(n))
                    .collect();
                let result = update_references(&ctx, change, current, rv, &add).await;
                if let Err(e) = &result {
                    tracing::warn!(namespace = %name, service_account = %change.service_account, error = %e, "reference update failed; keeping the secrets it still points at");
                    failed_removals.extend(
                        change
                            .remove
                            .iter()
                            .map(|s| (change.namespace.as_str(), s.as_str())),
                    );
                }
                result
            }
            // After every reference change (`Plan::deletions`).
            Action::DeleteSecret(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(namespace = %name, error = %e, "action failed");
            first_error.get_or_insert(e);
        }
    }
    // Only now, and only secrets no account may still point at.
    for (namespace, secret) in plan.deletions(&failed_removals) {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let deleted = match api.delete(secret, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.secret_deletes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Error::Kube("delete secret", e)),
        };
        match deleted {
            Ok(()) => {
                ctx.mark("secret", namespace, secret, None, Written::SecretDeleted);
                tracing::info!(namespace = %namespace, secret = %secret, "removed pull secret");
            }
            Err(e) => {
                tracing::warn!(namespace = %name, error = %e, "action failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        ctx.status_dirty.notify_one();
        return Err(e);
    }
    if !plan.actions.is_empty() {
        ctx.status_dirty.notify_one();
    }
    ctx.update_failures(|f| f.remove(&name));
    ctx.metrics
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(match next_due {
        Some(at) => Requeue::requeue(
            UnixTime(now)
                .until(UnixTime(at))
                .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        ),
        None => Requeue::await_change(),
    })
}

/// Mints and writes one managed secret; returns it as the plan sees it.
async fn issue_secret(
    ctx: &Context,
    policy: &Policy,
    now: i64,
    w: &IssueSecret,
    source_version: Option<&String>,
) -> Result<ObservedSecret, Error> {
    let IssueSecret {
        namespace,
        name,
        grant,
        credential,
        ..
    } = w;
    let fail = |e: String| Error::Issue(grant.to_string(), namespace.to_string(), e);
    // Only a static copy reads a central Secret here, and only its own.
    let central_config = |name: &str| {
        let secret = ctx.central_secret(name)?;
        Some(secret.data.as_ref()?.get(".dockerconfigjson")?.0.clone())
    };
    let runtimes = ctx.runtimes(policy);
    let runtime = match runtimes.get(credential) {
        Some(Ok(runtime)) => runtime,
        Some(Err(e)) => return Err(fail(format!("RegistryCredential {credential:?}: {e}"))),
        None => {
            return Err(fail(format!(
                "RegistryCredential {credential:?} does not exist"
            )))
        }
    };
    // An exec source is refreshed (once, for every namespace) only when its
    // rotation is due.
    let current = runtime
        .current(credential, now, ctx.settings.rotate_after)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let issued = crate::issue::issue(policy, central_config, grant, namespace, now, &current)
        .map_err(fail)?;
    let mut annotations = BTreeMap::from([
        (ISSUED_AT.to_string(), rfc3339(issued.issued_at)),
        (EXPIRES_AT.to_string(), rfc3339(issued.expires_at)),
        (CREDENTIAL.to_string(), credential.to_string()),
    ]);
    if let Some(v) = source_version {
        annotations.insert(SOURCE_VERSION.into(), v.clone());
    }
    if w.static_copy {
        annotations.insert(STATIC_COPY.into(), "true".into());
        tracing::warn!(grant = %grant, namespace = %namespace, "copying a static upstream password (allowUpstreamCopy)");
    }
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (GRANT_LABEL.to_string(), grant.to_string()),
    ]);
    let data = BTreeMap::from([(".dockerconfigjson".to_string(), issued.dockerconfigjson)]);
    let type_ = "kubernetes.io/dockerconfigjson";
    let sealed = seal::seal(
        &ctx.seal,
        &SealedContent {
            namespace,
            name,
            type_,
            labels: &labels,
            annotations: &annotations,
            data: &data,
        },
    );
    annotations.insert(SEAL.to_string(), sealed);
    // No ownerReference to the grant, on purpose: garbage
    // collection would delete the secret before we removed the
    // service-account entries naming it, and without the secret
    // those entries can no longer be told from users' own.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let replace = |secret: Secret| {
        let api = api.clone();
        let pp = PostParams {
            field_manager: Some(ctx.settings.field_manager.clone()),
            ..Default::default()
        };
        async move {
            let written = api
                .replace(name, &pp, &secret)
                .await
                .map_err(|e| Error::Kube("replace secret", e))?;
            ctx.metrics.secret_replaces.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Error>(written)
        }
    };
    let written = if w.repair {
        replace(secret).await?
    } else {
        let applied = api
            .patch(
                name,
                &PatchParams::apply(&ctx.settings.field_manager).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|e| match is_namespace_terminating(&e) {
                true => Error::NamespaceTerminating(namespace.to_string()),
                false => Error::Kube("apply secret", e),
            })?;
        ctx.metrics.secret_applies.fetch_add(1, Ordering::Relaxed);
        // Apply keeps fields other managers own (a key a tenant added to a
        // secret it had also unlabelled): what we wrote must be all there is.
        if crate::seal::intact(&ctx.seal, &applied) {
            applied
        } else {
            tracing::warn!(namespace, secret = %name, "managed secret kept someone else's fields; replacing it");
            replace(secret).await?
        }
    };
    let o = observe_secret(&written.metadata, false);
    ctx.trust(namespace, name, written.metadata.resource_version.clone());
    ctx.mark(
        "secret",
        namespace,
        name,
        written.metadata.resource_version.clone(),
        Written::Secret(o.clone()),
    );
    ctx.metrics.issued(w.rotation);
    tracing::info!(grant = %grant, namespace = %namespace, secret = %name, rotation = w.rotation, repair = w.repair, expires_at = %rfc3339(issued.expires_at), "issued pull secret");
    Ok(o)
}

/// Adds and removes only our entries of one service account's
/// `imagePullSecrets`, guarded by its resourceVersion; re-reads on conflict.
async fn update_references(
    ctx: &Context,
    change: &ReferenceChange,
    mut current: Vec<String>,
    mut rv: Option<String>,
    add: &[&str],
) -> Result<(), Error> {
    let (ns, sa) = (change.namespace.as_str(), change.service_account.as_str());
    let remove: Vec<&str> = change.remove.iter().map(String::as_str).collect();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    for _ in 0..5 {
        let mut next: Vec<String> = current
            .iter()
            .filter(|n| !remove.contains(&n.as_str()))
            .cloned()
            .collect();
        for a in add {
            if !next.iter().any(|n| n == a) {
                next.push(a.to_string());
            }
        }
        if next == current {
            return Ok(());
        }
        let list: Vec<_> = next.iter().map(|n| json!({"name": n})).collect();
        let patch = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/imagePullSecrets", "value": list},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("valid JSON patch");
        tracing::debug!(namespace = %ns, service_account = %sa, ?rv, "patching imagePullSecrets");
        match api
            .patch(sa, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(written) => {
                ctx.metrics
                    .serviceaccount_patches
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(namespace = %ns, service_account = %sa, refs = ?pull_secret_names(&written), "updated imagePullSecrets");
                ctx.mark(
                    "sa",
                    ns,
                    sa,
                    written.metadata.resource_version.clone(),
                    Written::References(next),
                );
                return Ok(());
            }
            // Someone changed it since we read it (409, or 422 from the
            // failed `test`): read again and redo only our part.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                let Some(fresh) = api
                    .get_opt(sa)
                    .await
                    .map_err(|e| Error::Kube("get serviceaccount", e))?
                else {
                    return Ok(());
                };
                current = pull_secret_names(&fresh);
                rv = fresh.metadata.resource_version.clone();
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(Error::Kube("patch serviceaccount", e)),
        }
    }
    Err(Error::Contended(ns.to_string(), sa.to_string()))
}

/// Backoff on errors: 1 s doubling to 5 min, per namespace.
/// kube-apiserver's refusal to create in a namespace being deleted (403,
/// cause `NamespaceTerminating`; `../shared/kubernetes-facts.md`).
fn is_namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403
        && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

pub fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Context>) -> Requeue {
    let name = ns.name_any();
    // A reconcile that was running when its namespace went is not counted:
    // the delete event that would forget the count has passed already.
    let exists = ctx
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(&name))
        .is_some();
    let n = ctx.update_failures(|f| {
        if !exists {
            return f.remove(&name).unwrap_or(0) + 1;
        }
        let n = f.entry(name.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    });
    let delay = Duration::from_secs((1u64 << (n - 1).min(9)).min(300));
    tracing::warn!(namespace = %name, error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.failed();
    Requeue::requeue(delay)
}

/// Reconcile against a scripted API (controller-rs style): each request the
/// pass must make, in order, and nothing else.
#[cfg(test)]
pub(crate) mod tests {
    use kube::api::PartialObjectMetaExt as _;
    use serde_json::{json, Value};

    use super::*;
    use crate::context::Cached;
    use crate::mock_api::{echo, status, step, Scripted};
    use crate::Settings;

    const SA: &str = "/api/v1/namespaces/team-a/serviceaccounts/app";

    #[test]
    fn a_create_refused_in_a_terminating_namespace_is_told_from_other_403s() {
        // As kube-apiserver v1.36.2 answered (kubernetes-facts.md).
        let terminating: kube::core::Status = object(
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"y\" is forbidden: unable to create new content in namespace facts3 because it is being terminated","reason":"Forbidden","details":{"name":"y","kind":"configmaps","causes":[{"reason":"NamespaceTerminating","message":"namespace facts3 is being terminated","field":"metadata.namespace"}]},"code":403}),
        );
        assert!(is_namespace_terminating(&kube::Error::Api(Box::new(
            terminating
        ))));
        let rbac: kube::core::Status = object(
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets is forbidden: User \"x\" cannot create resource \"secrets\"","reason":"Forbidden","details":{"kind":"secrets"},"code":403}),
        );
        assert!(!is_namespace_terminating(&kube::Error::Api(Box::new(rbac))));
    }

    pub(crate) fn object<K: serde::de::DeserializeOwned>(v: Value) -> K {
        serde_json::from_value(v).expect("a valid object")
    }

    fn team_a() -> Namespace {
        object(json!({"metadata": {"name": "team-a", "resourceVersion": "1"}}))
    }

    fn app(refs: &[&str]) -> ServiceAccount {
        let refs: Vec<Value> = refs.iter().map(|n| json!({"name": n})).collect();
        object(
            json!({"metadata": {"name": "app", "namespace": "team-a", "resourceVersion": "10"},
            "imagePullSecrets": refs}),
        )
    }

    /// A static credential copied (on opt-in) to `team-a/app`.
    pub(crate) fn static_grant() -> Cached {
        let config = r#"{"auths":{"hub.example":{"username":"bot","password":"pw"}}}"#;
        Cached {
            namespaces: vec![team_a()],
            credentials: vec![object(json!({"apiVersion": "pullbroker.dev/v1alpha1",
                "kind": "RegistryCredential", "metadata": {"name": "hub"},
                "spec": {"registries": ["hub.example"], "source": {"secretRef": {"name": "hub-auth"}}}}))],
            grants: vec![object(
                json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant",
                "metadata": {"name": "hub"}, "spec": {"credential": "hub", "allowStaticCopy": true,
                "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
                "repositories": ["**"], "purposes": ["sync"]}}),
            )],
            central: vec![object(
                json!({"metadata": {"name": "hub-auth", "namespace": "pullbroker-system",
                "resourceVersion": "3"}, "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64(config)}}),
            )],
            service_accounts: vec![app(&[])],
            ..Default::default()
        }
    }

    fn base64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// A secret we issued for a grant that no longer exists, still named by
    /// `team-a/app` beside the user's own entry.
    fn orphaned() -> Cached {
        let meta = ObjectMeta {
            name: Some("pullbroker-old".into()),
            namespace: Some("team-a".into()),
            resource_version: Some("5".into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (GRANT_LABEL.to_string(), "old".to_string()),
            ])),
            ..Default::default()
        };
        Cached {
            namespaces: vec![team_a()],
            service_accounts: vec![app(&["pullbroker-old", "users-own"])],
            managed: vec![meta.into_response_partial::<Secret>()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_secret_is_written_before_an_account_names_it() {
        let (client, api) = Scripted::client(vec![
            echo(
                "PATCH",
                "/api/v1/namespaces/team-a/secrets/pullbroker-hub",
                "11",
            ),
            step(
                "PATCH",
                SA,
                200,
                serde_json::to_value(app(&["pullbroker-hub"])).unwrap(),
            ),
        ]);
        let ctx = Context::for_test(client, Settings::default(), static_grant());
        reconcile(Arc::new(team_a()), ctx.clone())
            .await
            .expect("reconciled");
        let sent = api.sent();
        api.done();
        let secret = &sent[0];
        assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
        assert_eq!(secret["metadata"]["labels"][GRANT_LABEL], "hub");
        assert_eq!(secret["metadata"]["annotations"][CREDENTIAL], "hub");
        assert!(secret["metadata"]["annotations"][SEAL].is_string());
        assert_eq!(
            sent[1],
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "10"},
                {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "pullbroker-hub"}]},
            ]),
            "guarded by the account's resourceVersion"
        );
        assert_eq!(ctx.metrics.secret_applies.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_reference_removal_keeps_the_secret_it_names() {
        // The DELETE is not scripted: sending it fails the test.
        let (client, api) =
            Scripted::client(vec![step("PATCH", SA, 500, status(500, "etcd down"))]);
        let ctx = Context::for_test(client, Settings::default(), orphaned());
        ctx.trust("team-a", "pullbroker-old", Some("5".into()));
        let err = reconcile(Arc::new(team_a()), ctx).await.unwrap_err();
        assert!(
            matches!(err, Error::Kube("patch serviceaccount", _)),
            "{err}"
        );
        api.done();
    }

    #[tokio::test]
    async fn a_secret_is_deleted_once_no_account_names_it() {
        let (client, api) = Scripted::client(vec![
            step(
                "PATCH",
                SA,
                200,
                serde_json::to_value(app(&["users-own"])).unwrap(),
            ),
            step(
                "DELETE",
                "/api/v1/namespaces/team-a/secrets/pullbroker-old",
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
        ]);
        let ctx = Context::for_test(client, Settings::default(), orphaned());
        ctx.trust("team-a", "pullbroker-old", Some("5".into()));
        reconcile(Arc::new(team_a()), ctx.clone())
            .await
            .expect("reconciled");
        let sent = api.sent();
        api.done();
        assert_eq!(
            sent[0][1],
            json!({"op": "add", "path": "/imagePullSecrets", "value": [{"name": "users-own"}]}),
            "only our entry goes"
        );
        assert_eq!(ctx.metrics.secret_deletes.load(Ordering::Relaxed), 1);
    }
}
