//! Admission on its own listener: exchanges saturating the credential port's
//! limit leave admission answering within its budget, and with
//! `clientCAFile` a client without the API server's certificate is refused at
//! the handshake — before any registry is asked anything — while one with it
//! is pinned against a real htpasswd `docker-registry`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pullbroker_broker::tls::{make_serving_cert, ReloadingCert};
use pullbroker_broker::{config, Broker};
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::admission::{self, WEB};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::{skopeo, Env, PASSWORD, REPO, USER};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::Value;

/// The API server's client identity: a CA and a certificate it signed for
/// client authentication, as in kube-apiserver's AdmissionConfiguration.
struct ClientPki {
    ca_pem: String,
    identity_pem: String,
}

fn client_pki() -> ClientPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "front-proxy / webhook client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    ClientPki {
        ca_pem: ca_cert.pem(),
        identity_pem: format!("{}{}", cert.pem(), key.serialize_pem()),
    }
}

struct Running {
    dir: tempfile::TempDir,
    main: String,
    admission: String,
    serving_ca: String,
    token: String,
    /// Connections the "canary" registry accepted (it answers nothing).
    canary_connections: Arc<AtomicUsize>,
    canary: String,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

/// A registry that counts the connections it accepts and answers nothing
/// (bounded: 64 connections, then it stops accepting).
fn canary_registry(count: Arc<AtomicUsize>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(64) {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    addr
}

async fn start(client_ca: Option<&str>) -> Running {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::ec(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    std::fs::create_dir(dir.path().join("sources")).unwrap();
    let source = dir.path().join("sources/slow");
    std::fs::write(&source, support::SLOW_SOURCE).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serving = make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls/tls.key"), &serving.key_pem).unwrap();
    let client_ca_line = match client_ca {
        Some(pem) => {
            std::fs::write(dir.path().join("apiserver-client-ca.crt"), pem).unwrap();
            "clientCAFile: apiserver-client-ca.crt, "
        }
        None => "",
    };
    let canary_connections = Arc::new(AtomicUsize::new(0));
    let canary = canary_registry(canary_connections.clone());
    let basic = env.basic.host();
    let auth =
        format!(r#"{{"auths":{{"{basic}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#);
    let path = dir.path().join("broker.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: b}}
spec:
  listen: 127.0.0.1:0
  tls: {{certFile: tls/tls.crt, keyFile: tls/tls.key}}
  execSourceDir: sources
  limits: {{maxConcurrentRequests: 1, requestTimeout: 40s}}
  admission: {{listen: "127.0.0.1:0", {client_ca_line}maxConcurrentRequests: 8}}
  serviceAccountIssuer: {{issuer: {KUBE_ISSUER}, jwksFile: jwks.json}}
---
apiVersion: v1
kind: Secret
metadata: {{name: basic-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{auth}'}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: basic}}
spec: {{registries: ["{basic}"], source: {{secretRef: {{name: basic-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: canary}}
spec: {{registries: ["{canary}"], source: {{secretRef: {{name: basic-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: cloud}}
spec: {{registries: [r.example], source: {{exec: {{command: slow}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pin}}
spec: {{credential: basic, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: [{REPO}], purposes: [resolve]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pin-canary}}
spec: {{credential: canary, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pull}}
spec: {{credential: cloud, subjects: {{namespaces: [team-a], serviceAccounts: [app]}}, repositories: ['**'], purposes: [pull]}}
"#
        ),
    )
    .unwrap();
    let snapshot = config::load(&path).unwrap();
    let cert = ReloadingCert::load(snapshot.listeners.tls.as_ref().unwrap()).unwrap();
    let broker = Broker::new(snapshot, None, ClientSettings::default(), None)
        .await
        .unwrap();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admission = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = (
        format!("https://{}", main.local_addr().unwrap()),
        format!("https://{}", admission.local_addr().unwrap()),
    );
    let (b, c) = (broker.clone(), cert.clone());
    let servers = vec![
        tokio::spawn(async move {
            b.serve_tls(main, c, std::future::pending()).await.unwrap();
        }),
        tokio::spawn(async move {
            broker
                .serve_admission_tls(admission, cert, std::future::pending())
                .await
                .unwrap();
        }),
    ];
    Running {
        dir,
        main: urls.0,
        admission: urls.1,
        serving_ca: serving.ca_pem,
        token: issuer.token("team-a", "app", "pullbroker"),
        canary_connections,
        canary,
        servers,
    }
}

fn client(r: &Running, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(45))
        .tls_certs_only([reqwest::Certificate::from_pem(r.serving_ca.as_bytes()).unwrap()]);
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn review(
    r: &Running,
    identity: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let resp = client(r, identity)
        .post(format!("{}/v1/admission/pin?timeout=10s", r.admission))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

fn pinned_digest(response: &Value) -> Option<String> {
    use base64::Engine as _;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str()?)
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    ops.iter()
        .filter(|op| op["op"] == "replace")
        .find_map(|op| {
            op["value"]
                .as_str()?
                .split_once('@')
                .map(|(_, d)| d.to_string())
        })
}

async fn in_flight(r: &Running) -> Option<String> {
    let text = client(r, None)
        .get(format!("{}/metrics", r.main))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("pullbroker_in_flight_requests "))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_saturated_past_its_limit_leaves_admission_answering() {
    let r = start(None).await;
    let env = Env::shared();
    let image = env.image(&env.basic, "v1");
    let want = skopeo::digest(&image, Some((USER, PASSWORD))).unwrap();

    // The credential port's one slot is taken by an exchange waiting for
    // its exec source; the next exchange is refused at once.
    let held = {
        let (c, url, token) = (client(&r, None), r.main.clone(), r.token.clone());
        tokio::spawn(async move {
            c.post(format!("{url}/v1/exchange"))
                .json(&serde_json::json!({"token": token, "image": "r.example/apps/web:v1"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight(&r).await.as_deref() != Some("pullbroker_in_flight_requests 1") {
        assert!(
            Instant::now() < deadline,
            "the exchange never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = client(&r, None)
        .post(format!("{}/v1/exchange", r.main))
        .json(&serde_json::json!({"token": r.token, "image": "r.example/apps/web:v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503, "the credential port is saturated");

    // Admission, on its own listener and limit, still pins within its budget.
    let body = admission::review("pod-create-by-user", "team-a", &[(WEB, &image)]);
    let started = Instant::now();
    let (status, answer) = review(&r, None, &body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(
        pinned_digest(&answer["response"]).as_deref(),
        Some(want.as_str())
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the review's budget"
    );

    // The credential port no longer serves admission at all.
    let elsewhere = client(&r, None)
        .post(format!("{}/v1/admission/pin?timeout=10s", r.main))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);

    std::fs::write(r.dir.path().join("sources/release"), "").unwrap();
    assert_eq!(held.await.unwrap(), 200);
}

#[tokio::test]
async fn with_a_client_ca_only_the_api_servers_certificate_gets_a_review() {
    let pki = client_pki();
    let r = start(Some(&pki.ca_pem)).await;
    let env = Env::shared();

    // Without a certificate: refused at the handshake, and the registry the
    // review names is never contacted.
    let canary_image = format!("{}/apps/web:1.0", r.canary);
    let body = admission::review("pod-create-by-user", "team-a", &[(WEB, &canary_image)]);
    let refused = review(&r, None, &body).await;
    assert!(
        refused.is_err(),
        "answered without a client certificate: {refused:?}"
    );
    // A certificate from another CA fares no better.
    let stranger = client_pki();
    assert!(review(&r, Some(&stranger.identity_pem), &body)
        .await
        .is_err());
    assert_eq!(
        r.canary_connections.load(Ordering::SeqCst),
        0,
        "no registry call"
    );

    // With the API server's certificate: pinned.
    let image = env.image(&env.basic, "v1");
    let want = skopeo::digest(&image, Some((USER, PASSWORD))).unwrap();
    let body = admission::review("pod-create-by-user", "team-a", &[(WEB, &image)]);
    let (status, answer) = review(&r, Some(&pki.identity_pem), &body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        pinned_digest(&answer["response"]).as_deref(),
        Some(want.as_str())
    );

    // The credential port asks for no client certificate.
    let healthz = client(&r, None)
        .get(format!("{}/healthz", r.main))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
}
