//! Admission digest pinning, the pure half: what an `AdmissionReview`
//! (`admission.k8s.io/v1`) asks, where a kind keeps its pod spec, which
//! images to pin, and the JSON Patch that pins them. The broker's admission
//! module decides (policy), resolves (registry) and answers; everything that
//! can be decided from the request alone is here, without I/O.
//!
//! Rules (see `docs/admission.md`):
//! - Only the object a user writes is pinned, never what a controller derives
//!   from it: an object whose controlling owner is a kind we pin is left
//!   alone (k8s-digester's ReplicaSet storm came from pinning children).
//! - Images already by digest are left alone, except on UPDATE when the user
//!   changed the tag in front of an old digest (the tag is then re-resolved).
//! - On UPDATE, an image written back unpinned but otherwise unchanged (the
//!   same `name:tag` the old object had pinned) gets its old digest again
//!   without asking the registry: an update that changes nothing else must
//!   not move a digest.

use serde_json::{json, Value};

use crate::reference::Reference;

/// The only AdmissionReview version we speak (`admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What the API server asked, as far as pinning cares.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: Kind,
    pub operation: Operation,
    pub namespace: String,
    /// `name`, or `generateName` for objects created by controllers.
    pub name: String,
    pub object: Value,
    pub old_object: Option<Value>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    /// DELETE and CONNECT: nothing to pin.
    Other,
}

/// The kinds whose pod templates we pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pod,
    PodTemplate,
    ReplicationController,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    KnativeService,
    KnativeConfiguration,
    KnativeRevision,
}

impl Kind {
    /// Every kind, for the webhook configuration's rules.
    pub const ALL: [Kind; 12] = [
        Kind::Pod,
        Kind::PodTemplate,
        Kind::ReplicationController,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
        Kind::CronJob,
        Kind::KnativeService,
        Kind::KnativeConfiguration,
        Kind::KnativeRevision,
    ];

    /// `(group, version, kind, resource)`.
    pub fn gvkr(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::PodTemplate => ("", "v1", "PodTemplate", "podtemplates"),
            Kind::ReplicationController => {
                ("", "v1", "ReplicationController", "replicationcontrollers")
            }
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::ReplicaSet => ("apps", "v1", "ReplicaSet", "replicasets"),
            Kind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
            Kind::DaemonSet => ("apps", "v1", "DaemonSet", "daemonsets"),
            Kind::Job => ("batch", "v1", "Job", "jobs"),
            Kind::CronJob => ("batch", "v1", "CronJob", "cronjobs"),
            Kind::KnativeService => ("serving.knative.dev", "v1", "Service", "services"),
            Kind::KnativeConfiguration => (
                "serving.knative.dev",
                "v1",
                "Configuration",
                "configurations",
            ),
            Kind::KnativeRevision => ("serving.knative.dev", "v1", "Revision", "revisions"),
        }
    }

    /// The kind by API group and kind name (any version: `matchPolicy:
    /// Equivalent` may convert, and the pod spec's place is the same).
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let (g, _, n, _) = k.gvkr();
            g == group && n == kind
        })
    }

    /// JSON Pointer to the pod spec (Knative Revisions hold it at `spec`).
    pub fn pod_spec_pointer(self) -> &'static str {
        match self {
            Kind::Pod | Kind::KnativeRevision => "/spec",
            Kind::PodTemplate => "/template/spec",
            Kind::CronJob => "/spec/jobTemplate/spec/template/spec",
            _ => "/spec/template/spec",
        }
    }
}

/// Why a request could not be read. Never quotes the request's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(String);

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, ReviewError> {
    v.get(name)
        .ok_or_else(|| ReviewError(format!("request.{name} is required")))
}

fn string(v: &Value, name: &str) -> Result<String, ReviewError> {
    field(v, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ReviewError(format!("request.{name} must be a string")))
}

/// Parses an `AdmissionReview` body. `Ok(None)` for a well-formed review of a
/// kind we do not pin (answered "allowed, unchanged").
pub fn parse_review(body: &[u8]) -> Result<(String, Option<AdmissionRequest>), ReviewError> {
    // serde's messages may quote values (a Secret's data, say): say where only.
    let review: Value = serde_json::from_slice(body).map_err(|e| {
        ReviewError(format!(
            "not valid JSON ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let api = review.get("apiVersion").and_then(Value::as_str);
    if api != Some(API_VERSION) {
        return Err(ReviewError(format!(
            "apiVersion must be {API_VERSION}{}",
            if api.is_some() {
                ""
            } else {
                " (it is missing)"
            }
        )));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(ReviewError("kind must be AdmissionReview".into()));
    }
    let req = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| ReviewError("request is required".into()))?;
    let uid = string(req, "uid")?;
    let kind_v = field(req, "kind")?;
    let group = kind_v.get("group").and_then(Value::as_str).unwrap_or("");
    let kind_name = kind_v
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| ReviewError("request.kind.kind must be a string".into()))?;
    let operation = match string(req, "operation")?.as_str() {
        "CREATE" => Operation::Create,
        "UPDATE" => Operation::Update,
        "DELETE" | "CONNECT" => Operation::Other,
        _ => {
            return Err(ReviewError(
                "request.operation is not a known operation".into(),
            ))
        }
    };
    let Some(kind) = Kind::from_group_kind(group, kind_name) else {
        return Ok((uid, None));
    };
    if operation == Operation::Other {
        return Ok((uid, None));
    }
    // Subresource requests (pods/status, …) other than ephemeral containers carry no images to pin.
    match req.get("subResource").and_then(Value::as_str) {
        None | Some("") | Some("ephemeralcontainers") => {}
        Some(_) => return Ok((uid, None)),
    }
    let object = field(req, "object")?.clone();
    if !object.is_object() {
        return Err(ReviewError("request.object must be an object".into()));
    }
    let old_object = req.get("oldObject").filter(|o| !o.is_null()).cloned();
    if operation == Operation::Update && old_object.is_none() {
        return Err(ReviewError(
            "request.oldObject is required on UPDATE".into(),
        ));
    }
    let meta = object.get("metadata");
    let name = req
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| meta.and_then(|m| m.get("name")).and_then(Value::as_str))
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
        })
        .unwrap_or("")
        .to_string();
    Ok((
        uid.clone(),
        Some(AdmissionRequest {
            uid,
            kind,
            operation,
            namespace: req
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            name,
            object,
            old_object,
            dry_run: req.get("dryRun").and_then(Value::as_bool).unwrap_or(false),
        }),
    ))
}

/// The controlling owner, when it is a kind this webhook pins: then the
/// object is a child (a ReplicaSet of a Deployment, a Pod of a ReplicaSet, a
/// Revision of a Configuration, …) and must be left alone.
pub fn pinned_owner(object: &Value) -> Option<String> {
    let owners = object.get("metadata")?.get("ownerReferences")?.as_array()?;
    owners.iter().find_map(|o| {
        if o.get("controller").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let api = o.get("apiVersion").and_then(Value::as_str)?;
        let kind = o.get("kind").and_then(Value::as_str)?;
        let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        Kind::from_group_kind(group, kind)?;
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        Some(format!("{kind}/{name}"))
    })
}

/// One image field of a pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// JSON Pointer of the `image` field.
    pub pointer: String,
    /// `containers`, `initContainers` or `ephemeralContainers`.
    pub list: &'static str,
    /// The container's name (Knative allows none: then its index).
    pub container: String,
    pub image: String,
}

/// A pod spec: its service account, images and pull secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub pointer: &'static str,
    /// `serviceAccountName` (or the deprecated `serviceAccount`), `default` when absent.
    pub service_account: String,
    pub slots: Vec<Slot>,
    pub image_pull_secrets: Vec<String>,
    /// Whether `imagePullSecrets` is present at all (the patch differs).
    pub has_pull_secrets_field: bool,
}

const LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// The pod spec of `object` as `kind` keeps it.
pub fn pod_spec(kind: Kind, object: &Value) -> Result<PodSpec, ReviewError> {
    let pointer = kind.pod_spec_pointer();
    let spec = object
        .pointer(pointer)
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            ReviewError(format!(
                "the {} has no pod spec at {pointer}",
                kind.gvkr().2
            ))
        })?;
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let mut slots = Vec::new();
    for list in LISTS {
        let Some(items) = spec.get(list) else {
            continue;
        };
        let items = items
            .as_array()
            .ok_or_else(|| ReviewError(format!("{pointer}/{list} must be a list")))?;
        for (i, c) in items.iter().enumerate() {
            let Some(image) = c.get("image") else {
                continue;
            };
            let image = image.as_str().ok_or_else(|| {
                ReviewError(format!("{pointer}/{list}/{i}/image must be a string"))
            })?;
            slots.push(Slot {
                pointer: format!("{pointer}/{list}/{i}/image"),
                list,
                container: c
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{i}")),
                image: image.to_string(),
            });
        }
    }
    let secrets = spec.get("imagePullSecrets").and_then(Value::as_array);
    Ok(PodSpec {
        pointer,
        service_account,
        image_pull_secrets: secrets
            .map(|s| {
                s.iter()
                    .filter_map(|e| e.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        has_pull_secrets_field: secrets.is_some(),
        slots,
    })
}

/// What to do with one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave it as it is, and why.
    Leave(&'static str),
    /// Ask the registry for this reference's digest (by tag: never with a
    /// digest attached), then pin.
    Resolve(Reference),
    /// Write this pinned value back without asking (UPDATE kept the old digest).
    Restore(String),
}

/// Decides what to do with `slot`, given the old object's pod spec on UPDATE.
/// Policy and skip lists are the caller's: this is about the reference only.
pub fn action(slot: &Slot, old: Option<&PodSpec>) -> Action {
    let Ok(image) = Reference::parse(&slot.image) else {
        return Action::Leave("not a valid image reference");
    };
    let before = old.and_then(|o| {
        o.slots
            .iter()
            .find(|s| s.list == slot.list && s.container == slot.container)
    });
    match (image.digest(), before) {
        (Some(_), Some(b)) if b.image == slot.image => Action::Leave("unchanged"),
        (Some(digest), Some(b)) => {
            // The tag in front of the old digest changed: re-resolve the new tag.
            let old_ref = Reference::parse(&b.image).ok();
            let same_digest = old_ref.as_ref().and_then(|r| r.digest()) == Some(digest);
            let tag_changed = old_ref
                .as_ref()
                .map(|r| (r.name(), r.tag().map(str::to_string)))
                != Some((image.name(), image.tag().map(str::to_string)));
            match Reference::parse(strip_digest(&slot.image)) {
                // The tag alone: its old digest must not answer for it.
                Ok(by_tag) if same_digest && tag_changed && image.tag().is_some() => {
                    Action::Resolve(by_tag)
                }
                _ => Action::Leave("already pinned to a digest"),
            }
        }
        (Some(_), None) => Action::Leave("already pinned to a digest"),
        (None, Some(b)) => {
            // Written back unpinned, same name:tag as the old pin: keep its digest.
            match Reference::parse(&b.image) {
                Ok(old) if old.digest().is_some() && strip_digest(&b.image) == slot.image => {
                    Action::Restore(b.image.clone())
                }
                _ => Action::Resolve(image),
            }
        }
        (None, None) => Action::Resolve(image),
    }
}

/// `repo:tag@sha256:…` → `repo:tag`, as the user wrote it.
pub fn strip_digest(image: &str) -> &str {
    image.split('@').next().unwrap_or(image)
}

/// The pinned form the user sees: their own text, tag kept, `@digest` added.
pub fn pinned(image: &str, digest: &crate::Digest) -> String {
    format!("{}@{digest}", strip_digest(image))
}

/// A JSON Patch operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOp {
    ReplaceImage {
        pointer: String,
        value: String,
    },
    /// Add a pull secret to the pod spec at `pod_spec`.
    AddPullSecret {
        pod_spec: &'static str,
        name: String,
    },
}

/// The JSON Patch (RFC 6902) for `ops`; a `test` of each old image guards
/// against patching a value that changed in between (reinvocation).
pub fn json_patch(ops: &[PatchOp], spec: &PodSpec) -> Value {
    let mut out = Vec::new();
    let mut secrets_field = spec.has_pull_secrets_field;
    for op in ops {
        match op {
            PatchOp::ReplaceImage { pointer, value } => {
                if let Some(old) = spec.slots.iter().find(|s| &s.pointer == pointer) {
                    out.push(json!({"op": "test", "path": pointer, "value": old.image}));
                }
                out.push(json!({"op": "replace", "path": pointer, "value": value}));
            }
            PatchOp::AddPullSecret { pod_spec, name } => {
                if secrets_field {
                    out.push(json!({"op": "add", "path": format!("{pod_spec}/imagePullSecrets/-"), "value": {"name": name}}));
                } else {
                    out.push(json!({"op": "add", "path": format!("{pod_spec}/imagePullSecrets"), "value": [{"name": name}]}));
                    secrets_field = true;
                }
            }
        }
    }
    Value::Array(out)
}

/// An `AdmissionReview` response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub allowed: bool,
    /// Denial: HTTP-like code and message.
    pub status: Option<(u16, String)>,
    pub patch: Option<Value>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
}

impl Response {
    pub fn allow() -> Response {
        Response {
            allowed: true,
            ..Default::default()
        }
    }

    pub fn deny(code: u16, message: impl Into<String>) -> Response {
        Response {
            allowed: false,
            status: Some((code, message.into())),
            ..Default::default()
        }
    }

    /// The whole `AdmissionReview` to send back (`patch` base64 as documented).
    pub fn review(&self, uid: &str) -> Value {
        use base64::Engine as _;
        let mut resp = json!({"uid": uid, "allowed": self.allowed});
        if let Some((code, message)) = &self.status {
            resp["status"] = json!({"code": code, "message": message});
        }
        if let Some(patch) = self
            .patch
            .as_ref()
            .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
        {
            let bytes = serde_json::to_vec(patch).expect("a Value serializes");
            resp["patchType"] = json!("JSONPatch");
            resp["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        if !self.warnings.is_empty() {
            resp["warnings"] = json!(self.warnings);
        }
        if !self.audit_annotations.is_empty() {
            let map: serde_json::Map<String, Value> = self
                .audit_annotations
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            resp["auditAnnotations"] = Value::Object(map);
        }
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp})
    }
}

/// Knative's `registries-skipping-tag-resolving`: an exact host match
/// (`host[:port]` as written in the image, after normalization).
pub fn skipped_registry(skip: &[String], image: &Reference) -> bool {
    skip.iter().any(|s| s == image.registry())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(kind: (&str, &str), op: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "operation": op, "namespace": "team-a", "object": object, "oldObject": old, "dryRun": false}}))
        .unwrap()
    }

    #[test]
    fn every_kind_finds_its_pod_spec() {
        let spec = json!({"serviceAccountName": "app", "containers": [{"name": "c", "image": "r.example/a:1"}]});
        for kind in Kind::ALL {
            let mut obj = json!({"metadata": {"name": "x"}});
            let ptr = kind.pod_spec_pointer();
            let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
            let mut at = &mut obj;
            for p in &parts[..parts.len() - 1] {
                at = at.as_object_mut().unwrap().entry(*p).or_insert(json!({}));
            }
            at[parts[parts.len() - 1]] = spec.clone();
            let (g, _, k, _) = kind.gvkr();
            let (_, req) = parse_review(&review((g, k), "CREATE", obj, Value::Null)).unwrap();
            let req = req.unwrap();
            assert_eq!(req.kind, kind);
            let ps = pod_spec(kind, &req.object).unwrap();
            assert_eq!(ps.service_account, "app");
            assert_eq!(ps.slots[0].pointer, format!("{ptr}/containers/0/image"));
        }
    }

    #[test]
    fn bad_reviews_are_clean_errors_that_quote_nothing() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"Nope"}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","kind":"Pod"},"operation":"CREATE","object":"SECRET-CANARY"}}"#,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","kind":"Pod"},"operation":"PATCH-SECRET-CANARY","object":{}}}"#,
        ] {
            let err = parse_review(body).unwrap_err().to_string();
            assert!(!err.contains("SECRET-CANARY"), "{err}");
        }
        let (_, none) =
            parse_review(&review(("", "Secret"), "CREATE", json!({}), Value::Null)).unwrap();
        assert!(none.is_none(), "a kind we do not pin is not an error");
    }

    #[test]
    fn children_of_pinned_kinds_are_left_alone() {
        let owned = |api: &str, kind: &str, controller: bool| json!({"metadata": {"ownerReferences": [{"apiVersion": api, "kind": kind, "name": "o", "controller": controller}]}});
        assert_eq!(
            pinned_owner(&owned("apps/v1", "Deployment", true)).as_deref(),
            Some("Deployment/o")
        );
        assert!(pinned_owner(&owned("serving.knative.dev/v1", "Configuration", true)).is_some());
        assert!(
            pinned_owner(&owned("apps/v1", "Deployment", false)).is_none(),
            "not the controller"
        );
        assert!(
            pinned_owner(&owned("example.com/v1", "Widget", true)).is_none(),
            "an owner we do not pin"
        );
        assert!(pinned_owner(&json!({"metadata": {}})).is_none());
    }

    fn spec_with(image: &str) -> PodSpec {
        pod_spec(
            Kind::Pod,
            &json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
        )
        .unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn actions_on_create_and_update() {
        let slot = |image: &str| spec_with(image).slots[0].clone();
        assert!(matches!(
            action(&slot("r.example/a:1"), None),
            Action::Resolve(_)
        ));
        assert_eq!(
            action(&slot(&format!("r.example/a:1@{D1}")), None),
            Action::Leave("already pinned to a digest")
        );
        assert_eq!(
            action(&slot("r.example/Case:1"), None),
            Action::Leave("not a valid image reference")
        );
        let old = spec_with(&format!("r.example/a:1@{D1}"));
        assert_eq!(
            action(&slot(&format!("r.example/a:1@{D1}")), Some(&old)),
            Action::Leave("unchanged")
        );
        // kubectl apply of the original manifest writes the tag back: keep the old digest.
        assert_eq!(
            action(&slot("r.example/a:1"), Some(&old)),
            Action::Restore(format!("r.example/a:1@{D1}"))
        );
        // A new tag is resolved; so is a new tag typed in front of the old digest.
        assert!(matches!(
            action(&slot("r.example/a:2"), Some(&old)),
            Action::Resolve(_)
        ));
        match action(&slot(&format!("r.example/a:2@{D1}")), Some(&old)) {
            Action::Resolve(r) => {
                assert_eq!(r.tag(), Some("2"));
                assert!(
                    r.digest().is_none(),
                    "the tag is resolved, not the old digest"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn patch_tests_old_values_and_adds_pull_secrets() {
        let spec = spec_with("r.example/a:1");
        let p = json_patch(
            &[
                PatchOp::ReplaceImage {
                    pointer: "/spec/containers/0/image".into(),
                    value: format!("r.example/a:1@{D1}"),
                },
                PatchOp::AddPullSecret {
                    pod_spec: "/spec",
                    name: "pullbroker-g".into(),
                },
            ],
            &spec,
        );
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "r.example/a:1"}]}});
        json_patch_apply(&mut pod, &p);
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            format!("r.example/a:1@{D1}")
        );
        assert_eq!(
            pod["spec"]["imagePullSecrets"],
            json!([{"name": "pullbroker-g"}])
        );
    }

    /// A tiny RFC 6902 applier for the ops we emit (test, replace, add).
    fn json_patch_apply(doc: &mut Value, patch: &Value) {
        for op in patch.as_array().unwrap() {
            let path = op["path"].as_str().unwrap();
            match op["op"].as_str().unwrap() {
                "test" => assert_eq!(doc.pointer(path).unwrap(), &op["value"]),
                "replace" => *doc.pointer_mut(path).unwrap() = op["value"].clone(),
                "add" => {
                    let (parent, last) = path.rsplit_once('/').unwrap();
                    let p = doc.pointer_mut(parent).unwrap();
                    if last == "-" {
                        p.as_array_mut().unwrap().push(op["value"].clone());
                    } else {
                        p[last] = op["value"].clone();
                    }
                }
                other => panic!("{other}"),
            }
        }
    }

    proptest::proptest! {
        /// Any bytes, and any JSON in the places we read: an answer, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
                        kind in "(Pod|Deployment|CronJob|Service|Revision|Job)",
                        group in "(|apps|batch|serving.knative.dev)",
                        image in "\\PC{0,40}", sa in proptest::option::of("\\PC{0,10}")) {
            let _ = parse_review(&bytes);
            let spec = json!({"serviceAccountName": sa, "containers": [{"name": "c", "image": image}]});
            let bad = json!({"containers": [{"image": 7}], "initContainers": {"x": 1}});
            let object = json!({"metadata": {"ownerReferences": [{"apiVersion": 1, "kind": kind}]},
                "spec": {"template": {"spec": spec.clone()}, "jobTemplate": {"spec": {"template": {"spec": bad}}}, "containers": spec["containers"].clone()}});
            let body = review((group.as_str(), kind.as_str()), "UPDATE", object.clone(), object);
            if let Ok((_, Some(req))) = parse_review(&body) {
                let _ = pinned_owner(&req.object);
                if let Ok(ps) = pod_spec(req.kind, &req.object) {
                    for s in &ps.slots {
                        let _ = action(s, Some(&ps));
                    }
                }
            }
        }
    }

    #[test]
    fn response_shape() {
        let mut r = Response::allow();
        r.patch =
            Some(json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "x"}]));
        r.warnings.push("w".into());
        let v = r.review("u1");
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        assert!(v["response"]["patch"].as_str().is_some());
        let v = Response::deny(403, "no").review("u2");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["code"], 403);
        assert!(v["response"].get("patch").is_none());
    }
}
