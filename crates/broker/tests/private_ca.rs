//! A registry served with a certificate from a private CA, as most
//! enterprise registries are: a real TLS `docker-registry` whose CA the
//! system does not trust. Without the CA, resolve and admission fail naming
//! the registry and "unknown authority"; with it on the RegistryCredential
//! (`transport.caBundle`) they pin and resolve the digests skopeo sees; the
//! CA file replaced (a wrong CA, then the right one again) takes effect on
//! reload, without a restart; the same from a ConfigMap.

use std::time::Duration;

use pullbroker_broker::{config, Broker};
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::admission::{self, WEB};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::pki::PrivateCa;
use pullbroker_testenv::{skopeo, Auth, Env, Registry, RegistryOptions};
use serde_json::{json, Value};

const PASSWORD: &str = "private-ca-CANARY-3d9e";

fn config_yaml(host: &str, transport: &str) -> String {
    format!(
        r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: b}}
spec:
  insecurePlainHttp: true
  serviceAccountIssuer: {{issuer: "{KUBE_ISSUER}", jwksFile: jwks.json}}
  secretFiles:
    corp-ca: {{ca.crt: ca.crt}}
---
apiVersion: v1
kind: Secret
metadata: {{name: corp-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{{"auths":{{"{host}":{{"username":"bot","password":"{PASSWORD}"}}}}}}'}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: corp}}
spec:
  registries: ["{host}"]
  source: {{secretRef: {{name: corp-auth}}}}
{transport}---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: team-a}}
spec: {{credential: corp, subjects: {{namespaces: [team-a], serviceAccounts: [app, default]}}, repositories: ['**'], purposes: [resolve]}}
"#
    )
}

const WITH_CA: &str = "  transport:\n    caBundle: {secretName: corp-ca, key: ca.crt}\n";

/// The CA in a ConfigMap document of its own, named by the credential.
fn with_config_map(pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "  transport:\n    caBundle: {{configMapName: corp-trust}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: corp-trust, namespace: pullbroker-system}}\ndata:\n  ca.crt: |\n{indented}"
    )
}

struct Setup {
    dir: tempfile::TempDir,
    issuer: TestIssuer,
    registry: Registry,
    broker: Broker,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Setup {
    async fn resolve(&self, image: &str) -> Value {
        let token = self.issuer.token("team-a", "app", "pullbroker");
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/v1/resolve", self.url))
            .bearer_auth(token)
            .json(&json!({"namespace": "team-a", "images": [image]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["results"][0].clone()
    }

    async fn pin(&self, image: &str) -> Value {
        let review = admission::review("pod-create-by-user", "team-a", &[(WEB, image)]);
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/v1/admission/pin?timeout=10s", self.url))
            .json(&review)
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        v["response"].clone()
    }

    /// Rewrites the config (and the CA file) and reloads, as the file
    /// watcher does on a change.
    async fn reconfigure(&self, transport: &str, ca_pem: &str) {
        std::fs::write(self.dir.path().join("ca.crt"), ca_pem).unwrap();
        std::fs::write(
            self.dir.path().join("broker.yaml"),
            config_yaml(&self.registry.host(), transport),
        )
        .unwrap();
        self.broker.reload().await.unwrap();
    }
}

async fn start(ca: &PrivateCa) -> Setup {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let tls = ca
        .server(&dir.path().join("registry-tls"), &["127.0.0.1"])
        .unwrap();
    let registry = Registry::start(RegistryOptions {
        name: "private-ca".into(),
        auth: Auth::Anonymous,
        tls: Some(tls),
        quiet: true,
        data_dir: None,
    })
    .unwrap();
    for tag in ["v1", "v2", "v3", "v4", "v5", "v6", "v7"] {
        skopeo::copy(
            &env.layout,
            "v1",
            &format!("{}/demo/app:{tag}", registry.host()),
            None,
            skopeo::Format::Oci,
            false,
        )
        .unwrap();
    }
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    let path = dir.path().join("broker.yaml");
    std::fs::write(&path, config_yaml(&registry.host(), "")).unwrap();
    let snapshot = config::load(&path).unwrap();
    let broker = Broker::new(snapshot, Some(path), ClientSettings::default(), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let b = broker.clone();
    let server = tokio::spawn(async move {
        b.serve(listener, std::future::pending()).await.unwrap();
    });
    Setup {
        dir,
        issuer,
        registry,
        broker,
        url,
        server,
    }
}

#[tokio::test]
async fn a_registry_behind_a_private_ca_is_reached_once_its_ca_is_on_the_credential() {
    let ca = PrivateCa::new("Corp Internal Root CA").unwrap();
    let other = PrivateCa::new("Someone Else's CA").unwrap();
    let s = start(&ca).await;
    let host = s.registry.host();
    let image = |tag: &str| format!("{host}/demo/app:{tag}");
    let want = skopeo::digest(&image("v1"), None).unwrap();

    // Without the CA: both fail, naming the registry and the unknown authority.
    let r = s.resolve(&image("v1")).await;
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(r["error"]["class"], "connect", "{r}");
    assert!(
        msg.contains(&host) && msg.contains("unknown authority"),
        "{msg}"
    );
    let resp = s.pin(&image("v1")).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let denied = resp["status"]["message"].as_str().unwrap();
    assert!(denied.contains("unknown authority"), "{denied}");

    // The CA on the credential: resolved and pinned, as skopeo sees it.
    s.reconfigure(WITH_CA, &ca.cert_pem).await;
    let r = s.resolve(&image("v2")).await;
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");
    let resp = s.pin(&image("v3")).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp["patch"].is_string(), "pinned: {resp}");

    // The CA file replaced by another CA's: refused on the next request.
    s.reconfigure(WITH_CA, &other.cert_pem).await;
    let r = s.resolve(&image("v4")).await;
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown authority"), "{r}");
    // And back: served again, no restart.
    s.reconfigure(WITH_CA, &ca.cert_pem).await;
    let r = s.resolve(&image("v5")).await;
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");

    // The same CA from a ConfigMap (as trust distributors keep them):
    // served. (Each step asks a tag not resolved before: digests are cached.)
    s.reconfigure(&with_config_map(&ca.cert_pem), "").await;
    let r = s.resolve(&image("v6")).await;
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");
    // Another CA in the ConfigMap: refused again.
    s.reconfigure(&with_config_map(&other.cert_pem), "").await;
    let r = s.resolve(&image("v7")).await;
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown authority"), "{r}");
    // A ConfigMap without a certificate under the key: an error naming it.
    std::fs::write(
        s.dir.path().join("broker.yaml"),
        config_yaml(&host, &with_config_map("no certificate here")),
    )
    .unwrap();
    let err = s.broker.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("ConfigMap \"corp-trust\"") && err.contains("PEM"),
        "{err}"
    );
    s.reconfigure(WITH_CA, &ca.cert_pem).await;

    // A bundle that holds no certificate is a configuration error naming
    // the Secret; the last good configuration keeps serving.
    std::fs::write(s.dir.path().join("ca.crt"), "not a certificate").unwrap();
    let err = s.broker.reload().await.unwrap_err().to_string();
    assert!(err.contains("corp-ca") && err.contains("PEM"), "{err}");
    assert!(!err.contains(PASSWORD));
    tokio::time::timeout(Duration::from_secs(5), s.resolve(&image("v1")))
        .await
        .unwrap();
}

#[test]
fn transport_settings_are_checked_whole() {
    use pullbroker_core::policy::model::RegistryCredentialSpec;
    let spec = |transport: &str| -> RegistryCredentialSpec {
        serde_saphyr::from_str(&format!(
            "registries: [r.example]\nsource: {{secretRef: {{name: s}}}}\ntransport: {transport}"
        ))
        .unwrap()
    };
    assert!(spec("{caBundle: {secretName: ca}}").validate().is_ok());
    assert_eq!(
        spec("{caBundle: {secretName: ca}}")
            .transport
            .unwrap()
            .ca_bundle
            .unwrap()
            .key,
        "ca.crt"
    );
    assert!(spec("{caOnly: true}")
        .validate()
        .unwrap_err()
        .contains("caBundle"));
    assert!(spec("{plainHttp: true, caBundle: {secretName: ca}}")
        .validate()
        .unwrap_err()
        .contains("exclude"));
    assert!(spec("{plainHttp: true}").validate().is_ok());
    assert!(spec("{caBundle: {configMapName: ca}}").validate().is_ok());
    for neither_or_both in [
        "{caBundle: {key: ca.crt}}",
        "{caBundle: {secretName: ca, configMapName: ca}}",
        "{caBundle: {secretName: ''}}",
    ] {
        assert!(
            spec(neither_or_both)
                .validate()
                .unwrap_err()
                .contains("exactly one of secretName and configMapName"),
            "{neither_or_both}"
        );
    }
}
