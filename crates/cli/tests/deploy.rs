//! `deploy/`: every overlay renders with `kubectl kustomize`, every object
//! deserializes into its typed model and serializes back with no field
//! lost (a misspelt field fails), the checked-in generated parts equal what
//! the binary prints, and the workloads are hardened as restricted Pod
//! Security requires.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub const OVERLAYS: [&str; 3] = ["kep4412", "sync", "admission"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn pullbroker(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).unwrap()
}

/// `kubectl kustomize deploy/overlays/NAME`, as objects.
pub fn render(overlay: &str) -> Vec<Value> {
    kustomize(&deploy().join("overlays").join(overlay))
}

/// `kubectl kustomize DIR`, as objects.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    docs(&String::from_utf8(out.stdout).unwrap())
}

/// `deploy/overlays/NAME` with the optional `components` added, rendered from
/// a kustomization of the test's own (kustomize takes only relative paths,
/// so it lives under the workspace's `target/`).
pub fn render_with(overlay: &str, components: &[&str]) -> Vec<Value> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let mut k = format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../deploy/overlays/{overlay}\ncomponents:\n");
    for c in components {
        k.push_str(&format!("  - ../../deploy/components/{c}\n"));
    }
    std::fs::write(dir.path().join("kustomization.yaml"), k).unwrap();
    kustomize(dir.path())
}

/// The first place where `a` and `b` differ, as a JSON path.
fn diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(&format!("{path}.{k}"), p, q),
                    (Some(_), None) => Some(format!("{path}.{k} is lost")),
                    (None, Some(_)) => Some(format!("{path}.{k} appears")),
                    (None, None) => None,
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| diff(&format!("{path}[{i}]"), p, q)),
        _ => (a != b).then(|| format!("{path}: {a} became {b}")),
    }
}

fn through<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    match diff("", doc, &back) {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// Deserializes `doc` into the model of its kind and back; an error names
/// the field that did not survive.
pub fn round_trip(doc: &Value) -> Result<(), String> {
    macro_rules! typed {
        ($($t:ty),* $(,)?) => {{
            let (api, kind) = (doc["apiVersion"].as_str(), doc["kind"].as_str());
            $(
                if api == Some(<$t as k8s_openapi::Resource>::API_VERSION)
                    && kind == Some(<$t as k8s_openapi::Resource>::KIND)
                {
                    return through::<$t>(doc);
                }
            )*
            Err(format!("no typed model for {api:?} {kind:?}"))
        }};
    }
    typed!(
        Namespace,
        ServiceAccount,
        ConfigMap,
        Service,
        Deployment,
        PodDisruptionBudget,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        CustomResourceDefinition,
        MutatingWebhookConfiguration,
    )
}

fn name(doc: &Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"]
    )
}

#[test]
fn every_overlay_renders_and_every_object_round_trips_through_its_type() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        assert!(objects.len() > 10, "{overlay}: {}", objects.len());
        for doc in &objects {
            round_trip(doc).unwrap_or_else(|e| panic!("{overlay}: {}: {e}", name(doc)));
        }
    }
}

#[test]
fn a_misspelt_or_misplaced_field_fails_the_round_trip() {
    let deployment = render("sync")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let mut typo = deployment.clone();
    typo["spec"]["replicsa"] = 2.into();
    assert_eq!(round_trip(&typo).unwrap_err(), ".spec.replicsa is lost");
    let mut misplaced = deployment.clone();
    misplaced["spec"]["template"]["spec"]["containers"][0]["runAsNonRoot"] = true.into();
    assert!(round_trip(&misplaced)
        .unwrap_err()
        .contains("runAsNonRoot is lost"));
    let mut unknown = deployment;
    unknown["kind"] = "Deploymnet".into();
    assert!(round_trip(&unknown).unwrap_err().contains("no typed model"));
}

#[test]
fn the_checked_in_crds_are_what_pullbroker_crd_prints() {
    let file = std::fs::read_to_string(deploy().join("base/crds.yaml")).unwrap();
    assert!(
        file == pullbroker(&["crd"]),
        "deploy/base/crds.yaml is stale: pullbroker crd > deploy/base/crds.yaml"
    );
}

#[test]
fn the_checked_in_webhook_is_what_webhook_config_prints_less_its_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    pullbroker(&[
        "tls-cert",
        "--host",
        "pullbroker.pullbroker-system.svc",
        "--out-dir",
        out,
    ]);
    let ca = dir.path().join("ca.crt");
    let printed = pullbroker(&[
        "webhook-config",
        "--service",
        "pullbroker-system/pullbroker",
        "--port",
        "8444",
        "--ca-file",
        ca.to_str().unwrap(),
    ]);
    let mut printed = docs(&printed).remove(0);
    for hook in printed["webhooks"].as_array_mut().unwrap() {
        assert!(hook["clientConfig"]["caBundle"].is_string());
        hook["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle");
    }
    let file = std::fs::read_to_string(deploy().join("components/admission/webhook.yaml")).unwrap();
    assert_eq!(
        docs(&file).remove(0),
        printed,
        "deploy/components/admission/webhook.yaml is stale"
    );
}

/// The webhook reaches admission's own listener and nothing else: its
/// Service port leads to the container port the broker's `admission.listen`
/// binds, which is not the credential port.
#[test]
fn the_webhook_reaches_only_admissions_own_listener() {
    let objects = render("admission");
    let one = |kind: &str| -> &Value {
        let all: Vec<_> = objects.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "{kind}");
        all[0]
    };
    let hook = &one("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"];
    let service = objects
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == hook["name"])
        .expect("the webhook's Service");
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == hook["port"])
        .expect("the webhook's port on its Service");
    let broker = objects
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "pullbroker-broker")
        .unwrap();
    let container_port = broker["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's target port on the broker")["containerPort"]
        .as_i64()
        .unwrap();
    let config: Value =
        serde_saphyr::from_str(one("ConfigMap")["data"]["broker.yaml"].as_str().unwrap()).unwrap();
    let spec = &config["spec"];
    let admission_port = |key: &Value| -> i64 {
        key.as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(admission_port(&spec["admission"]["listen"]), container_port);
    assert_ne!(admission_port(&spec["listen"]), container_port);
    // Without the component, no admission listener is opened.
    for overlay in ["kep4412", "sync"] {
        let config: Value = serde_saphyr::from_str(
            render(overlay)
                .iter()
                .find(|d| d["kind"] == "ConfigMap")
                .unwrap()["data"]["broker.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(config["spec"]["admission"].is_null(), "{overlay}");
    }
}

/// Restricted Pod Security, probes and requests on every workload; the
/// broker highly available; its configuration valid and pointing at what
/// the Deployment mounts.
#[test]
fn workloads_are_hardened_and_the_broker_config_matches_its_mounts() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let of =
            |kind: &str| -> Vec<&Value> { objects.iter().filter(|d| d["kind"] == kind).collect() };
        let ns = of("Namespace");
        assert_eq!(
            ns[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for d in of("Deployment") {
            let d: Deployment = serde_json::from_value(d.clone()).unwrap();
            let what = format!("{overlay}: {}", d.metadata.name.clone().unwrap());
            let spec = d.spec.unwrap();
            assert!(spec.replicas.unwrap() >= 2, "{what}: replicas");
            let pod = spec.template.spec.unwrap();
            let psc = pod.security_context.unwrap();
            assert_eq!(psc.run_as_non_root, Some(true), "{what}");
            assert_eq!(psc.run_as_user, Some(65532), "{what}");
            assert_eq!(
                psc.seccomp_profile.unwrap().type_,
                "RuntimeDefault",
                "{what}"
            );
            assert!(
                pod.service_account_name.is_some(),
                "{what}: own service account"
            );
            for c in pod.containers {
                let sc = c.security_context.unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
                assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"], "{what}");
                assert!(
                    sc.privileged.is_none() && sc.run_as_user.is_none(),
                    "{what}"
                );
                assert_eq!(
                    c.image.as_deref(),
                    Some("registry.example/pullbroker:0.1.0")
                );
                let (live, ready) = (c.liveness_probe.unwrap(), c.readiness_probe.unwrap());
                assert_eq!(
                    live.http_get.unwrap().path.as_deref(),
                    Some("/healthz"),
                    "{what}"
                );
                assert_eq!(
                    ready.http_get.unwrap().path.as_deref(),
                    Some("/readyz"),
                    "{what}"
                );
                let res = c.resources.unwrap();
                assert!(res.requests.unwrap().contains_key("memory"), "{what}");
                assert!(res.limits.unwrap().contains_key("memory"), "{what}");
            }
        }
        let broker: Deployment = serde_json::from_value(
            of("Deployment")
                .into_iter()
                .find(|d| d["metadata"]["name"] == "pullbroker-broker")
                .unwrap()
                .clone(),
        )
        .unwrap();
        let pdb = of("PodDisruptionBudget");
        assert_eq!(
            pdb[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "pullbroker-broker"
        );
        let pod = broker.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .scheme
                .as_deref(),
            Some("HTTPS")
        );
        // The broker's configuration parses as the broker parses it, and
        // its files are where the Deployment mounts them.
        let cm: ConfigMap = serde_json::from_value(of("ConfigMap")[0].clone()).unwrap();
        let text = &cm.data.unwrap()["broker.yaml"];
        let mount = |path: &Path| -> bool {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| path.starts_with(&m.mount_path))
                || path.starts_with("/var/run/secrets/kubernetes.io/serviceaccount")
        };
        let config_arg = c
            .args
            .as_ref()
            .unwrap()
            .iter()
            .position(|a| a == "--config")
            .unwrap();
        let config_path = PathBuf::from(&c.args.as_ref().unwrap()[config_arg + 1]);
        assert!(mount(&config_path), "{}", config_path.display());
        let parsed: Value = serde_saphyr::from_str(text).unwrap();
        let spec = &parsed["spec"];
        for f in [
            &spec["tls"]["certFile"],
            &spec["tls"]["keyFile"],
            &spec["serviceAccountIssuer"]["tokenFile"],
            &spec["serviceAccountIssuer"]["caFile"],
        ] {
            assert!(
                mount(Path::new(f.as_str().unwrap())),
                "{overlay}: {f} is not mounted"
            );
        }
        assert_eq!(spec["policySource"], "kubernetes");
        // The files it names, under a scratch root (a serving pair, the
        // service-account token and CA): then the broker must accept it whole.
        let root = tempfile::tempdir().unwrap();
        let pair = pullbroker_broker::tls::make_serving_cert(&["pullbroker".into()], 1).unwrap();
        let at = |p: &Value| {
            root.path()
                .join(p.as_str().unwrap().trim_start_matches('/'))
        };
        for (f, content) in [
            (&spec["tls"]["certFile"], pair.cert_pem.as_str()),
            (&spec["tls"]["keyFile"], pair.key_pem.as_str()),
            (&spec["serviceAccountIssuer"]["tokenFile"], "token"),
            (
                &spec["serviceAccountIssuer"]["caFile"],
                pair.ca_pem.as_str(),
            ),
        ] {
            std::fs::create_dir_all(at(f).parent().unwrap()).unwrap();
            std::fs::write(at(f), content).unwrap();
        }
        let rooted = |p: &str| format!("{}{p}", root.path().display());
        let text = text
            .replace("/etc/pullbroker", &rooted("/etc/pullbroker"))
            .replace("/var/run/secrets", &rooted("/var/run/secrets"));
        pullbroker_broker::config::parse(&text, &root.path().join("broker.yaml"))
            .unwrap_or_else(|e| panic!("{overlay}: broker.yaml: {e}"));
    }
}

fn provider(yaml: &str) -> Value {
    let config = docs(yaml).remove(0);
    assert_eq!(config["apiVersion"], "kubelet.config.k8s.io/v1");
    assert_eq!(config["kind"], "CredentialProviderConfig");
    config["providers"][0].clone()
}

/// Every RegistryCredential's registries in a standalone file, as the test reads them.
fn registries_in(file: &Path) -> Vec<String> {
    let mut out: Vec<String> = docs(&std::fs::read_to_string(file).unwrap())
        .iter()
        .filter(|d| d["kind"] == "RegistryCredential")
        .flat_map(|d| d["spec"]["registries"].as_array().unwrap().clone())
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn kubelet_config_matches_the_credentials_registries_and_asks_for_the_pods_token() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone/broker.yaml");
    let p = provider(&pullbroker(&[
        "kubelet-config",
        "--config",
        example.to_str().unwrap(),
        "--broker-url",
        "https://pullbroker.corp.example:8443",
        "--match-image",
        "*.mirror.corp.example:5000",
    ]));
    let mut want = registries_in(&example);
    assert!(!want.is_empty());
    want.push("*.mirror.corp.example:5000".into());
    want.sort();
    assert_eq!(p["matchImages"], serde_json::json!(want));
    assert_eq!(p["name"], "pullbroker-credential-provider");
    assert_eq!(p["apiVersion"], "credentialprovider.kubelet.k8s.io/v1");
    let t = &p["tokenAttributes"];
    assert_eq!(t["serviceAccountTokenAudience"], "pullbroker");
    assert_eq!(t["cacheType"], "ServiceAccount");
    assert_eq!(t["requireServiceAccount"], true);
    assert_eq!(
        t["optionalServiceAccountAnnotationKeys"],
        serde_json::json!(["pullbroker.dev/repositories"])
    );
    let env: std::collections::BTreeMap<String, String> = p["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        env["PULLBROKER_URL"],
        "https://pullbroker.corp.example:8443"
    );
    assert_eq!(
        env["PULLBROKER_CA_FILE"],
        "/etc/kubernetes/pullbroker/ca.crt"
    );
    assert_eq!(env["PULLBROKER_AUDIENCE"], "pullbroker");

    // Plain http off loopback is refused: the pod's token would cross the network.
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args([
            "kubelet-config",
            "--broker-url",
            "http://10.1.2.3:8480",
            "--match-image",
            "r.example",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be https://"));
}

/// Registries the broker reaches through a `transport` of their own are
/// pulled by containerd on the nodes with the nodes' trust: kubelet-config
/// says what each node needs, and the config itself stays the same.
#[test]
fn kubelet_config_names_the_node_trust_a_private_ca_registry_needs() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples.join("issuer-jwks.json"),
        dir.path().join("issuer-jwks.json"),
    )
    .unwrap();
    let ca = pullbroker_testenv::pki::PrivateCa::new("Corp Root CA").unwrap();
    let pem: String = ca.cert_pem.lines().map(|l| format!("    {l}\n")).collect();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "{}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: corp-trust, namespace: pullbroker-system}}\ndata:\n  ca.crt: |\n{pem}---\napiVersion: pullbroker.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: harbor}}\nspec:\n  registries: [harbor.corp.example:8443]\n  source: {{secretRef: {{name: corp-pull}}}}\n  transport: {{caBundle: {{configMapName: corp-trust}}}}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: lab}}\nspec:\n  registries: [lab.corp.example]\n  source: {{secretRef: {{name: corp-pull}}}}\n  transport: {{plainHttp: true}}\n",
            std::fs::read_to_string(examples.join("broker.yaml")).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args([
            "kubelet-config",
            "--config",
            config.to_str().unwrap(),
            "--broker-url",
            "https://pb.corp.example:8443",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let p = provider(&String::from_utf8(out.stdout).unwrap());
    let images: Vec<&str> = p["matchImages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        images.contains(&"harbor.corp.example:8443") && images.contains(&"lab.corp.example"),
        "{images:?}"
    );
    for want in [
        "registry harbor.corp.example:8443 (RegistryCredential \"harbor\")",
        "ConfigMap \"corp-trust\", key \"ca.crt\"",
        "/etc/containerd/certs.d/harbor.corp.example:8443/hosts.toml",
        "ca = \"/etc/containerd/certs.d/harbor.corp.example:8443/ca.crt\"",
        "server = \"http://lab.corp.example\"",
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
    // The example, with no transport, prints no such note.
    let plain = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args([
            "kubelet-config",
            "--config",
            examples.join("broker.yaml").to_str().unwrap(),
            "--broker-url",
            "https://pb.corp.example:8443",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("hosts.toml"));
}

#[test]
fn kubelet_config_rbac_is_the_checked_in_component() {
    let printed = docs(&pullbroker(&["kubelet-config", "--rbac"]));
    let file =
        std::fs::read_to_string(deploy().join("components/kubelet/apiserver-rbac.yaml")).unwrap();
    assert_eq!(
        docs(&file),
        printed,
        "deploy/components/kubelet/apiserver-rbac.yaml is stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_config_reads_the_registries_from_the_cluster() {
    use pullbroker_testenv::fakeapi::FakeApi;
    use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let api: kube::Api<pullbroker_core::policy::model::RegistryCredential> =
        kube::Api::all(fake.client().await);
    for (name, registries) in [
        (
            "corp",
            vec!["registry.corp.example", "Mirror.corp.example:5000"],
        ),
        ("eu", vec!["*.eu.corp.example"]),
    ] {
        api.create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "pullbroker.dev/v1alpha1",
                "kind": "RegistryCredential",
                "metadata": {"name": name},
                "spec": {"registries": registries, "source": {"secretRef": {"name": name}}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pullbroker"))
            .args([
                "kubelet-config",
                "--from-cluster",
                "--broker-url",
                "https://10.0.0.5:8443",
                "-o",
                "json",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["providers"][0]["matchImages"],
        serde_json::json!([
            "*.eu.corp.example",
            "mirror.corp.example:5000",
            "registry.corp.example"
        ])
    );
}

// ---------------------------------------------------------------------------
// RBAC proven from the requests the suite made.

use pullbroker_testenv::api_log::{self, ApiRequest};

/// The rules of the built-in ClusterRoles our bindings name (as
/// kube-apiserver bootstraps them).
fn builtin(role: &str) -> Option<Vec<PolicyRule>> {
    let rule = |v: Value| serde_json::from_value::<PolicyRule>(v).unwrap();
    match role {
        "system:auth-delegator" => Some(vec![
            rule(
                serde_json::json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}),
            ),
            rule(
                serde_json::json!({"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}),
            ),
        ]),
        "system:service-account-issuer-discovery" => Some(vec![rule(serde_json::json!({
            "nonResourceURLs": ["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks", "/openid/v1/jwks/"],
            "verbs": ["get"]}))]),
        _ => None,
    }
}

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One grant of a rule to a user: through which binding, in which namespace
/// (None: cluster-wide), and whether the rule is ours (checked for use).
struct Granted {
    user: String,
    binding: String,
    namespace: Option<String>,
    rule: PolicyRule,
    ours: bool,
}

fn grants(objects: &[Value]) -> Vec<Granted> {
    let find = |kind: &str, name: &str, ns: Option<&str>| {
        objects.iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && ns.is_none_or(|n| o["metadata"]["namespace"] == n)
        })
    };
    let mut out = Vec::new();
    for b in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let namespace = b["metadata"]["namespace"].as_str().map(String::from);
        let (role_kind, role_name) = (
            b["roleRef"]["kind"].as_str().unwrap(),
            b["roleRef"]["name"].as_str().unwrap(),
        );
        let (rules, ours): (Vec<PolicyRule>, bool) = match find(
            role_kind,
            role_name,
            namespace.as_deref().filter(|_| role_kind == "Role"),
        ) {
            Some(role) => (serde_json::from_value(role["rules"].clone()).unwrap(), true),
            None => (
                builtin(role_name).unwrap_or_else(|| {
                    panic!("{role_kind} {role_name} is neither in deploy/ nor a known built-in")
                }),
                false,
            ),
        };
        for s in b["subjects"].as_array().into_iter().flatten() {
            let user = match s["kind"].as_str() {
                Some("ServiceAccount") => format!(
                    "system:serviceaccount:{}:{}",
                    s["namespace"].as_str().unwrap(),
                    s["name"].as_str().unwrap()
                ),
                // Nodes' requests are kubelet's, not ours (components/kubelet).
                _ => continue,
            };
            for rule in &rules {
                out.push(Granted {
                    user: user.clone(),
                    binding: format!(
                        "{} {}",
                        b["kind"].as_str().unwrap(),
                        b["metadata"]["name"].as_str().unwrap()
                    ),
                    namespace: namespace.clone(),
                    rule: rule.clone(),
                    ours,
                });
            }
        }
    }
    out
}

/// Whether `rule`, bound in `namespace`, allows `r` — through `verb`,
/// `group` and `resource` of the rule (the parts a "used" check counts).
fn allows(g: &Granted, r: &ApiRequest) -> Option<(String, String, String)> {
    if g.user != r.user {
        return None;
    }
    let rule = &g.rule;
    let verb = rule.verbs.iter().find(|v| *v == "*" || **v == r.verb)?;
    if !r.non_resource_path.is_empty() {
        let url = rule.non_resource_urls.iter().flatten().find(|u| {
            **u == r.non_resource_path
                || u.strip_suffix('*')
                    .is_some_and(|p| r.non_resource_path.starts_with(p))
        })?;
        return Some((verb.clone(), String::new(), url.clone()));
    }
    if g.namespace.as_ref().is_some_and(|n| *n != r.namespace) {
        return None;
    }
    let group = rule
        .api_groups
        .iter()
        .flatten()
        .find(|a| *a == "*" || **a == r.group)?;
    let wanted = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let resource = rule
        .resources
        .iter()
        .flatten()
        .find(|x| *x == "*" || **x == wanted)?;
    if let Some(names) = rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
        if !names.contains(&r.name) {
            return None;
        }
    }
    Some((verb.clone(), group.clone(), resource.clone()))
}

/// Run by `scripts/test.sh` after the whole suite (`-- --ignored`): every
/// request the controller and the broker made to the fake API server in
/// any test is allowed by `deploy/` (the admission overlay holds them all),
/// and every verb of every rule there was used by some request.
/// The rules (and, for our own roles, the verbs) no request in `requests` used.
fn unused_rules(granted: &[Granted], requests: &[ApiRequest]) -> Vec<String> {
    let mut unused = Vec::new();
    for g in granted {
        let used_by: Vec<_> = requests.iter().filter_map(|r| allows(g, r)).collect();
        if used_by.is_empty() {
            unused.push(format!("{}: nothing used it ({:?})", g.binding, g.rule));
        }
        if !g.ours {
            continue;
        }
        for verb in &g.rule.verbs {
            for group in g.rule.api_groups.iter().flatten() {
                for resource in g.rule.resources.iter().flatten() {
                    let key = (verb.clone(), group.clone(), resource.clone());
                    if !used_by.contains(&key) {
                        unused.push(format!(
                            "{}: {verb} {group}/{resource} is never used",
                            g.binding
                        ));
                    }
                }
            }
        }
    }
    unused
}

/// The KEP-4412 overlay's own instructions work on a fresh cluster: the
/// overlay creates the namespace its TLS Secret lives in, so the Secret is
/// created only after the overlay is applied (or after the namespace is
/// created by hand), and the broker waits for that Secret rather than
/// starting without it.
#[test]
fn the_kep4412_instructions_create_the_namespace_before_its_secret() {
    let objects = render("kep4412");
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == "pullbroker-system"),
        "the overlay creates the namespace"
    );
    let broker = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "pullbroker-broker")
        .unwrap();
    let tls = broker["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "pullbroker-broker-tls")
        .expect("the broker mounts its TLS Secret");
    assert_ne!(tls["secret"]["optional"], true, "the broker waits for it");

    let text =
        std::fs::read_to_string(deploy().join("overlays/kep4412/kustomization.yaml")).unwrap();
    let commands: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix("kubectl "))
        .collect();
    let at = |pred: &dyn Fn(&str) -> bool| commands.iter().position(|c| pred(c));
    let secret = at(&|c| c.contains("create secret") && c.contains("pullbroker-broker-tls"))
        .expect("the instructions create the TLS Secret");
    assert!(
        commands[secret].contains("-n pullbroker-system"),
        "{}",
        commands[secret]
    );
    let namespace_exists = at(&|c| {
        c.starts_with("apply -k deploy/overlays/kep4412")
            || c == "create namespace pullbroker-system"
    })
    .expect("the instructions apply the overlay");
    assert!(
        namespace_exists < secret,
        "the Secret is created before its namespace exists: {commands:?}"
    );
}

/// Pod deletion is an opt-in component: the shipped overlays neither pass
/// `--recreate-stuck-pods` nor grant `delete` on pods; with the component
/// they do both.
#[test]
fn pod_deletion_ships_only_in_its_opt_in_component() {
    let deletes_pods = |objects: &[Value]| {
        objects.iter().any(|o| {
            o["kind"] == "ClusterRole"
                && o["rules"].as_array().into_iter().flatten().any(|r| {
                    r["resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x == "pods")
                        && r["verbs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|v| v == "delete")
                })
        })
    };
    let flag = |objects: &[Value]| {
        objects.iter().any(|o| {
            o["kind"] == "Deployment"
                && o["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a == "--recreate-stuck-pods")
        })
    };
    for overlay in OVERLAYS {
        let objects = render(overlay);
        assert!(!deletes_pods(&objects) && !flag(&objects), "{overlay}");
    }
    for overlay in ["sync", "admission"] {
        let objects = render_with(overlay, &["recreate-stuck-pods"]);
        assert!(
            deletes_pods(&objects) && flag(&objects),
            "{overlay} + component"
        );
    }
}

#[test]
#[ignore = "needs the whole suite's requests first: scripts/test.sh runs it last"]
fn the_shipped_rbac_allows_every_request_the_suite_made_and_nothing_unused() {
    let requests = api_log::read_all().unwrap_or_else(|e| {
        panic!(
            "no recorded requests in {} ({e}): run scripts/test.sh",
            api_log::dir().display()
        )
    });
    let ours = [api_log::CONTROLLER, api_log::BROKER];
    let requests: Vec<ApiRequest> = requests
        .into_iter()
        .filter(|r| ours.contains(&r.user.as_str()))
        .collect();
    for user in ours {
        assert!(
            requests.iter().any(|r| r.user == user),
            "no request recorded as {user}"
        );
    }
    // Everything the suite did, with every opt-in component: all allowed,
    // and every rule used.
    let full = grants(&render_with("admission", &["recreate-stuck-pods"]));
    let denied = |granted: &[Granted]| -> Vec<String> {
        requests
            .iter()
            .filter(|r| !granted.iter().any(|g| allows(g, r).is_some()))
            .map(|r| format!("{r:?}"))
            .collect()
    };
    let denied_full = denied(&full);
    assert!(
        denied_full.is_empty(),
        "requests deploy/ does not allow:\n{}",
        denied_full.join("\n")
    );
    let unused = unused_rules(&full, &requests);
    assert!(
        unused.is_empty(),
        "rules no request needed:\n{}",
        unused.join("\n")
    );
    // Without the opt-in component: only pod deletion (--recreate-stuck-pods)
    // is refused, and still no rule goes unused.
    let plain = grants(&render("admission"));
    for request in denied(&plain) {
        assert!(
            request.contains("\"delete\"") && request.contains("\"pods\""),
            "only --recreate-stuck-pods needs the component: {request}"
        );
    }
    let used: Vec<ApiRequest> = requests
        .iter()
        .filter(|r| plain.iter().any(|g| allows(g, r).is_some()))
        .cloned()
        .collect();
    let unused = unused_rules(&plain, &used);
    assert!(
        unused.is_empty(),
        "rules no request needed without the component:\n{}",
        unused.join("\n")
    );
    eprintln!(
        "{} distinct requests by {} identities, all allowed, every rule used",
        requests.len(),
        ours.len()
    );
}

#[test]
fn the_monitoring_component_scrapes_the_broker_and_controller_it_ships_with() {
    let objects = render_with("sync", &["monitoring"]);
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    for doc in objects
        .iter()
        .filter(|o| !["ServiceMonitor", "PrometheusRule"].contains(&o["kind"].as_str().unwrap()))
    {
        round_trip(doc).unwrap_or_else(|e| panic!("{}: {e}", name(doc)));
    }
    // Each ServiceMonitor selects exactly one Service, by its labels, and
    // scrapes a port that Service names, which targets a container port of
    // the Deployment that Service selects.
    for (monitor, deployment) in [
        ("pullbroker-broker", "pullbroker-broker"),
        ("pullbroker-controller", "pullbroker-controller"),
    ] {
        let sm = find("ServiceMonitor", monitor);
        let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let services: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Service")
            .filter(|o| {
                selector
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][k] == *v)
            })
            .collect();
        assert_eq!(services.len(), 1, "{monitor} selects {services:?}");
        let endpoint = &sm["spec"]["endpoints"][0];
        let port = services[0]["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("{monitor}: no port {}", endpoint["port"]));
        let d = find("Deployment", deployment);
        let container_ports = &d["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert!(
            container_ports
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port["targetPort"]),
            "{monitor}: {} targets no container port of {deployment}",
            port["targetPort"]
        );
        assert_eq!(endpoint["path"], "/metrics");
    }
    // The broker is scraped over TLS, verified: never insecureSkipVerify.
    let broker = &find("ServiceMonitor", "pullbroker-broker")["spec"]["endpoints"][0];
    assert_eq!(broker["scheme"], "https");
    assert_eq!(
        broker["tlsConfig"]["ca"]["secret"]["name"],
        "pullbroker-broker-tls"
    );
    assert!(broker["tlsConfig"]["insecureSkipVerify"].is_null());
    let rules = find("PrometheusRule", "pullbroker");
    assert_eq!(rules["metadata"]["namespace"], "pullbroker-system");
    let dashboard = find("ConfigMap", "pullbroker-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["pullbroker.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "pullbroker");
}

#[test]
fn the_exec_sources_component_mounts_the_providers_read_only_at_one_directory() {
    let objects = render_with("kep4412", &["exec-sources"]);
    for doc in &objects {
        round_trip(doc).unwrap_or_else(|e| panic!("{}: {e}", name(doc)));
    }
    let broker = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "pullbroker-broker")
        .unwrap();
    let pod = &broker["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "exec-sources")
        .unwrap();
    assert_eq!(mount["mountPath"], "/opt/pullbroker/exec");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "exec-sources")
        .unwrap();
    assert!(volume["image"]["reference"].is_string(), "{volume}");
    // Documented as the directory to name in broker.yaml.
    let docs = std::fs::read_to_string(deploy().join("../docs/cloud-registries.md")).unwrap();
    assert!(docs.contains("execSourceDir: /opt/pullbroker/exec"));
}
