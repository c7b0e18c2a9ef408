//! Namespace lifecycle, as kube-apiserver's NamespaceLifecycle admission
//! plugin and kube-controller-manager's namespace controller do it
//! (`../shared/kubernetes-facts.md`, "Namespace lifecycle", v1.36.2):
//!
//! - creating in a namespace that does not exist is 404 `namespaces "x" not
//!   found`; in one being terminated 403 `NamespaceTerminating` (POST and
//!   server-side apply alike); updates and patches of what is already there
//!   still succeed;
//! - `DELETE` of a namespace returns at once with it `Terminating`
//!   (`deletionTimestamp`, `spec.finalizers: [kubernetes]`);
//! - the namespace controller then deletes its contents (objects with
//!   finalizers get a `deletionTimestamp` and stay, the namespace's
//!   conditions saying so) and removes the namespace once it is empty.
//!
//! The controller runs every [`SWEEP`] (the real one took ~4 s), or only when
//! a test asks ([`super::FakeApi::set_namespace_controller`],
//! [`super::FakeApi::run_namespace_controller`]) so that the terminating
//! window can be held open exactly as long as a test needs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{key, now, rfc3339, status, Inner, Route, Store};

/// How often the automatic namespace controller looks for work.
pub(super) const SWEEP: Duration = Duration::from_millis(100);

const NAMESPACES: &str = "v1/namespaces";

impl Inner {
    /// The namespace a create in `r` goes into, refused as kube-apiserver
    /// refuses it: 404 when it does not exist, 403 while it terminates.
    pub(super) fn admit_create(&self, s: &Store, r: &Route, name: &str) -> Option<Response> {
        if !r.resource.namespaced {
            return None;
        }
        let ns = &r.namespace;
        let Some(namespace) = s
            .objects
            .get(&(NAMESPACES.to_string(), String::new(), ns.clone()))
        else {
            return Some(status(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
                json!({"name": ns, "kind": "namespaces"}),
            ));
        };
        if terminating(namespace) {
            let plural = r.resource.plural;
            return Some(status(
                403,
                "Forbidden",
                format!("{plural} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"),
                json!({"name": name, "kind": plural, "causes": [{"reason": "NamespaceTerminating",
                    "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
            ));
        }
        None
    }

    /// `DELETE` of a namespace: `Terminating` at once, answered with the
    /// object; the contents go when the namespace controller next runs.
    pub(super) fn terminate_namespace(&self, s: &mut Store, r: &Route, mut ns: Value) -> Response {
        if !terminating(&ns) {
            ns["metadata"]["deletionTimestamp"] = json!(rfc3339(now()));
            ns["spec"]["finalizers"] = json!(["kubernetes"]);
            ns["status"]["phase"] = json!("Terminating");
            ns = self.commit(s, r, "MODIFIED", ns);
        }
        axum::Json(ns).into_response()
    }

    /// One pass of the namespace controller over every terminating
    /// namespace: delete what can be deleted, mark what finalizers hold,
    /// remove the namespace once nothing is left.
    pub(super) fn sweep_namespaces(&self, s: &mut Store) {
        let dying: Vec<Value> = s
            .objects
            .iter()
            .filter(|((res, _, _), o)| res == NAMESPACES && terminating(o))
            .map(|(_, o)| o.clone())
            .collect();
        for ns in dying {
            let name = ns["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let contents: Vec<((String, String, String), Value)> = s
                .objects
                .iter()
                .filter(|((res, n, _), _)| *n == name && res != NAMESPACES)
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
            for ((res, _, _), mut obj) in contents {
                let Some(route) = self.route_of(&res, &name) else {
                    continue;
                };
                let held = obj["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if held {
                    *remaining.entry(route.resource.plural).or_default() += 1;
                    if obj["metadata"]["deletionTimestamp"].is_null() {
                        obj["metadata"]["deletionTimestamp"] = json!(rfc3339(now()));
                        self.commit(s, &route, "MODIFIED", obj);
                    }
                    continue;
                }
                let uid = obj["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.commit(s, &route, "DELETED", obj);
                self.collect_garbage(s, &uid);
            }
            let Some(ns_route) = self.route_of(NAMESPACES, "") else {
                continue;
            };
            if remaining.is_empty() {
                self.commit(s, &ns_route, "DELETED", ns);
                continue;
            }
            let conditions = content_remaining(&remaining);
            if ns["status"]["conditions"] != conditions {
                let mut ns = ns;
                ns["status"]["conditions"] = conditions;
                self.commit(s, &ns_route, "MODIFIED", ns);
            }
        }
    }

    /// A route for a stored resource key (`v1/secrets`) in namespace `ns`.
    fn route_of(&self, res: &str, ns: &str) -> Option<Route> {
        let resource = self
            .resources
            .iter()
            .find(|r| format!("{}/{}", r.api_version(), r.plural) == res)?
            .clone();
        Some(Route {
            resource,
            namespace: ns.to_string(),
            name: None,
            sub: None,
        })
    }
}

/// Whether a namespace object is being terminated.
pub(super) fn terminating(ns: &Value) -> bool {
    !ns["metadata"]["deletionTimestamp"].is_null()
}

/// Whether a route is the namespace resource itself.
pub(super) fn is_namespace(r: &Route) -> bool {
    key(r) == NAMESPACES
}

/// The conditions a real namespace shows while finalizers hold content.
fn content_remaining(kinds: &BTreeMap<&str, usize>) -> Value {
    let at = rfc3339(now());
    let names: Vec<String> = kinds
        .iter()
        .map(|(k, n)| format!("{k}. has {n} resource instances"))
        .collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at});
    json!([
        condition(
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered"
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed"
        ),
        condition(
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization"
        ),
        condition(
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            &format!("Some resources are remaining: {}", names.join(", "))
        ),
        condition(
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            "Some content in the namespace has finalizers remaining"
        ),
    ])
}
