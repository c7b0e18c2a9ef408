//! A fake cluster for controller tests: the fake API server, a kube client
//! on it, a token-issuer credential with its signing key, and helpers to
//! run controller replicas and wait for conditions.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;
pub use pullbroker_controller::{Metrics, Settings};
use pullbroker_credentials::keys::{IssuerKeys, SigningKey};
use pullbroker_testenv::api_log;
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

pub const SYSTEM: &str = "pullbroker-system";
pub const REGISTRY: &str = "registry.corp.example";

pub struct Cluster {
    pub fake: FakeApi,
    /// The tests' own set-up: cluster-admin, not recorded.
    pub client: Client,
    /// As the controller's service account: recorded for the RBAC check.
    pub controller: Client,
    /// As the broker's service account: recorded for the RBAC check.
    pub broker: Client,
    pub key_pem: String,
    pub cert_pem: String,
}

pub async fn client(fake: &FakeApi) -> Client {
    fake.client().await
}

/// A client that identifies as `user` (see `pullbroker_testenv::api_log`).
pub async fn client_as(fake: &FakeApi, user: &str) -> Client {
    fake.client_as(user).await
}

pub fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

impl Cluster {
    /// A cluster with the system namespace, a signing key and the `corp`
    /// token-issuer credential for `registry`.
    pub async fn start(registry: &str, key: Option<(String, String)>) -> Cluster {
        // RUST_LOG=pullbroker_controller=debug shows what the controller does.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
        let client = client(&fake).await;
        let controller = client_as(&fake, api_log::CONTROLLER).await;
        let broker = client_as(&fake, api_log::BROKER).await;
        let (key_pem, cert_pem) =
            key.unwrap_or_else(|| SigningKey::generate("pullbroker test").unwrap());
        let c = Cluster {
            fake,
            client,
            controller,
            broker,
            key_pem,
            cert_pem,
        };
        c.namespace(SYSTEM, json!({})).await;
        c.create_in::<Secret>(
            SYSTEM,
            json!({"metadata": {"name": "corp-signer"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.key": c.key_pem, "tls.crt": c.cert_pem}}),
        )
        .await;
        c.create::<pullbroker_core::policy::RegistryCredential>(json!({
            "apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": "corp"},
            "spec": {"registries": [registry], "source": {"tokenIssuer": {
                "signingKeySecretRef": {"name": "corp-signer"}, "service": "pullbroker-e2e-registry", "issuer": "pullbroker-e2e"}}}
        }))
        .await;
        c
    }

    pub fn keys(&self) -> IssuerKeys {
        IssuerKeys {
            current: SigningKey::from_pem(&self.key_pem, &self.cert_pem).unwrap(),
            previous: None,
        }
    }

    pub async fn create<K>(&self, v: Value) -> K
    where
        K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        Api::<K>::all(self.client.clone())
            .create(&PostParams::default(), &obj(v))
            .await
            .unwrap()
    }

    pub async fn create_in<K>(&self, ns: &str, v: Value) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &obj(v))
            .await
            .unwrap()
    }

    pub async fn namespace(&self, name: &str, labels: Value) {
        self.create::<Namespace>(json!({"metadata": {"name": name, "labels": labels}}))
            .await;
    }

    /// A namespace with service accounts, each with its own pull secrets.
    pub async fn tenant(&self, ns: &str, accounts: &[(&str, &[&str])]) {
        self.namespace(ns, json!({})).await;
        for (sa, refs) in accounts {
            let refs: Vec<Value> = refs.iter().map(|r| json!({"name": r})).collect();
            self.create_in::<ServiceAccount>(
                ns,
                json!({"metadata": {"name": sa}, "imagePullSecrets": refs}),
            )
            .await;
        }
    }

    pub async fn grant(&self, name: &str, spec: Value) {
        self.create::<pullbroker_core::policy::PullGrant>(json!({
            "apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant",
            "metadata": {"name": name}, "spec": spec}))
            .await;
    }

    pub async fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .unwrap()
    }

    pub async fn pull_secrets(&self, ns: &str, sa: &str) -> Vec<String> {
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .get(sa)
            .await
            .unwrap()
            .image_pull_secrets
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// Writes the fake has handled to secrets and service accounts.
    pub fn sync_writes(&self) -> usize {
        self.fake
            .writes()
            .iter()
            .filter(|(k, _)| k.ends_with(" secrets") || k.ends_with(" serviceaccounts"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The (username, password) a synced secret holds for `registry`.
pub fn credential_in(secret: &Secret, registry: &str) -> (String, String) {
    let data = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let config: Value = serde_json::from_slice(data).unwrap();
    let entry = &config["auths"][registry];
    let (u, p) = (
        entry["username"].as_str().unwrap(),
        entry["password"].as_str().unwrap(),
    );
    if let Some(auth) = entry["auth"].as_str() {
        assert_eq!(
            STANDARD.decode(auth).unwrap(),
            format!("{u}:{p}").as_bytes()
        );
    }
    (u.to_string(), p.to_string())
}

/// A controller replica running in this test's runtime.
pub struct Replica {
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), pullbroker_controller::Error>>,
}

pub fn settings(identity: &str) -> Settings {
    Settings {
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        concurrency: 8,
        ..Settings::default()
    }
}

impl Replica {
    pub fn start(client: Client, settings: Settings) -> Replica {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(pullbroker_controller::run(
            client,
            settings,
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Replica {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful stop: finishes reconciles and releases the lease.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("replica stops")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(30);

/// A service-account token from the API server's TokenRequest (audience `pullbroker`).
pub async fn token(c: &Cluster, ns: &str, sa: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let req: TokenRequest =
        obj(json!({"spec": {"audiences": ["pullbroker"], "expirationSeconds": 600}}));
    Api::<ServiceAccount>::namespaced(c.client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A broker from `file`, serving on loopback until the handle is dropped.
pub async fn serve_broker(
    file: &std::path::Path,
) -> (pullbroker_broker::Broker, String, AbortOnDrop) {
    let broker = pullbroker_broker::Broker::new(
        pullbroker_broker::config::load(file).unwrap(),
        Some(file.to_path_buf()),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let b = broker.clone();
    let server =
        tokio::spawn(async move { b.serve(listener, std::future::pending()).await.unwrap() });
    (broker, url, AbortOnDrop(server))
}

pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl From<tokio::task::JoinHandle<()>> for AbortOnDrop {
    fn from(h: tokio::task::JoinHandle<()>) -> Self {
        AbortOnDrop(h)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `POST /v1/exchange`; (status, body).
pub async fn exchange(url: &str, token: &str, image: &str) -> (u16, Value) {
    let resp = http()
        .post(format!("{url}/v1/exchange"))
        .json(&json!({"token": token, "image": image}))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

/// `GET url+path`; (status, body).
pub async fn get(url: &str, path: &str) -> (u16, String) {
    let resp = http().get(format!("{url}{path}")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `skopeo inspect` with the secret's `.dockerconfigjson` as its auth file.
pub fn inspect(dir: &std::path::Path, config: &[u8], image: &str) -> Result<(), String> {
    let file = dir.join(format!("auth-{}.json", rand_suffix()));
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--no-tags",
            "--raw",
            "--authfile",
        ])
        .arg(&file)
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn config_of(s: &Secret) -> Vec<u8> {
    s.data.as_ref().unwrap()[".dockerconfigjson"].0.clone()
}
