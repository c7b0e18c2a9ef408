//! `pullbroker adopt` against the fake API server holding a cluster like the
//! audit test's: a pull secret copied into 200 namespaces (its password
//! rotated in some), a secret for two registries, a legacy `.dockercfg`, an
//! unused copy, Knative Services, and a namespace that never had a copy.
//!
//! The plan's documents parse through the CRD types; the policy they make
//! allows every (pod, image) that pulls with a copy today and nothing for
//! the namespace without one; the clean-up is walked step by step on a model
//! of the cluster (no pod without a credential at any step); `--apply`
//! writes only Secrets, RegistryCredentials and PullGrants; and, applied,
//! the broker serves every pod's images with the credential its copy held.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use pullbroker_core::adopt::Step;
use pullbroker_core::audit::pull_secret_config;
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};
use pullbroker_core::policy::{Named, Policy, Purpose, Request, Subject, Target};
use pullbroker_core::{DockerConfig, Reference};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/procs.rs"]
mod procs;
use cluster::{b64, config, Cluster};
use procs::{exchange, pod_token};

const TEAMS: usize = 200;
const REG: &str = "registry.corp.example";
const CANARY: &str = "CANARY-adopt-51c2";

fn rotated(i: usize) -> bool {
    i.is_multiple_of(25)
}

/// A namespace with its `default` service account, as Kubernetes'
/// service-account controller makes it (the fake does not).
async fn namespace(c: &Cluster, ns: &str) {
    c.ns(ns).await;
    c.sa(ns, "default", &[]).await;
}

async fn seed() -> Cluster {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = Cluster {
        client: fake.client().await,
        fake,
    };
    c.ns("pullbroker-system").await;
    let knative = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "serving.knative.dev",
        "v1",
        "Service",
    ));
    for i in 0..TEAMS {
        let ns = format!("team-{i}");
        namespace(&c, &ns).await;
        let password = if rotated(i) {
            format!("{CANARY}-old")
        } else {
            format!("{CANARY}-current")
        };
        c.pull_secret(&ns, "regcred", &config(REG, "corp-bot", &password))
            .await;
        // The copier patched the account; admission copied it into the pod.
        c.sa(&ns, "app", &["regcred"]).await;
        c.pod(
            &ns,
            "web-0",
            "app",
            &format!("{REG}/apps/web:1"),
            &["regcred"],
        )
        .await;
        if i % 7 == 0 {
            // Named in the workload's own template, not by its account.
            c.pod(
                &ns,
                "api-0",
                "default",
                &format!("{REG}/apps/api:2"),
                &["regcred"],
            )
            .await;
        }
        if i % 3 == 0 {
            c.pod(&ns, "proxy-0", "default", "nginx:1.27", &[]).await;
        }
        if i % 50 == 3 {
            Api::<DynamicObject>::namespaced_with(c.client.clone(), &ns, &knative)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                        "metadata": {"name": "hello"}, "spec": {"template": {"spec": {"containers": [{"image": format!("{REG}/apps/web:1")}]}}}}))
                    .unwrap(),
                )
                .await
                .unwrap();
        }
    }
    // A copy for two registries with one credential.
    let mirrors = json!({"auths": {
        "a.mirror.example": {"username": "mirror-bot", "password": format!("{CANARY}-mirror")},
        "b.mirror.example": {"username": "mirror-bot", "password": format!("{CANARY}-mirror")}}})
    .to_string();
    // A legacy kubernetes.io/dockercfg copy.
    let legacy =
        json!({"legacy.corp.example": {"auth": b64(&format!("legacy-bot:{CANARY}-legacy"))}})
            .to_string();
    for ns in ["mirror-a", "mirror-b"] {
        namespace(&c, ns).await;
        c.pull_secret(ns, "mirrors", &mirrors).await;
        c.pod(
            ns,
            "a-0",
            "default",
            "a.mirror.example/tools/x:1",
            &["mirrors"],
        )
        .await;
        c.pod(
            ns,
            "b-0",
            "default",
            "b.mirror.example/tools/y:1",
            &["mirrors"],
        )
        .await;
    }
    for ns in ["legacy-a", "legacy-b"] {
        namespace(&c, ns).await;
        c.secret(
            ns,
            "old",
            "kubernetes.io/dockercfg",
            json!({".dockercfg": b64(&legacy)}),
            json!({}),
        )
        .await;
        c.pod(
            ns,
            "old-0",
            "default",
            "legacy.corp.example/apps/old:1",
            &["old"],
        )
        .await;
    }
    // A copy no pod uses.
    for ns in ["team-0", "team-1"] {
        c.pull_secret(
            ns,
            "stale",
            &config(
                "stale.corp.example",
                "stale-bot",
                &format!("{CANARY}-stale"),
            ),
        )
        .await;
    }
    // A namespace that never had a copy, pulling the same image.
    namespace(&c, "outsider").await;
    c.sa("outsider", "app", &[]).await;
    c.pod(
        "outsider",
        "web-0",
        "app",
        &format!("{REG}/apps/web:1"),
        &[],
    )
    .await;
    c
}

fn adopt(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .arg("adopt")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A pod as the model of the clean-up sees it.
#[derive(Clone, Debug)]
struct PodState {
    namespace: String,
    service_account: String,
    secrets: Vec<String>,
    images: Vec<String>,
}

/// The cluster as read back: every pod, every pull secret's config, every
/// account's entries.
struct World {
    pods: BTreeMap<(String, String), PodState>,
    configs: BTreeMap<(String, String), DockerConfig>,
    accounts: BTreeMap<(String, String), Vec<String>>,
}

async fn world(client: &kube::Client) -> World {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let ns = p.metadata.namespace.unwrap();
            let spec = p.spec.unwrap();
            (
                (ns.clone(), p.metadata.name.unwrap()),
                PodState {
                    namespace: ns,
                    service_account: spec.service_account_name.unwrap_or("default".into()),
                    secrets: spec
                        .image_pull_secrets
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| r.name)
                        .collect(),
                    images: spec
                        .containers
                        .into_iter()
                        .filter_map(|c| c.image)
                        .collect(),
                },
            )
        })
        .collect();
    let configs = Api::<Secret>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| {
            let type_ = s.type_.clone().unwrap_or_default();
            let key = pullbroker_core::audit::config_key(&type_);
            let bytes = s.data.as_ref()?.get(key)?.0.clone();
            let config = pull_secret_config(&type_, Some(&bytes)).ok()?;
            Some(((s.metadata.namespace?, s.metadata.name?), config))
        })
        .collect();
    let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| {
            (
                (a.metadata.namespace.unwrap(), a.metadata.name.unwrap()),
                a.image_pull_secrets
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.name)
                    .collect(),
            )
        })
        .collect();
    World {
        pods,
        configs,
        accounts,
    }
}

impl World {
    /// The (pod, image) pairs a pod secret serves today, with the
    /// credential's password kubelet would send.
    fn pulls(&self) -> BTreeMap<(String, String, String), String> {
        let mut out = BTreeMap::new();
        for ((ns, name), p) in &self.pods {
            for image in &p.images {
                let r = Reference::parse(image).unwrap();
                for s in &p.secrets {
                    if let Some(c) = self.configs.get(&(ns.clone(), s.clone())) {
                        if let Some(e) = c.candidates(&r).first() {
                            out.entry((ns.clone(), name.clone(), image.clone()))
                                .or_insert_with(|| e.credential().secret().unwrap().to_string());
                        }
                    }
                }
            }
        }
        out
    }
}

fn allows(policy: &Policy, ns: &str, sa: &str, purpose: Purpose, image: &str) -> bool {
    let r = Reference::parse(image).unwrap();
    policy
        .decide(&Request {
            subject: &Subject::new(ns, sa),
            purpose,
            target: Target::Image {
                registry: r.registry(),
                repository: r.repository(),
            },
            on_behalf_of: None,
            narrowed_to: None,
        })
        .is_allowed()
}

/// Walks the clean-up on a model of the cluster, checking after every step
/// that each (pod, image) pulling today still has a credential: a pod
/// secret that exists and covers it, or (once the grants serve) the
/// plugin's answer from the policy.
fn walk_cleanup(world: &World, steps: &[Step], policy: &Policy) -> usize {
    let pulls = world.pulls();
    let mut secrets: BTreeSet<(String, String)> = world.configs.keys().cloned().collect();
    let mut accounts = world.accounts.clone();
    let mut pods = world.pods.clone();
    let (mut applied, mut ready) = (false, false);
    let mut checked = 0;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Apply { .. } => applied = true,
            Step::WaitReady { .. } => {
                assert!(applied, "step {i}: waits before applying");
                ready = true;
            }
            Step::RemoveAccountEntry {
                namespace,
                service_account,
                secret,
            } => {
                assert!(ready, "step {i}: {step} before the grants serve");
                let entries = accounts
                    .get_mut(&(namespace.clone(), service_account.clone()))
                    .unwrap();
                assert!(entries.contains(secret), "step {i}: {step}: no such entry");
                entries.retain(|s| s != secret);
            }
            Step::RecreatePod {
                pod,
                drop_from_template,
            } => {
                assert!(ready, "step {i}: {step} before the grants serve");
                let key = (pod.namespace.clone(), pod.name.clone());
                let old = pods.get(&key).unwrap().clone();
                let original_account = world
                    .accounts
                    .get(&(old.namespace.clone(), old.service_account.clone()))
                    .cloned()
                    .unwrap_or_default();
                // The template's own entries stay, minus those dropped; the
                // account's current entries are copied in at admission.
                let mut new: Vec<String> = old
                    .secrets
                    .iter()
                    .filter(|s| !original_account.contains(s) && !drop_from_template.contains(s))
                    .cloned()
                    .collect();
                new.extend(
                    accounts
                        .get(&(old.namespace.clone(), old.service_account.clone()))
                        .cloned()
                        .unwrap_or_default(),
                );
                pods.get_mut(&key).unwrap().secrets = new;
            }
            Step::DeleteSecret { secret, .. } => {
                let key = (secret.namespace.clone(), secret.name.clone());
                for (p, state) in &pods {
                    assert!(
                        !(p.0 == secret.namespace && state.secrets.contains(&secret.name)),
                        "step {i}: {step} while Pod {}/{} names it",
                        p.0,
                        p.1
                    );
                }
                for (a, entries) in &accounts {
                    assert!(
                        !(a.0 == secret.namespace && entries.contains(&secret.name)),
                        "step {i}: {step} while ServiceAccount {}/{} names it",
                        a.0,
                        a.1
                    );
                }
                assert!(secrets.remove(&key), "step {i}: {step}: no such secret");
            }
        }
        for (ns, name, image) in pulls.keys() {
            let p = &pods[&(ns.clone(), name.clone())];
            let r = Reference::parse(image).unwrap();
            let from_secret = p.secrets.iter().any(|s| {
                secrets.contains(&(ns.clone(), s.clone()))
                    && !world.configs[&(ns.clone(), s.clone())]
                        .candidates(&r)
                        .is_empty()
            });
            let from_plugin = ready && allows(policy, ns, &p.service_account, Purpose::Pull, image);
            assert!(
                from_secret || from_plugin,
                "after step {i} ({step}) Pod {ns}/{name} has no credential for {image}"
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_plans_proves_and_applies_grants_that_keep_every_pod_pulling() {
    let c = seed().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.fake.kubeconfig()).unwrap();
    let before = world(&c.client).await;
    let pulls = before.pulls();

    // The report: mode chosen from the server's version, nothing secret.
    let out = adopt(&kubeconfig, &["-o", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(CANARY));
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["mode"], "plugin", "v1.36 runs KEP-4412 plugins");
    let creds: BTreeMap<&str, Vec<&str>> = plan["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["spec"]["registries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        creds,
        BTreeMap::from([
            ("mirrors", vec!["a.mirror.example", "b.mirror.example"]),
            ("old", vec!["legacy.corp.example"]),
            ("regcred", vec![REG]),
            ("regcred-previous", vec![REG]),
        ]),
        "one per distinct value, none for the unused copy"
    );
    let codes: BTreeSet<&str> = plan["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["code"].as_str().unwrap())
        .collect();
    for code in [
        "adopt.rotated",
        "adopt.legacy",
        "adopt.multi-registry",
        "adopt.unused",
    ] {
        assert!(codes.contains(code), "{code} missing: {codes:?}");
    }
    assert_eq!(
        plan["proof"]["checked"].as_u64().unwrap() as usize,
        pulls.len()
    );
    assert_eq!(plan["proof"]["broken"], json!([]));
    let resolving: BTreeSet<&str> = plan["grants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| {
            g["spec"]["purposes"]
                .as_array()
                .unwrap()
                .contains(&json!("resolve"))
        })
        .flat_map(|g| g["spec"]["subjects"]["namespaces"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        resolving,
        BTreeSet::from(["team-103", "team-153", "team-3", "team-53"]),
        "resolve only where Knative Services are"
    );

    // The manifests parse through the CRD types and make a policy that
    // allows every pull today, and nothing for the namespace without a copy.
    let out = adopt(&kubeconfig, &["-o", "yaml"]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    let (mut secrets, mut rcs, mut pgs) = (Vec::new(), Vec::new(), Vec::new());
    for doc in yaml.split("\n---\n").filter(|d| d.contains("kind:")) {
        let kind: Value = serde_saphyr::from_str(doc).unwrap();
        match kind["kind"].as_str().unwrap() {
            "Secret" => secrets.push(serde_saphyr::from_str::<Secret>(doc).unwrap()),
            "RegistryCredential" => {
                rcs.push(serde_saphyr::from_str::<RegistryCredential>(doc).unwrap())
            }
            "PullGrant" => pgs.push(serde_saphyr::from_str::<PullGrant>(doc).unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((secrets.len(), rcs.len()), (4, 4));
    assert!(secrets
        .iter()
        .all(|s| s.metadata.namespace.as_deref() == Some("pullbroker-system")));
    let (policy, problems) = Policy::new(
        rcs.iter()
            .map(|c| Named {
                name: c.metadata.name.clone().unwrap(),
                spec: c.spec.clone(),
            })
            .collect(),
        pgs.iter()
            .map(|g| Named {
                name: g.metadata.name.clone().unwrap(),
                spec: g.spec.clone(),
            })
            .collect(),
        BTreeMap::new(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    for (ns, name, image) in pulls.keys() {
        let sa = &before.pods[&(ns.clone(), name.clone())].service_account;
        assert!(
            allows(&policy, ns, sa, Purpose::Pull, image),
            "{ns}/{name} {image}"
        );
    }
    assert!(!allows(
        &policy,
        "outsider",
        "app",
        Purpose::Pull,
        &format!("{REG}/apps/web:1")
    ));
    assert!(!allows(
        &policy,
        "team-5",
        "app",
        Purpose::Pull,
        &format!("{REG}/other/thing:1")
    ));

    // The clean-up, step by step.
    let steps: Vec<Step> =
        serde_json::from_value(plan["cleanup"].clone()).unwrap_or_else(|e| panic!("steps: {e}"));
    let checked = walk_cleanup(&before, &steps, &policy);
    assert!(checked > pulls.len() * 100, "{checked} checks");
    let deleted: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::DeleteSecret { secret, .. } => Some(secret.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted.len(),
        TEAMS + 2 + 2 + 2,
        "every copy, the unused ones too"
    );

    // --apply writes only the credentials and grants.
    let writes_before = c.fake.writes();
    let out = adopt(&kubeconfig, &["--apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut written = c.fake.writes();
    for (k, n) in &writes_before {
        *written.get_mut(k).unwrap() -= n;
    }
    written.retain(|_, n| *n > 0);
    assert_eq!(
        written,
        BTreeMap::from([
            ("apply pullgrants".to_string(), pgs.len()),
            ("apply registrycredentials".to_string(), 4),
            ("apply secrets".to_string(), 4),
            // The fake counts the creation server-side apply does, too.
            ("create pullgrants".to_string(), pgs.len()),
            ("create registrycredentials".to_string(), 4),
            ("create secrets".to_string(), 4),
        ]),
        "server-side applies of credentials and grants only: nothing deleted or patched"
    );
    // Again: the same documents (the cluster's are the plan's own, not
    // names taken), applied in place.
    let again = adopt(&kubeconfig, &["-o", "json"]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    let names = |p: &Value, what: &str| -> Vec<String> {
        p[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&again, "credentials"), names(&plan, "credentials"));
    assert_eq!(names(&again, "grants"), names(&plan, "grants"));
    let before_again = c.fake.writes();
    let out = adopt(&kubeconfig, &["--apply"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after_again = c.fake.writes();
    let delta = |k: &str| after_again.get(k).unwrap_or(&0) - before_again.get(k).unwrap_or(&0);
    assert_eq!(
        (delta("apply pullgrants"), delta("create pullgrants")),
        (pgs.len(), 0)
    );
    let can_i = |user: &str, image: &str| {
        Command::new(env!("CARGO_BIN_EXE_pullbroker"))
            .args(["can-i", "--from-cluster", "--as", user, "pull", image])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
            .status
            .code()
    };
    let web = format!("{REG}/apps/web:1");
    assert_eq!(can_i("system:serviceaccount:team-5:app", &web), Some(0));
    assert_eq!(can_i("system:serviceaccount:outsider:app", &web), Some(1));

    // Applied and the controller run: every credential and grant it wrote
    // is Ready by the controller's own status.
    let _controller = procs::controller(&c.fake, dir.path());
    let ready = |v: &Value| {
        v["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    let start = std::time::Instant::now();
    loop {
        let (_, grants) = procs::http(
            &c.fake.url,
            "GET",
            "/apis/pullbroker.dev/v1alpha1/pullgrants",
            "",
        );
        let (_, creds) = procs::http(
            &c.fake.url,
            "GET",
            "/apis/pullbroker.dev/v1alpha1/registrycredentials",
            "",
        );
        let (grants, creds): (Value, Value) = (
            serde_json::from_str(&grants).unwrap(),
            serde_json::from_str(&creds).unwrap(),
        );
        let items = |v: &Value| v["items"].as_array().unwrap().clone();
        let not_ready: Vec<Value> = items(&grants)
            .into_iter()
            .chain(items(&creds))
            .filter(|o| !ready(o))
            .map(|o| json!([o["kind"], o["metadata"]["name"], o["status"]]))
            .collect();
        if not_ready.is_empty() && items(&grants).len() == pgs.len() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "not Ready: {not_ready:?}; {} grants of {}",
            items(&grants).len(),
            pgs.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // The broker, reading the cluster, answers every pod's images with the
    // credential its copy held: the proof, after the fact.
    let broker = procs::broker(&c.fake, dir.path());
    for ((ns, name, image), password) in &pulls {
        let token = pod_token(
            &c.fake,
            ns,
            name,
            &before.pods[&(ns.clone(), name.clone())].service_account,
        );
        let (status, body) = exchange(&broker.url, &token, image);
        assert_eq!(status, 200, "{ns}/{name} {image}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["password"].as_str(),
            Some(password.as_str()),
            "{ns}/{name} {image}"
        );
    }
    let token = pod_token(&c.fake, "outsider", "web-0", "app");
    assert_eq!(exchange(&broker.url, &token, &web).0, 403);
}

/// `--mode sync`: grants also allow sync, with the upstream copy opted in
/// and flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_is_chosen_for_clusters_without_kep_4412() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    fake.set_version(1, 32);
    let c = Cluster {
        client: fake.client().await,
        fake,
    };
    for ns in ["a", "b"] {
        c.ns(ns).await;
        c.pull_secret(ns, "regcred", &config(REG, "bot", CANARY))
            .await;
        c.pod(ns, "p", "default", &format!("{REG}/x:1"), &["regcred"])
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.fake.kubeconfig()).unwrap();
    let out = adopt(&kubeconfig, &["-o", "json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["mode"], "sync");
    assert!(plan["modeReason"].as_str().unwrap().contains("v1.32.0"));
    let g = &plan["grants"][0]["spec"];
    assert_eq!(g["purposes"], json!(["pull", "sync"]));
    assert_eq!(g["allowUpstreamCopy"], true);
    // Forced the other way.
    let out = adopt(&kubeconfig, &["-o", "json", "--mode", "plugin"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["grants"][0]["spec"]["purposes"], json!(["pull"]));
    // The table says what it will do, and the clean-up.
    let out = adopt(&kubeconfig, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RegistryCredential regcred"), "{text}");
    assert!(text.contains("every one allowed"), "{text}");
    assert!(text.contains("delete Secret a/regcred"), "{text}");
    assert!(!text.contains(CANARY));
}
