//! Seeding the fake API server with a cluster, as tests of the commands
//! that read one (`audit`, `adopt`) need: namespaces, pull secrets, service
//! accounts and pods, created through the real `kube` client.
#![allow(dead_code)] // each test uses the part it needs

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use pullbroker_testenv::fakeapi::FakeApi;
use serde_json::{json, Value};

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn config(registry: &str, user: &str, password: &str) -> String {
    json!({"auths": {registry: {"username": user, "password": password}}}).to_string()
}

pub struct Cluster {
    pub fake: FakeApi,
    pub client: kube::Client,
}

impl Cluster {
    pub async fn ns(&self, name: &str) {
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
    }
    pub async fn secret(&self, ns: &str, name: &str, type_: &str, data: Value, meta: Value) {
        let mut metadata = json!({"name": name});
        metadata
            .as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": metadata, "type": type_, "data": data}))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    pub async fn pull_secret(&self, ns: &str, name: &str, text: &str) {
        self.secret(
            ns,
            name,
            "kubernetes.io/dockerconfigjson",
            json!({".dockerconfigjson": b64(text)}),
            json!({}),
        )
        .await;
    }
    pub async fn sa(&self, ns: &str, name: &str, secrets: &[&str]) {
        let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name}, "imagePullSecrets": refs}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    pub async fn pod(&self, ns: &str, name: &str, sa: &str, image: &str, secrets: &[&str]) {
        let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name}, "spec": {"serviceAccountName": sa,
                    "imagePullSecrets": refs, "containers": [{"name": "c", "image": image}]}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
}
