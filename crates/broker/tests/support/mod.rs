//! A broker in front of a real token-auth registry, for end-to-end tests.
//!
//! The registry (`auth: token`) trusts the broker's certificate and sends
//! clients to the broker's `/token`. Fixtures are pushed through an anonymous
//! twin registry that shares the same storage, since the broker never grants push.

#![allow(dead_code)]

use std::path::PathBuf;

use pullbroker_broker::{config, Broker};
use pullbroker_credentials::keys::SigningKey;
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::registry::TokenAuth;
use pullbroker_testenv::{fixtures, skopeo, Auth, Registry, RegistryOptions};

pub const AUDIENCE: &str = "pullbroker";

/// An exec source that answers once the file `release` exists beside it
/// (gives up after 60 s): slow work the test decides the end of.
pub const SLOW_SOURCE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat > /dev/null
n=0
while [ ! -e "$dir/release" ]; do
  n=$((n + 1)); [ "$n" -gt 1200 ] && exit 1
  sleep 0.05
done
echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"600s","auth":{"r.example":{"username":"u","password":"p"}}}'
"#;
pub const SERVICE: &str = "pullbroker-e2e-registry";
pub const REGISTRY_ISSUER: &str = "pullbroker-e2e";
/// A recognisable upstream password for the static credential (canary).
pub const STATIC_PASSWORD: &str = "static-CANARY-8c1f";

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub issuer: TestIssuer,
    pub registry: Registry,
    pub twin: Registry,
    pub broker: Broker,
    pub url: String,
    pub config_path: PathBuf,
    pub key_pem: String,
    pub cert_pem: String,
    pub layout: fixtures::Layout,
    server: tokio::task::JoinHandle<()>,
}

impl Setup {
    pub fn host(&self) -> String {
        self.registry.host()
    }

    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    /// The standalone config, with `grants` as extra YAML documents.
    pub fn write_config(&self, grants: &str) {
        write_atomically(
            &self.config_path,
            &config_yaml(&self.registry.host(), grants),
        );
    }
}

/// Replaces a file by rename, as editors and ConfigMap updates do: the
/// broker's poller must never see it half written (that would be a second,
/// spurious reload error).
pub fn write_atomically(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub const DEFAULT_GRANTS: &str = r#"
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {name: team-a}
spec:
  credential: corp
  subjects: {namespaces: [team-a], serviceAccounts: [app]}
  repositories: [demo/app, demo/sub/**]
  purposes: [pull, resolve]
  ttl: 10m
  resolvers: [knative-serving/controller]
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {name: static-hub}
spec:
  credential: static
  subjects: {namespaces: [team-a], serviceAccounts: [app]}
  repositories: ['**']
  purposes: [pull]
"#;

fn config_yaml(registry: &str, grants: &str) -> String {
    format!(
        r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: broker}}
spec:
  insecurePlainHttp: true
  audience: {AUDIENCE}
  serviceAccountIssuer:
    issuer: {KUBE_ISSUER}
    jwksFile: jwks.json
  secretFiles:
    corp-signer: {{tls.key: signer/tls.key, tls.crt: signer/tls.crt}}
---
apiVersion: v1
kind: Secret
metadata: {{name: static-auth, namespace: pullbroker-system}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{{"auths":{{"static.example":{{"username":"bot","password":"{STATIC_PASSWORD}"}}}}}}'
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: corp}}
spec:
  registries: ["{registry}"]
  source:
    tokenIssuer:
      signingKeySecretRef: {{name: corp-signer}}
      service: {SERVICE}
      issuer: {REGISTRY_ISSUER}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: static}}
spec:
  registries: [static.example]
  source:
    secretRef: {{name: static-auth}}
---
{grants}"#
    )
}

/// Starts the broker (in this test's runtime), the token registry, and its twin.
pub async fn start() -> Setup {
    start_with(None).await
}

/// [`start`], with `reviewer` as the broker's TokenReview.
pub async fn start_with(
    reviewer: Option<std::sync::Arc<dyn pullbroker_broker::tokenreview::TokenReviewer>>,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    let (key_pem, cert_pem) = SigningKey::generate("pullbroker e2e").unwrap();
    std::fs::create_dir_all(dir.path().join("signer")).unwrap();
    std::fs::write(dir.path().join("signer/tls.key"), &key_pem).unwrap();
    std::fs::write(dir.path().join("signer/tls.crt"), &cert_pem).unwrap();

    // The broker's port must be known before the registry names it as realm.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let data = dir.path().join("registry-data");
    let registry = Registry::start(RegistryOptions {
        name: "broker-e2e".into(),
        auth: Auth::Token(TokenAuth {
            realm: format!("{url}/token"),
            service: SERVICE.into(),
            issuer: REGISTRY_ISSUER.into(),
            rootcertbundle: dir.path().join("signer/tls.crt"),
        }),
        tls: None,
        quiet: false,
        data_dir: Some(data.clone()),
    })
    .unwrap();
    let twin = Registry::start(RegistryOptions {
        name: "broker-e2e-twin".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: Some(data),
    })
    .unwrap();
    let layout_dir = dir.path().join("oci");
    let layout = fixtures::build_layout(&layout_dir).unwrap();
    for repo in ["demo/app", "demo/sub/deep", "other/app"] {
        let dest = format!("{}/{repo}:v1", twin.host());
        skopeo::copy(&layout_dir, "v1", &dest, None, skopeo::Format::Oci, false).unwrap();
    }

    let config_path = dir.path().join("broker.yaml");
    std::fs::write(&config_path, config_yaml(&registry.host(), DEFAULT_GRANTS)).unwrap();
    let snapshot = config::load(&config_path).unwrap();
    let broker = Broker::new(
        snapshot,
        Some(config_path.clone()),
        ClientSettings::default(),
        reviewer,
    )
    .await
    .unwrap();
    let b = broker.clone();
    let server = tokio::spawn(async move {
        b.serve(listener, std::future::pending()).await.unwrap();
    });
    Setup {
        dir,
        issuer,
        registry,
        twin,
        broker,
        url,
        config_path,
        key_pem,
        cert_pem,
        layout,
        server,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// POST /v1/exchange; returns (status, body).
pub async fn exchange(url: &str, token: &str, image: &str) -> (u16, serde_json::Value) {
    let resp = http()
        .post(format!("{url}/v1/exchange"))
        .json(&serde_json::json!({"token": token, "image": image}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Bounded: a hung broker fails the test instead of stalling the run.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The broker's `/metrics` page at `url`.
pub async fn metrics(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET /token?service=SERVICE&scope=SCOPE` with Basic auth, as skopeo asks.
pub async fn get_token(url: &str, user: &str, password: &str, scope: &str) -> reqwest::Response {
    http()
        .get(format!("{url}/token"))
        .query(&[("service", SERVICE), ("scope", scope)])
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

/// Runs blocking client commands off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
