//! Real AdmissionReview requests (captured from kube-apiserver v1.32, in
//! `fixtures/admission-v1.32/`), re-aimed at test namespaces and registries.

use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/admission-v1.32");

/// The images the fixtures name, as the API server sent them.
pub const WEB: &str = "registry.corp.example/apps/web:1.0";
pub const HELLO: &str = "registry.corp.example/apps/hello:latest";
pub const SIDECAR: &str = "registry.corp.example/apps/sidecar:v2";

/// A fixture by file stem (`pod-create-by-user`, `deployment-create`,
/// `replicaset-create-by-deployment-controller`,
/// `pod-create-by-replicaset-controller`, `knative-service-create`).
pub fn fixture(name: &str) -> Value {
    let path = format!("{DIR}/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `fixture` with its namespace set to `namespace` and each image in
/// `images` (fixture image → test image) replaced everywhere it appears.
pub fn review(name: &str, namespace: &str, images: &[(&str, &str)]) -> Value {
    let mut text = fixture(name).to_string();
    for (from, to) in images {
        text = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
    }
    let mut v: Value = serde_json::from_str(&text).expect("still JSON");
    v["request"]["namespace"] = Value::String(namespace.into());
    if let Some(meta) = v["request"]["object"].get_mut("metadata") {
        meta["namespace"] = Value::String(namespace.into());
    }
    v
}

/// Sets the service account of the object's pod spec at `pointer`.
pub fn set_service_account(review: &mut Value, pointer: &str, sa: &str) {
    let spec = review["request"]["object"]
        .pointer_mut(pointer)
        .expect("pod spec");
    spec["serviceAccountName"] = Value::String(sa.into());
}
