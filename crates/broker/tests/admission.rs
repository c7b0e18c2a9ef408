//! Admission digest pinning end to end: the broker over TLS, real
//! AdmissionReview requests (captured from kube-apiserver v1.32) re-aimed at
//! real `docker-registry` instances — htpasswd (a static central credential)
//! and token auth (the broker's own signing key) — and registries that refuse
//! connections or never answer.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pullbroker_broker::tls::{make_serving_cert, ReloadingCert};
use pullbroker_broker::{config, Broker};
use pullbroker_credentials::keys::SigningKey;
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::admission::{self, HELLO, SIDECAR, WEB};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::registry::TokenAuth;
use pullbroker_testenv::{skopeo, Auth, Env, Registry, RegistryOptions, PASSWORD, USER};
use serde_json::{json, Value};

const DEAD_PASSWORD: &str = "dead-CANARY-71aa";

struct Pinning {
    dir: tempfile::TempDir,
    issuer: TestIssuer,
    url: String,
    ca_pem: String,
    env: &'static Env,
    token: Registry,
    twin: Registry,
    dead: String,
    _dead_port: pullbroker_testenv::net::RefusedPort,
    hung: String,
    limited: Limited,
    cert: Arc<ReloadingCert>,
    server: tokio::task::JoinHandle<()>,
    _hung_listener: std::thread::JoinHandle<()>,
}

impl Drop for Pinning {
    fn drop(&mut self) {
        self.server.abort();
        self.limited.server.abort();
    }
}

/// A listener that accepts connections and never answers (bounded: it
/// stops accepting after 64 connections; the test process ends it).
fn hung_registry() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(64) {
            held.push(s);
        }
    });
    (addr, h)
}

/// A registry that relays to `upstream` (a real `docker-registry`) until
/// told to rate-limit: then every manifest request is answered 429 with
/// `Retry-After: 30`, as Docker Hub answers past its pull limit.
struct Limited {
    host: String,
    limiting: Arc<std::sync::atomic::AtomicBool>,
    manifest_requests: Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

async fn limited_registry(upstream: String) -> Limited {
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    #[derive(Clone)]
    struct St {
        upstream: String,
        limiting: Arc<AtomicBool>,
        manifests: Arc<AtomicUsize>,
        http: reqwest::Client,
    }
    async fn relay(State(st): State<St>, req: Request) -> Response {
        let path = req.uri().path().to_string();
        if path.contains("/manifests/") {
            st.manifests.fetch_add(1, Ordering::SeqCst);
            if st.limiting.load(Ordering::SeqCst) {
                return (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "30"), ("content-type", "application/json")],
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit"}]}"#,
                )
                    .into_response();
            }
        }
        let mut up = st.http.request(
            req.method().clone(),
            format!("http://{}{path}", st.upstream),
        );
        if let Some(accept) = req.headers().get("accept") {
            up = up.header("accept", accept);
        }
        let resp = up.send().await.unwrap();
        let mut out = axum::http::Response::builder().status(resp.status().as_u16());
        for h in [
            "content-type",
            "docker-content-digest",
            "content-length",
            "docker-distribution-api-version",
        ] {
            if let Some(v) = resp.headers().get(h) {
                out = out.header(h, v.as_bytes());
            }
        }
        out.body(axum::body::Body::from(resp.bytes().await.unwrap()))
            .unwrap()
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let limiting = Arc::new(AtomicBool::new(false));
    let manifests = Arc::new(AtomicUsize::new(0));
    let st = St {
        upstream,
        limiting: limiting.clone(),
        manifests: manifests.clone(),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let app = axum::Router::new().fallback(relay).with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Limited {
        host,
        limiting,
        manifest_requests: manifests,
        server,
    }
}

fn config_yaml(env: &Env, token: &str, dead: &str, hung: &str, limited: &str) -> String {
    let basic = env.basic.host();
    let auth = |host: &str, user: &str, pw: &str| {
        format!(r#"{{"auths":{{"{host}":{{"username":"{user}","password":"{pw}"}}}}}}"#)
    };
    format!(
        r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: b}}
spec:
  tls: {{certFile: tls/tls.crt, keyFile: tls/tls.key}}
  serviceAccountIssuer: {{issuer: "{KUBE_ISSUER}", jwksFile: jwks.json}}
  secretFiles:
    corp-signer: {{tls.key: signer/tls.key, tls.crt: signer/tls.crt}}
  admission:
    skipRegistries: [skipped.example]
---
apiVersion: v1
kind: Secret
metadata: {{name: basic-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{basic_auth}'}}
---
apiVersion: v1
kind: Secret
metadata: {{name: dead-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{dead_auth}'}}
---
apiVersion: v1
kind: Secret
metadata: {{name: hung-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{hung_auth}'}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: basic}}
spec: {{registries: ["{basic}"], source: {{secretRef: {{name: basic-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: corp}}
spec:
  registries: ["{token}"]
  source: {{tokenIssuer: {{signingKeySecretRef: {{name: corp-signer}}, service: {svc}, issuer: {iss}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: dead}}
spec: {{registries: ["{dead}"], source: {{secretRef: {{name: dead-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: hung}}
spec: {{registries: ["{hung}"], source: {{secretRef: {{name: hung-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pin-basic}}
spec: {{credential: basic, subjects: {{namespaces: [team-a], serviceAccounts: [app, default]}}, repositories: [demo/app], purposes: [resolve]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pin-corp}}
spec: {{credential: corp, subjects: {{namespaces: [team-a], serviceAccounts: [app]}}, repositories: [demo/app], purposes: [resolve, pull]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: sync-a}}
spec: {{credential: corp, subjects: {{namespaces: [team-a], serviceAccounts: [app]}}, repositories: [demo/app], purposes: [sync]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: dead-fail}}
spec: {{credential: dead, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: dead-ignore}}
spec: {{credential: dead, subjects: {{namespaces: [team-soft], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve], admission: {{failurePolicy: Ignore}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: limited-auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{limited_auth}'}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: limited}}
spec: {{registries: ["{limited}"], source: {{secretRef: {{name: limited-auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: limited-fail}}
spec: {{credential: limited, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: limited-ignore}}
spec: {{credential: limited, subjects: {{namespaces: [team-soft], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve], admission: {{failurePolicy: Ignore}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: hung-fail}}
spec: {{credential: hung, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve]}}
"#,
        basic_auth = auth(&basic, USER, PASSWORD),
        dead_auth = auth(dead, "u", DEAD_PASSWORD),
        hung_auth = auth(hung, "u", DEAD_PASSWORD),
        limited_auth = auth(limited, "u", DEAD_PASSWORD),
        svc = support::SERVICE,
        iss = support::REGISTRY_ISSUER,
    )
}

/// Every log line of this test binary, at debug (trace for our crates).
fn logs() -> &'static pullbroker_testenv::logs::Capture {
    pullbroker_testenv::logs::capture_all(
        "debug,pullbroker_broker=trace,pullbroker_credentials=trace,pullbroker_registry=trace",
    )
}

fn assert_no_credential_logged() {
    let text = logs().text();
    assert!(
        text.contains("\"endpoint\":\"admission\""),
        "admission audit events were captured"
    );
    for canary in [PASSWORD, DEAD_PASSWORD] {
        assert!(!text.contains(canary), "a credential reached the log");
    }
}

async fn start() -> Pinning {
    logs();
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    let (key_pem, cert_pem) = SigningKey::generate("admission e2e").unwrap();
    std::fs::create_dir_all(dir.path().join("signer")).unwrap();
    std::fs::write(dir.path().join("signer/tls.key"), &key_pem).unwrap();
    std::fs::write(dir.path().join("signer/tls.crt"), &cert_pem).unwrap();
    let serving = make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls/tls.key"), &serving.key_pem).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let data = dir.path().join("registry-data");
    let token = Registry::start(RegistryOptions {
        name: "admission-token".into(),
        auth: Auth::Token(TokenAuth {
            realm: format!("{url}/token"),
            service: support::SERVICE.into(),
            issuer: support::REGISTRY_ISSUER.into(),
            rootcertbundle: dir.path().join("signer/tls.crt"),
        }),
        tls: None,
        quiet: true,
        data_dir: Some(data.clone()),
    })
    .unwrap();
    let twin = Registry::start(RegistryOptions {
        name: "admission-twin".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: Some(data),
    })
    .unwrap();
    for (repo, tag) in [
        ("demo/app", "latest"),
        ("demo/app", "v1"),
        ("other/app", "v1"),
    ] {
        let dest = format!("{}/{repo}:{tag}", twin.host());
        skopeo::copy(&env.layout, "v1", &dest, None, skopeo::Format::Oci, false).unwrap();
    }
    let (hung, hung_listener) = hung_registry();
    let dead_port = pullbroker_testenv::net::RefusedPort::new();
    let dead = dead_port.host();
    let config_path = dir.path().join("broker.yaml");
    let limited = limited_registry(twin.host()).await;
    std::fs::write(
        &config_path,
        config_yaml(env, &token.host(), &dead, &hung, &limited.host),
    )
    .unwrap();
    let snapshot = config::load(&config_path).unwrap();
    let tls = snapshot.listeners.tls.clone().expect("tls configured");
    let cert = ReloadingCert::load(&tls).unwrap();
    let broker = Broker::new(snapshot, None, ClientSettings::default(), None)
        .await
        .unwrap();
    let served = cert.clone();
    let server = tokio::spawn(async move {
        broker
            .serve_tls(listener, served, std::future::pending())
            .await
            .unwrap();
    });
    Pinning {
        dir,
        issuer,
        url,
        ca_pem: serving.ca_pem,
        env,
        token,
        twin,
        dead,
        _dead_port: dead_port,
        hung,
        limited,
        cert,
        server,
        _hung_listener: hung_listener,
    }
}

fn client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    pullbroker_broker::http_client(Some(ca_pem.as_bytes())).unwrap()
}

/// POSTs a review as the API server does (`?timeout=` appended); returns
/// (HTTP status, body, elapsed).
async fn post(p: &Pinning, body: &[u8], timeout: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let resp = client(&p.ca_pem)
        .post(format!("{}/v1/admission/pin?timeout={timeout}", p.url))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    for canary in [PASSWORD, DEAD_PASSWORD] {
        assert!(!text.contains(canary), "a credential in a response: {text}");
    }
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        started.elapsed(),
    )
}

async fn pin(p: &Pinning, review: &Value) -> Value {
    let (status, body, _) = post(p, review.to_string().as_bytes(), "10s").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    body["response"].clone()
}

fn patch_of(resp: &Value) -> Vec<Value> {
    let Some(b64) = resp["patch"].as_str() else {
        return vec![];
    };
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    serde_json::from_slice::<Vec<Value>>(&bytes).unwrap()
}

fn replaced(patch: &[Value]) -> Vec<(String, String)> {
    patch
        .iter()
        .filter(|op| op["op"] == "replace")
        .map(|op| {
            (
                op["path"].as_str().unwrap().to_string(),
                op["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn skopeo_digest(image: &str, creds: Option<(&str, &str)>) -> String {
    skopeo::digest(image, creds).unwrap()
}

#[tokio::test]
async fn pins_granted_images_over_tls_and_leaves_everything_else() {
    let p = start().await;
    let basic_img = p.env.image(&p.env.basic, "v1");
    let want = skopeo_digest(&basic_img, Some((USER, PASSWORD)));

    // A user's Pod (default service account, granted by pin-basic).
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &basic_img)]);
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], true);
    let patch = patch_of(&resp);
    assert_eq!(
        replaced(&patch),
        vec![(
            "/spec/containers/0/image".into(),
            format!("{basic_img}@{want}")
        )]
    );
    assert!(
        patch
            .iter()
            .any(|op| op["op"] == "test" && op["value"] == basic_img.as_str()),
        "each replace is guarded by a test of the old value: {patch:?}"
    );
    assert!(
        !patch
            .iter()
            .any(|op| op["path"].as_str().unwrap().contains("imagePullSecrets")),
        "the default account has no sync grant"
    );
    assert!(resp["auditAnnotations"]["pinned"]
        .as_str()
        .unwrap()
        .contains(&want));

    // A Deployment: the pod template's image.
    let review = admission::review("deployment-create", "team-a", &[(WEB, &basic_img)]);
    let patch = patch_of(&pin(&p, &review).await);
    assert_eq!(
        replaced(&patch),
        vec![(
            "/spec/template/spec/containers/0/image".into(),
            format!("{basic_img}@{want}")
        )]
    );

    // Children of pinned kinds are never touched (no ReplicaSet storms).
    for child in [
        "replicaset-create-by-deployment-controller",
        "pod-create-by-replicaset-controller",
    ] {
        let review = admission::review(child, "team-a", &[(WEB, &basic_img)]);
        let resp = pin(&p, &review).await;
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none(), "{child}: {resp}");
        assert!(resp["auditAnnotations"]["skipped"]
            .as_str()
            .unwrap()
            .starts_with("owned by "));
    }

    // Not opted in: another namespace, another account, another repository.
    let review = admission::review("pod-create-by-user", "team-b", &[(WEB, &basic_img)]);
    assert!(
        pin(&p, &review).await.get("patch").is_none(),
        "ungranted namespace"
    );
    let mut review = admission::review("pod-create-by-user", "team-a", &[(WEB, &basic_img)]);
    admission::set_service_account(&mut review, "/spec", "intruder");
    assert!(
        pin(&p, &review).await.get("patch").is_none(),
        "ungranted account"
    );
    let other = format!("{}/other/app:v1", p.env.basic.host());
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &other)]);
    assert!(
        pin(&p, &review).await.get("patch").is_none(),
        "ungranted repository"
    );
    let skipped = "skipped.example/demo/app:v1";
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, skipped)]);
    let resp = pin(&p, &review).await;
    assert!(resp.get("patch").is_none());
    assert!(resp["auditAnnotations"]["skipped"]
        .as_str()
        .unwrap()
        .contains("skips tag resolution"));
    // Already by digest: left alone, no registry asked.
    let by_digest = format!("{basic_img}@{want}");
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &by_digest)]);
    assert!(pin(&p, &review).await.get("patch").is_none());
    assert_no_credential_logged();
}

/// Every kind the webhook lists, built from the captured Deployment request:
/// the kind is set and the pod template moved to where that kind keeps it.
#[tokio::test]
async fn every_listed_kind_is_pinned_where_it_keeps_its_pod_spec() {
    use pullbroker_core::admission::Kind;
    let p = start().await;
    let img = p.env.image(&p.env.basic, "v1");
    let want = format!("{img}@{}", skopeo_digest(&img, Some((USER, PASSWORD))));
    let base = admission::review("deployment-create", "team-a", &[(WEB, &img)]);
    let pod_spec = base["request"]["object"]["spec"]["template"]["spec"].clone();
    for kind in Kind::ALL {
        let (group, version, name, resource) = kind.gvkr();
        let mut review = base.clone();
        let req = &mut review["request"];
        req["kind"] = json!({"group": group, "version": version, "kind": name});
        req["resource"] = json!({"group": group, "version": version, "resource": resource});
        let api = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let mut object =
            json!({"apiVersion": api, "kind": name, "metadata": req["object"]["metadata"].clone()});
        let pointer = kind.pod_spec_pointer();
        let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
        let mut at = &mut object;
        for part in &parts[..parts.len() - 1] {
            at = at
                .as_object_mut()
                .unwrap()
                .entry(*part)
                .or_insert(json!({}));
        }
        at[parts[parts.len() - 1]] = pod_spec.clone();
        req["object"] = object;
        let resp = pin(&p, &review).await;
        assert_eq!(
            replaced(&patch_of(&resp)),
            vec![(format!("{pointer}/containers/0/image"), want.clone())],
            "{name}"
        );
    }
}

#[tokio::test]
async fn knative_service_resolves_latest_only_through_the_central_credential() {
    let p = start().await;
    let hello = format!("{}/demo/app:latest", p.token.host());
    let sidecar = format!("{}/other/app:v1", p.token.host());
    // The token registry refuses anonymous clients: only the broker's key opens it.
    assert!(skopeo::digest(&hello, None).is_err());
    let want = skopeo_digest(&format!("{}/demo/app:latest", p.twin.host()), None);

    let review = admission::review(
        "knative-service-create",
        "team-a",
        &[(HELLO, &hello), (SIDECAR, &sidecar)],
    );
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = patch_of(&resp);
    // Only the granted repository is pinned; the sidecar's is not granted.
    assert_eq!(
        replaced(&patch),
        vec![(
            "/spec/template/spec/containers/0/image".into(),
            format!("{hello}@{want}")
        )]
    );
    // A Knative Service is not a Pod: no pull secret is added to it.
    assert!(!patch
        .iter()
        .any(|op| op["path"].as_str().unwrap().contains("imagePullSecrets")));
    let skipped = resp["auditAnnotations"]["skipped"].as_str().unwrap();
    assert!(skipped.contains("containers[side]: no grant"), "{skipped}");
}

#[tokio::test]
async fn pods_of_synced_accounts_get_the_managed_secret() {
    let p = start().await;
    let img = format!("{}/demo/app:v1", p.token.host());
    let mut review = admission::review("pod-create-by-user", "team-a", &[(WEB, &img)]);
    admission::set_service_account(&mut review, "/spec", "app");
    let resp = pin(&p, &review).await;
    let patch = patch_of(&resp);
    let add: Vec<&Value> = patch.iter().filter(|op| op["op"] == "add").collect();
    assert_eq!(add.len(), 1, "{patch:?}");
    assert_eq!(add[0]["path"], "/spec/imagePullSecrets");
    assert_eq!(add[0]["value"], json!([{"name": "pullbroker-sync-a"}]));
    assert_eq!(replaced(&patch).len(), 1, "and the image is pinned");

    // A Pod the replicaset controller creates: its image is never pinned
    // (the child of a pinned kind), but it gets the secret all the same.
    let mut child = admission::review(
        "pod-create-by-replicaset-controller",
        "team-a",
        &[(WEB, &img)],
    );
    admission::set_service_account(&mut child, "/spec", "app");
    let patch = patch_of(&pin(&p, &child).await);
    assert_eq!(replaced(&patch), vec![], "children are not pinned");
    assert_eq!(
        patch
            .iter()
            .filter(|op| op["op"] == "add")
            .map(|op| op["value"].clone())
            .collect::<Vec<_>>(),
        vec![json!([{"name": "pullbroker-sync-a"}])],
        "{patch:?}"
    );

    // Already there (the ServiceAccount plugin copied it): nothing added.
    review["request"]["object"]["spec"]["imagePullSecrets"] =
        json!([{"name": "pullbroker-sync-a"}]);
    let patch = patch_of(&pin(&p, &review).await);
    assert!(!patch.iter().any(|op| op["op"] == "add"), "{patch:?}");
}

#[tokio::test]
async fn failure_policy_fail_denies_and_ignore_warns_inside_the_deadline() {
    let p = start().await;
    let dead = format!("{}/apps/web:1.0", p.dead);
    // Fail (the default): denied, naming the image and the reason.
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &dead)]);
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], 403);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains(&dead) && msg.contains("dead-fail"), "{msg}");
    assert!(resp["auditAnnotations"]["failed"].is_string());
    // Ignore: admitted unchanged, with a warning.
    let review = admission::review("pod-create-by-user", "team-soft", &[(WEB, &dead)]);
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none());
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains(&dead) && warning.contains("Ignore"),
        "{warning}"
    );

    // A registry that never answers: denied as a timeout, before the API
    // server gives up. ?timeout=6s leaves resolution 4.5 s: the remaining
    // 1.5 s is the margin a loaded machine gets, not a race.
    let hung = format!("{}/apps/web:1.0", p.hung);
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &hung)]);
    let (status, body, elapsed) = post(&p, review.to_string().as_bytes(), "6s").await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    let msg = body["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("timeout"), "{msg}");
    assert!(elapsed < Duration::from_secs(6), "answered in {elapsed:?}");
    assert_no_credential_logged();
}

#[tokio::test]
async fn a_rate_limited_registry_fails_fast_with_its_class_and_cached_digests_still_pin() {
    use std::sync::atomic::Ordering;
    let p = start().await;
    let cached = format!("{}/demo/app:v1", p.limited.host);
    let fresh = format!("{}/demo/app:latest", p.limited.host);
    // Pinned while the registry answers: the digest is cached.
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &cached)]);
    let resp = pin(&p, &review).await;
    let want = skopeo_digest(&format!("{}/demo/app:v1", p.twin.host()), None);
    assert_eq!(
        replaced(&patch_of(&resp)),
        vec![(
            "/spec/containers/0/image".to_string(),
            format!("{cached}@{want}")
        )]
    );

    // The registry now rate-limits every manifest request.
    p.limited.limiting.store(true, Ordering::SeqCst);
    let before = p.limited.manifest_requests.load(Ordering::SeqCst);
    // The cached digest still pins, without asking the registry.
    let resp = pin(&p, &review).await;
    assert_eq!(replaced(&patch_of(&resp)).len(), 1, "{resp}");
    assert_eq!(p.limited.manifest_requests.load(Ordering::SeqCst), before);
    // A tag not cached: Fail denies with class rate_limited, at once (the
    // registry's Retry-After of 30 s is longer than any budget: no wait).
    let review = admission::review("pod-create-by-user", "team-a", &[(WEB, &fresh)]);
    let (status, body, elapsed) = post(&p, review.to_string().as_bytes(), "10s").await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false, "{body}");
    let msg = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("rate_limited") && msg.contains(&fresh),
        "{msg}"
    );
    assert!(elapsed < Duration::from_secs(3), "answered in {elapsed:?}");
    assert_eq!(
        p.limited.manifest_requests.load(Ordering::SeqCst),
        before + 1,
        "asked once, not retried sooner than the registry asks"
    );
    // Ignore admits it unchanged with a warning naming the class.
    let review = admission::review("pod-create-by-user", "team-soft", &[(WEB, &fresh)]);
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none());
    let warning = resp["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("rate_limited") && warning.contains("Ignore"),
        "{warning}"
    );

    // /metrics counts the 429s per registry and the failures by class.
    let metrics = client(&p.ca_pem)
        .get(format!("{}/metrics", p.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |needle: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(needle))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{needle} missing from\n{metrics}"))
    };
    assert_eq!(
        count(&format!(
            "pullbroker_registry_rate_limited_total{{registry=\"{}\"}} ",
            p.limited.host
        )),
        2
    );
    assert_eq!(
        count("pullbroker_admission_images_total{outcome=\"failed\",class=\"rate_limited\"} "),
        2
    );
    assert_no_credential_logged();
}

#[tokio::test]
async fn update_keeps_digests_unless_the_tag_changes() {
    let p = start().await;
    // The dead registry would fail any lookup: what passes here needs no network.
    let old = format!("{}/apps/web:1.0@sha256:{}", p.dead, "a".repeat(64));
    let mut review = admission::review(
        "deployment-create",
        "team-a",
        &[(WEB, &format!("{}/apps/web:1.0", p.dead))],
    );
    review["request"]["operation"] = json!("UPDATE");
    let mut old_object = review["request"]["object"].clone();
    old_object["spec"]["template"]["spec"]["containers"][0]["image"] = json!(old);
    review["request"]["oldObject"] = old_object.clone();
    // kubectl apply wrote the tag back: the old digest returns, no lookup.
    let patch = patch_of(&pin(&p, &review).await);
    assert_eq!(
        replaced(&patch),
        vec![("/spec/template/spec/containers/0/image".into(), old.clone())]
    );
    // An update that changes nothing else leaves the pinned image alone.
    review["request"]["object"] = old_object.clone();
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    // A new tag typed in front of the old digest is resolved (and here fails: Fail denies).
    let mut changed = old_object;
    changed["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!(old.replace(":1.0@", ":2.0@"));
    review["request"]["object"] = changed;
    let resp = pin(&p, &review).await;
    assert_eq!(resp["allowed"], false, "the new tag was looked up: {resp}");
}

#[tokio::test]
async fn bad_reviews_get_clean_errors_and_change_nothing() {
    let p = start().await;
    let good = admission::review(
        "pod-create-by-user",
        "team-a",
        &[(WEB, &p.env.image(&p.env.basic, "v1"))],
    );
    let text = good.to_string();
    let mut wrong_api = good.clone();
    wrong_api["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_object = good.clone();
    no_object["request"]["object"] = json!("x");
    for (what, body) in [
        ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
        ("not JSON", b"\x00\xffnope".to_vec()),
        ("empty", vec![]),
        ("wrong apiVersion", wrong_api.to_string().into_bytes()),
        ("object not an object", no_object.to_string().into_bytes()),
    ] {
        let (status, body, _) = post(&p, &body, "10s").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["class"], "invalid_review", "{what}");
    }
    // An unknown kind is allowed unchanged.
    let mut unknown = good.clone();
    unknown["request"]["kind"] = json!({"group": "example.com", "version": "v1", "kind": "Widget"});
    let resp = pin(&p, &unknown).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    // And the broker still pins afterwards.
    assert!(pin(&p, &good).await.get("patch").is_some());
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_serves_the_next_handshake() {
    let p = start().await;
    let _watcher = p.cert.spawn_watcher(Duration::from_millis(50));
    let health = |ca: String| {
        let url = format!("{}/healthz", p.url);
        async move {
            client(&ca)
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(health(p.ca_pem.clone()).await.unwrap(), 200);
    let next = make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
    assert!(
        health(next.ca_pem.clone()).await.is_err(),
        "new CA not served yet"
    );
    // Key first, then certificate: the half-written pair in between is refused.
    std::fs::write(p.dir.path().join("tls/tls.key"), &next.key_pem).unwrap();
    std::fs::write(p.dir.path().join("tls/tls.crt"), &next.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(next.ca_pem.clone()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        health(p.ca_pem.clone()).await.is_err(),
        "a client that trusts only the old CA is refused"
    );
}

/// The registry's token realm is the broker's TLS listener: a real client
/// (skopeo) follows the registry to `https://…/token` with an exchanged
/// broker credential and pulls.
#[tokio::test]
async fn the_token_realm_is_served_over_tls() {
    let p = start().await;
    let sa = p.issuer.token("team-a", "app", support::AUDIENCE);
    let image = format!("{}/demo/app:v1", p.token.host());
    let resp = client(&p.ca_pem)
        .post(format!("{}/v1/exchange", p.url))
        .json(&json!({"token": sa, "image": image}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.unwrap();
    let (user, password) = (
        answer["username"].as_str().unwrap().to_string(),
        answer["password"].as_str().unwrap().to_string(),
    );
    let want = skopeo_digest(&format!("{}/demo/app:v1", p.twin.host()), None);
    let got = tokio::task::spawn_blocking(move || skopeo::digest(&image, Some((&user, &password))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, want);
}
