//! The registries a platform team really has, reached by `pullbroker serve`
//! in cluster mode: a TLS registry behind a private CA (the CA a Secret in
//! the system namespace, named by the RegistryCredential's
//! `transport.caBundle`) and known by a name only a real forward proxy
//! (Debian `squid`) resolves. With `HTTPS_PROXY` set, registry traffic goes
//! through the proxy while the API server and the issuer (loopback) never
//! do; the CA Secret replaced takes effect without a restart, and so does a
//! CA bundle from a ConfigMap.

use std::time::{Duration, Instant};

use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::pki::PrivateCa;
use pullbroker_testenv::squid::Squid;
use pullbroker_testenv::{skopeo, Auth, Env, Registry, RegistryOptions};
use serde_json::{json, Value};

#[path = "support/procs.rs"]
mod procs;

const NAME: &str = "harbor.proxy.test";

fn post(fake: &FakeApi, path: &str, body: Value) {
    let (status, out) = procs::http(&fake.url, "POST", path, &body.to_string());
    assert!(status < 300, "{path}: {out}");
}

fn ca_secret(ca: &str) -> Value {
    json!({"metadata": {"name": "corp-ca"}, "stringData": {"ca.crt": ca}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reaches_a_private_ca_registry_through_the_proxy_and_never_proxies_the_api_server() {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::new("Corp Root CA").unwrap();
    let other = PrivateCa::new("Another CA").unwrap();
    let tls = ca
        .server(&dir.path().join("tls"), &[NAME, "127.0.0.1"])
        .unwrap();
    let registry = Registry::start(RegistryOptions {
        name: "harbor".into(),
        auth: Auth::Anonymous,
        tls: Some(tls),
        quiet: true,
        data_dir: None,
    })
    .unwrap();
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        let dest = format!("{}/apps/web:{tag}", registry.host());
        skopeo::copy(&env.layout, "v1", &dest, None, skopeo::Format::Oci, false).unwrap();
    }
    let want = skopeo::digest(&format!("{}/apps/web:v1", registry.host()), None).unwrap();
    let squid = Squid::start(&[NAME]).unwrap();
    let named = format!("{NAME}:{}", registry.addr.port());

    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    post(
        &fake,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "pullbroker-system"}}),
    );
    post(
        &fake,
        "/api/v1/namespaces/pullbroker-system/secrets",
        ca_secret(&ca.cert_pem),
    );
    post(
        &fake,
        "/api/v1/namespaces/pullbroker-system/secrets",
        json!({"metadata": {"name": "harbor-auth"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json!({"auths": {&named: {"username": "robot", "password": "harbor-CANARY-55e1"}}}).to_string()}}),
    );
    post(
        &fake,
        "/apis/pullbroker.dev/v1alpha1/registrycredentials",
        json!({"apiVersion": "pullbroker.dev/v1alpha1",
        "kind": "RegistryCredential", "metadata": {"name": "harbor"}, "spec": {"registries": [&named],
        "source": {"secretRef": {"name": "harbor-auth"}},
        "transport": {"caBundle": {"secretName": "corp-ca"}, "caOnly": true}}}),
    );
    post(
        &fake,
        "/apis/pullbroker.dev/v1alpha1/pullgrants",
        json!({"apiVersion": "pullbroker.dev/v1alpha1",
        "kind": "PullGrant", "metadata": {"name": "team-a"}, "spec": {"credential": "harbor",
        "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]}, "repositories": ["apps/**"],
        "purposes": ["resolve"]}}),
    );
    post(
        &fake,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "team-a"}}),
    );
    post(
        &fake,
        "/api/v1/namespaces/team-a/serviceaccounts",
        json!({"metadata": {"name": "app"}}),
    );
    post(
        &fake,
        "/api/v1/namespaces/team-a/pods",
        json!({"metadata": {"name": "web-0"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "x"}]}}),
    );

    let proxy = squid.url();
    let broker = procs::broker_with_env(
        &fake,
        dir.path(),
        &[
            ("HTTPS_PROXY", &proxy),
            ("HTTP_PROXY", &proxy),
            ("NO_PROXY", ""),
        ],
    );
    let token = procs::pod_token(&fake, "team-a", "web-0", "app");
    let resolve = |tag: &str| -> Value {
        let (status, body) = procs::http_with(
            &broker.url,
            "POST",
            "/v1/resolve",
            &json!({"namespace": "team-a", "images": [format!("{named}/apps/web:{tag}")]})
                .to_string(),
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["results"][0].clone()
    };
    // Through the proxy (only it resolves the name), trusting the CA Secret.
    let r = resolve("v1");
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");

    // The CA Secret replaced by another CA's: refused as soon as the
    // broker has installed the change (its config generation moves),
    // naming the unknown authority; then back, no restart.
    let generation = || -> i64 {
        let (_, body) = procs::http(&broker.url, "GET", "/healthz", "");
        serde_json::from_str::<Value>(&body).unwrap()["configGeneration"]
            .as_i64()
            .unwrap()
    };
    // A write to the API server, returning once the broker installed it.
    let write = |method: &str, path: &str, body: Value| {
        let before = generation();
        let (status, out) = procs::http(&fake.url, method, path, &body.to_string());
        assert!(status < 300, "{out}");
        let start = Instant::now();
        while generation() == before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{path}: the change never arrived"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let replace_ca = |pem: &str| {
        write(
            "PUT",
            "/api/v1/namespaces/pullbroker-system/secrets/corp-ca",
            ca_secret(pem),
        )
    };
    replace_ca(&other.cert_pem);
    let r = resolve("v2");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("unknown authority") && msg.contains(&named),
        "{r}"
    );
    replace_ca(&ca.cert_pem);
    let r = resolve("v3");
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");

    // The CA from a ConfigMap instead (as trust-manager distributes it):
    // the credential switched to it while it holds the wrong CA refuses;
    // the ConfigMap mended serves, both without a restart.
    let trust_map =
        |pem: &str| json!({"metadata": {"name": "corp-trust"}, "data": {"ca.crt": pem}});
    write(
        "POST",
        "/api/v1/namespaces/pullbroker-system/configmaps",
        trust_map(&other.cert_pem),
    );
    // A custom resource is updated with its resourceVersion, as a real
    // API server requires.
    let path = "/apis/pullbroker.dev/v1alpha1/registrycredentials/harbor";
    let (_, body) = procs::http(&fake.url, "GET", path, "");
    let mut credential: Value = serde_json::from_str(&body).unwrap();
    credential["spec"]["transport"] =
        json!({"caBundle": {"configMapName": "corp-trust"}, "caOnly": true});
    write("PUT", path, credential);
    // Tags not resolved before: digests are cached.
    let r = resolve("v4");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown authority"), "{r}");
    write(
        "PUT",
        "/api/v1/namespaces/pullbroker-system/configmaps/corp-trust",
        trust_map(&ca.cert_pem),
    );
    let r = resolve("v5");
    assert_eq!(r["digest"].as_str(), Some(want.as_str()), "{r}");

    // Stopped, its tunnels close and squid logs them: registry traffic went
    // through the proxy, the API server and the issuer never did.
    drop(broker);
    squid
        .wait_for_line(&format!("CONNECT {named}"), Duration::from_secs(10))
        .unwrap();
    let api = fake.url.trim_start_matches("http://").to_string();
    for line in squid.lines() {
        assert!(!line.contains(&api), "the API server was proxied: {line}");
        assert!(!line.contains("harbor-CANARY"), "{line}");
    }
}
