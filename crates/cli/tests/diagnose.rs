//! `pullbroker diagnose` against the fake API server, with pods whose status
//! and Events are what a real kubelet 1.32 + containerd reported
//! (`core/tests/fixtures/kubelet-events-v1.32/`, the host rewritten to the
//! registries here), and live re-checks against real registries: a wrong
//! password, an unknown tag, an unknown repository, a refused port, a hung
//! registry, TLS with an unknown CA, the service-account admission race, a
//! missing grant and a grant whose credential is not ready — each
//! classified, with the right candidate named and the right fix.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::{Env, PASSWORD, REPO, USER};
use serde_json::{json, Value};

const CANARY: &str = "CANARY-diagnose-91c2";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What kubelet reported in a fixture case for its failing pod: the
/// waiting reason and message and the `Failed`/`InspectFailed` note, with
/// the fixture's image replaced by `image`.
struct Reported {
    reason: String,
    waiting: String,
    note: String,
}

fn reported(case: &str, image: &str) -> Reported {
    let path = format!(
        "{}/../core/tests/fixtures/kubelet-events-v1.32/{case}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pod = fixture["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| !p["containerStatuses"][0]["state"]["waiting"].is_null())
        .expect("a waiting pod");
    let theirs = pod["image"].as_str().unwrap();
    let their_host = theirs.split('/').next().unwrap();
    let our_host = image.split('/').next().unwrap();
    let rewrite = |s: &str| s.replace(theirs, image).replace(their_host, our_host);
    let waiting = &pod["containerStatuses"][0]["state"]["waiting"];
    let prefix = format!("Pod/{} ", pod["name"].as_str().unwrap());
    let note = fixture["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"].as_str().unwrap().starts_with(&prefix))
        .filter(|e| e["reason"] == "Failed" || e["reason"] == "InspectFailed")
        .map(|e| e["message"].as_str().unwrap())
        .find(|m| !m.starts_with("Error: "))
        .expect("a failure note");
    Reported {
        reason: waiting["reason"].as_str().unwrap().to_string(),
        waiting: rewrite(waiting["message"].as_str().unwrap()),
        note: rewrite(note),
    }
}

struct Cluster {
    fake: FakeApi,
    client: kube::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
        Cluster {
            client: fake.client().await,
            fake,
        }
    }

    async fn create<K>(&self, api: Api<K>, v: Value) -> K
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap()
    }

    async fn ns(&self, name: &str) {
        self.create(
            Api::<Namespace>::all(self.client.clone()),
            json!({"metadata": {"name": name}}),
        )
        .await;
    }

    async fn pull_secret(&self, ns: &str, name: &str, registry: &str, password: &str) {
        let config = json!({"auths": {registry: {"username": USER, "password": password}}});
        self.create(
            Api::<Secret>::namespaced(self.client.clone(), ns),
            json!({"metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
                   "data": {".dockerconfigjson": b64(&config.to_string())}}),
        )
        .await;
    }

    async fn sa(&self, ns: &str, name: &str, secrets: &[&str]) {
        let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        self.create(
            Api::<ServiceAccount>::namespaced(self.client.clone(), ns),
            json!({"metadata": {"name": name}, "imagePullSecrets": refs}),
        )
        .await;
    }

    /// A pod (`NAMESPACE/NAME`) whose container `app` kubelet reported on as in `report`
    /// (None: running), with the Events kubelet records — and an older
    /// pod's Event of the same name, which must not be read.
    async fn pod(
        &self,
        at: &str,
        sa: &str,
        image: &str,
        secrets: &[&str],
        labels: Value,
        report: Option<&Reported>,
    ) {
        let (ns, name) = at.split_once('/').expect("NAMESPACE/NAME");
        let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns);
        let pod: Pod = self
            .create(
                pods.clone(),
                json!({"metadata": {"name": name, "labels": labels}, "spec": {"serviceAccountName": sa,
                   "nodeName": "node-1", "imagePullSecrets": refs,
                   "containers": [{"name": "app", "image": image}]}}),
            )
            .await;
        let uid = pod.metadata.uid.clone().unwrap();
        let state = match report {
            Some(r) => json!({"waiting": {"reason": r.reason, "message": r.waiting}}),
            None => json!({"running": {"startedAt": "2026-12-01T20:00:00Z"}}),
        };
        let phase = if report.is_some() {
            "Pending"
        } else {
            "Running"
        };
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase, "containerStatuses": [{
                "name": "app", "image": image, "imageID": "", "ready": report.is_none(),
                "restartCount": 0, "state": state}]}})),
        )
        .await
        .unwrap();
        let Some(r) = report else { return };
        let events = Api::<Event>::namespaced(self.client.clone(), ns);
        for (i, (uid, reason, message, at)) in [
            (
                uid.as_str(),
                "Failed",
                r.note.as_str(),
                "2026-12-01T20:15:36Z",
            ),
            (
                uid.as_str(),
                "Failed",
                "Error: ErrImagePull",
                "2026-12-01T20:15:36Z",
            ),
            // A deleted pod of the same name, later and with another story.
            (
                "old-uid",
                "Failed",
                "Failed to pull image \"x\": 429 Too Many Requests",
                "2026-12-01T21:00:00Z",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            self.create(
                events.clone(),
                json!({"metadata": {"name": format!("{name}.{i}")}, "type": "Warning", "reason": reason,
                       "message": message, "count": 3, "lastTimestamp": at,
                       "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": uid,
                                          "apiVersion": "v1", "fieldPath": "spec.containers{app}"}}),
            )
            .await;
        }
    }
}

fn diagnose(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.fake.kubeconfig()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .arg("diagnose")
        .args(args)
        .args(["--timeout", "2s"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(CANARY) && !text.contains(PASSWORD),
            "a secret in the output:\n{text}"
        );
    }
    (out.status.code().unwrap(), stdout, stderr)
}

/// `diagnose -o json` of one pod: its first container's report.
fn container(c: &Cluster, target: &str, extra: &[&str]) -> Value {
    let mut args = vec!["pod", target, "-o", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = diagnose(c, &args);
    assert_eq!(code, 1, "a pull problem exits 1: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    v["containers"][0].clone()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// A loopback port that accepts connections and never answers.
fn hung_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_names_the_cause_the_candidate_and_the_fix_for_each_real_failure() {
    let env = Env::shared();
    let c = Cluster::start().await;
    let basic = env.basic.host();
    let tls = env.tls.host();
    let refused_port = pullbroker_testenv::net::RefusedPort::new();
    let refused = refused_port.host();
    let hung = hung_registry();
    let good = env.image(&env.basic, "v1");
    let none = json!({});

    // Each case in its own namespace; the pod is `p`, its container `app`.
    c.ns("wrong-password").await;
    c.pull_secret("wrong-password", "regcred", &basic, CANARY)
        .await;
    c.pod(
        "wrong-password/p",
        "default",
        &good,
        &["regcred"],
        none.clone(),
        Some(&reported("b-wrong-password", &good)),
    )
    .await;

    let unknown_tag = env.image(&env.basic, "does-not-exist");
    c.ns("unknown-tag").await;
    c.pull_secret("unknown-tag", "regcred", &basic, PASSWORD)
        .await;
    c.pod(
        "unknown-tag/p",
        "default",
        &unknown_tag,
        &["regcred"],
        none.clone(),
        Some(&reported("d-unknown-tag", &unknown_tag)),
    )
    .await;

    let unknown_repo = format!("{basic}/nope/app:v1");
    c.ns("unknown-repo").await;
    c.pull_secret("unknown-repo", "regcred", &basic, PASSWORD)
        .await;
    c.pod(
        "unknown-repo/p",
        "default",
        &unknown_repo,
        &["regcred"],
        none.clone(),
        Some(&reported("e-unknown-repo", &unknown_repo)),
    )
    .await;

    let refused_image = format!("{refused}/{REPO}:v1");
    c.ns("refused").await;
    c.pod(
        "refused/p",
        "default",
        &refused_image,
        &[],
        none.clone(),
        Some(&reported("f-conn-refused", &refused_image)),
    )
    .await;

    // No fixture case hung; this is containerd's message for a dial timeout.
    let hung_image = format!("{hung}/{REPO}:v1");
    let timeout = Reported {
        reason: "ErrImagePull".into(),
        waiting: format!("failed to pull and unpack image \"{hung_image}\": failed to resolve reference \"{hung_image}\": failed to do request: Head \"https://{hung}/v2/{REPO}/manifests/v1\": dial tcp {hung}: i/o timeout"),
        note: format!("Failed to pull image \"{hung_image}\": failed to pull and unpack image \"{hung_image}\": failed to resolve reference \"{hung_image}\": failed to do request: Head \"https://{hung}/v2/{REPO}/manifests/v1\": dial tcp {hung}: i/o timeout"),
    };
    c.ns("hung").await;
    c.pod(
        "hung/p",
        "default",
        &hung_image,
        &[],
        none.clone(),
        Some(&timeout),
    )
    .await;

    let tls_image = env.image(&env.tls, "v1");
    c.ns("unknown-ca").await;
    c.pull_secret("unknown-ca", "regcred", &tls, PASSWORD).await;
    c.pod(
        "unknown-ca/p",
        "default",
        &tls_image,
        &["regcred"],
        none.clone(),
        Some(&reported("g-unknown-ca", &tls_image)),
    )
    .await;

    c.ns("sa-race").await;
    c.pull_secret("sa-race", "regcred", &basic, PASSWORD).await;
    c.sa("sa-race", "app", &["regcred"]).await;
    c.pod(
        "sa-race/p",
        "app",
        &good,
        &[],
        none.clone(),
        Some(&reported("i-sa-race", &good)),
    )
    .await;

    c.ns("invalid").await;
    c.pod(
        "invalid/p",
        "default",
        "UPPER/Case:tag",
        &[],
        none.clone(),
        Some(&reported("h-invalid-name", "UPPER/Case:tag")),
    )
    .await;

    // pullbroker grants: team-ok is granted through a credential that is not ready.
    let creds: Api<RegistryCredential> = Api::all(c.client.clone());
    c.create(creds.clone(), json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "corp"}, "spec": {"registries": [basic], "source": {"secretRef": {"name": "corp-pull"}}}})).await;
    creds
        .patch_status(
            "corp",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "SourceUnavailable",
        "message": "secret corp-pull not found", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}})),
        )
        .await
        .unwrap();
    c.create(Api::<PullGrant>::all(c.client.clone()), json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant",
        "metadata": {"name": "team-ok-web"}, "spec": {"credential": "corp",
        "subjects": {"namespaces": ["team-ok"], "serviceAccounts": ["web"]}, "repositories": [REPO], "purposes": ["pull"]}})).await;
    for ns in ["team-ok", "team-none"] {
        c.ns(ns).await;
        c.sa(ns, "web", &[]).await;
        c.pod(
            &format!("{ns}/p"),
            "web",
            &good,
            &[],
            none.clone(),
            Some(&reported("a-unauthorized", &good)),
        )
        .await;
    }

    let (basic2, unknown_tag2, good2) = (basic.clone(), unknown_tag.clone(), good.clone());
    let c = tokio::task::spawn_blocking(move || {
        // Wrong password: the secret's entry is named, the registry refuses it now too.
        let w = container(&c, "wrong-password/p", &[]);
        assert_eq!(w["reported"], "unauthorized", "{w}");
        assert_eq!(w["candidates"].as_array().unwrap().len(), 1, "{w}");
        let cand = &w["candidates"][0];
        assert_eq!(cand["source"], json!({"kind": "podSecret", "secret": "regcred", "entry": basic, "username": USER}));
        assert_eq!(cand["check"]["result"], "failed", "{w}");
        assert_eq!(cand["check"]["failure"], "unauthorized", "{w}");
        assert!(s(&w["verdict"]["cause"]).contains("refuses Secret regcred"), "{w}");
        assert!(s(&w["verdict"]["fix"]).starts_with("rotate Secret wrong-password/regcred"), "{w}");
        assert!(w["verdict"].get("applies").is_none(), "{w}");
        assert!(s(&w["message"]).contains("401 Unauthorized"), "the note, not another pod's: {w}");

        // The same without the network: nothing re-checked, still the candidate named.
        let offline = container(&c, "wrong-password/p", &["--no-network"]);
        assert_eq!(offline["candidates"][0]["check"], json!({"result": "notChecked", "why": "--no-network"}));
        assert!(s(&offline["verdict"]["cause"]).contains("not re-checked"), "{offline}");

        // Unknown tag and unknown repository look the same to kubelet; not here.
        let t = container(&c, "unknown-tag/p", &[]);
        assert_eq!(t["reported"], "not_found", "{t}");
        assert_eq!(t["candidates"][0]["check"]["failure"], "not_found", "{t}");
        assert_eq!(t["repositoryExists"], true, "{t}");
        assert!(s(&t["verdict"]["cause"]).contains(&format!("{REPO} exists on {basic}, but not the tag")), "{t}");
        let r = container(&c, "unknown-repo/p", &[]);
        assert_eq!(r["repositoryExists"], false, "{r}");
        assert!(s(&r["verdict"]["cause"]).starts_with("repository nope/app does not exist"), "{r}");

        // Refused and hung: no credential, so kubelet went anonymous; the same from here.
        let f = container(&c, "refused/p", &[]);
        assert_eq!(f["reported"], "refused", "{f}");
        assert_eq!(f["candidates"][0]["source"]["kind"], "anonymous", "{f}");
        assert_eq!(f["candidates"][0]["check"]["failure"], "refused", "{f}");
        assert!(s(&f["verdict"]["cause"]).ends_with("(the same from here)"), "{f}");
        assert!(s(&f["verdict"]["fix"]).starts_with(&format!("start the registry at {refused}")), "{f}");
        let h = container(&c, "hung/p", &[]);
        assert_eq!(h["reported"], "timeout", "{h}");
        assert_eq!(h["candidates"][0]["check"]["failure"], "timeout", "{h}");
        assert!(s(&h["verdict"]["cause"]).ends_with("(the same from here)"), "{h}");

        // TLS with an unknown CA; with the CA given, the secret pulls: the node lacks the CA.
        let g = container(&c, "unknown-ca/p", &[]);
        assert_eq!(g["reported"], "tls", "{g}");
        assert_eq!(g["candidates"][0]["check"]["failure"], "tls", "{g}");
        assert!(s(&g["verdict"]["fix"]).contains(&format!("certs.d/{tls}/hosts.toml")), "{g}");
        let ca = env.dir.path().join("tls.crt");
        let g = container(&c, "unknown-ca/p", &["--ca-file", ca.to_str().unwrap()]);
        assert_eq!(g["candidates"][0]["check"]["result"], "pulled", "{g}");
        assert_eq!(g["verdict"]["applies"], 0, "{g}");
        assert!(s(&g["verdict"]["cause"]).contains("pulls it from here, but the node reported"), "{g}");

        // The admission race: the account has the secret, the pod does not.
        let i = container(&c, "sa-race/p", &[]);
        assert_eq!(i["admissionRace"], json!(["regcred"]), "{i}");
        assert!(s(&i["verdict"]["fix"]).starts_with("recreate the pod"), "{i}");
        assert!(s(&i["verdict"]["fix"]).contains("kubectl delete pod -n sa-race p"), "{i}");

        // An invalid name is never sent to a registry.
        let n = container(&c, "invalid/p", &[]);
        assert_eq!(n["reported"], "invalid_image_name", "{n}");
        assert_eq!(n["candidates"], json!([]), "{n}");
        assert!(s(&n["verdict"]["fix"]).starts_with("fix the image"), "{n}");

        // pullbroker's answer for the pod's service account (the broker's can-i).
        let none = container(&c, "team-none/p", &[]);
        assert_eq!(none["plugin"]["answer"], "denied", "{none}");
        assert_eq!(none["candidates"][0]["source"]["kind"], "anonymous", "{none}");
        assert_eq!(none["candidates"][0]["check"]["failure"], "unauthorized", "{none}");
        let fix = s(&none["verdict"]["fix"]);
        assert!(fix.starts_with("grant it: a PullGrant with subjects {namespaces: [team-none], serviceAccounts: [web]}"), "{fix}");
        let ok = container(&c, "team-ok/p", &[]);
        assert_eq!(ok["plugin"], json!({"answer": "granted", "grant": "team-ok-web", "credential": "corp",
            "ready": false, "readyReason": "SourceUnavailable: secret corp-pull not found"}));
        assert_eq!(ok["candidates"][0]["source"], json!({"kind": "plugin", "grant": "team-ok-web", "credential": "corp"}));
        assert!(s(&ok["verdict"]["cause"]).contains("RegistryCredential corp is not ready"), "{ok}");

        // The same answer from `can-i --from-cluster`.
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, c.fake.kubeconfig()).unwrap();
        let can_i = |ns: &str| {
            Command::new(env!("CARGO_BIN_EXE_pullbroker"))
                .args(["can-i", "--from-cluster", "--as", &format!("system:serviceaccount:{ns}:web"), "pull", &good])
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap()
        };
        let yes = can_i("team-ok");
        assert_eq!(yes.status.code(), Some(0), "{yes:?}");
        assert!(String::from_utf8_lossy(&yes.stdout).starts_with("yes — allowed by PullGrant \"team-ok-web\""), "{yes:?}");
        let no = can_i("team-none");
        assert_eq!(no.status.code(), Some(1), "{no:?}");
        assert!(String::from_utf8_lossy(&no.stdout).starts_with("no — "), "{no:?}");

        // The text a person reads.
        let (code, text, _) = diagnose(&c, &["pod/p", "-n", "wrong-password"]);
        assert_eq!(code, 1);
        for want in [
            "Pod wrong-password/p (service account default, node node-1)",
            "kubelet reported: unauthorized",
            &format!("1. Secret regcred (entry {basic}, user {USER}): unauthorized"),
            "cause: the registry refuses Secret regcred",
            "fix:   rotate Secret wrong-password/regcred",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }

        c
    })
    .await
    .unwrap();

    // The CA on a RegistryCredential (transport.caBundle, from a
    // ConfigMap of the system namespace): the re-check trusts it as the
    // broker does, with no --ca-file. A bundle that cannot be read is
    // named in a note.
    let (tls, ca) = (env.tls.host(), env.dir.path().join("tls.crt"));
    c.ns("pullbroker-system").await;
    c.create(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            c.client.clone(),
            "pullbroker-system",
        ),
        json!({"metadata": {"name": "registry-ca"},
               "data": {"ca.crt": std::fs::read_to_string(&ca).unwrap()}}),
    )
    .await;
    for (name, registry, bundle) in [
        (
            "private",
            tls.as_str(),
            json!({"configMapName": "registry-ca"}),
        ),
        (
            "elsewhere",
            "nowhere.example",
            json!({"secretName": "absent-ca"}),
        ),
    ] {
        c.create(
            creds.clone(),
            json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name}, "spec": {"registries": [registry],
            "source": {"secretRef": {"name": "unused"}}, "transport": {"caBundle": bundle}}}),
        )
        .await;
    }
    let c = tokio::task::spawn_blocking(move || {
        let (_, out, err) = diagnose(&c, &["pod", "unknown-ca/p", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        assert_eq!(
            v["containers"][0]["candidates"][0]["check"]["result"], "pulled",
            "{v}"
        );
        let notes = v["notes"].to_string();
        assert!(
            notes.contains("elsewhere") && notes.contains("absent-ca"),
            "{notes}"
        );
        assert!(!notes.contains("private"), "{notes}");
        c
    })
    .await
    .unwrap();

    let (basic, unknown_tag, good) = (basic2, unknown_tag2, good2);
    // Workloads: the failing pod among a deployment's or a ksvc's is picked.
    c.ns("apps").await;
    c.pull_secret("apps", "regcred", &basic, PASSWORD).await;
    c.pull_secret("apps", "stale", &basic, CANARY).await;
    c.create(
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.client.clone(), "apps"),
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
               "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": good}]}}}}),
    )
    .await;
    c.pod(
        "apps/web-a",
        "default",
        &good,
        &["regcred"],
        json!({"app": "web"}),
        None,
    )
    .await;
    c.pod(
        "apps/web-b",
        "default",
        &good,
        &["stale"],
        json!({"app": "web"}),
        Some(&reported("b-wrong-password", &good)),
    )
    .await;
    c.pod(
        "apps/other",
        "default",
        &good,
        &["stale"],
        json!({"app": "other"}),
        Some(&reported("b-wrong-password", &good)),
    )
    .await;
    let ksvc = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"),
        "services",
    );
    c.create(
        Api::<DynamicObject>::namespaced_with(c.client.clone(), "apps", &ksvc),
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
               "spec": {"template": {"spec": {"containers": [{"image": good}]}}}}),
    )
    .await;
    c.pod(
        "apps/hello-00001-deployment-x",
        "default",
        &unknown_tag,
        &["regcred"],
        json!({"serving.knative.dev/service": "hello"}),
        Some(&reported("d-unknown-tag", &unknown_tag)),
    )
    .await;

    tokio::task::spawn_blocking(move || {
        let before = c.fake.writes();
        let json_of = |args: &[&str]| -> Value {
            let (code, out, err) = diagnose(&c, args);
            assert_eq!(code, 1, "{out}{err}");
            serde_json::from_str(&out).unwrap()
        };
        let d = json_of(&["deployment", "web", "-n", "apps", "-o", "json"]);
        assert_eq!(d["pod"], "apps/web-b", "{d}");
        assert!(
            s(&d["picked"]).starts_with("pod web-b of deployment apps/web (selector app=web)"),
            "{d}"
        );
        assert!(
            s(&d["containers"][0]["verdict"]["fix"]).starts_with("rotate Secret apps/stale"),
            "{d}"
        );
        let k = json_of(&["ksvc", "apps/hello", "-o", "json"]);
        assert_eq!(k["pod"], "apps/hello-00001-deployment-x", "{k}");
        assert_eq!(k["containers"][0]["repositoryExists"], true, "{k}");

        // A running pod: nothing to fix, exit 0.
        let (code, out, _) = diagnose(&c, &["pod", "apps/web-a"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("kubelet reported no pull failure"), "{out}");
        assert!(out.contains("fix:   nothing to fix"), "{out}");

        // Clear errors for what is not there.
        let (code, _, err) = diagnose(&c, &["pod", "apps/nope"]);
        assert_eq!(code, 1);
        assert!(err.contains("pod apps/nope not found"), "{err}");
        let (code, _, err) = diagnose(&c, &["deployment", "apps/nope"]);
        assert_eq!(code, 1);
        assert!(err.contains("deployment apps/nope not found"), "{err}");
        let (code, _, err) = diagnose(&c, &["statefulset", "apps/web"]);
        assert_eq!(code, 1);
        assert!(err.contains("KIND is pod, deployment or ksvc"), "{err}");
        let after: BTreeMap<String, usize> = c.fake.writes();
        assert_eq!(before, after, "diagnose only reads");
    })
    .await
    .unwrap();
}
