//! The kubectl plugin: with `kubectl-pullbroker` on `PATH`, kubectl finds
//! it and `kubectl pullbroker audit|diagnose|can-i …` behave as `pullbroker …`,
//! usage lines naming `kubectl pullbroker`.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

fn kubectl(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-pullbroker"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("PATH", path)
        .env_remove("KUBERNETES_SERVICE_HOST");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().expect("kubectl (scripts/test.sh installs it)")
}

#[test]
fn kubectl_finds_the_plugin_and_runs_pullbroker_through_it() {
    let list = kubectl(&["plugin", "list"], None);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.lines().any(|l| l.ends_with("/kubectl-pullbroker")),
        "{listed}"
    );

    let usage = kubectl(&["pullbroker", "audit", "--no-such-flag"], None);
    assert_eq!(usage.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert!(
        stderr.contains("Usage: kubectl pullbroker audit"),
        "{stderr}"
    );

    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone/broker.yaml");
    let can_i = kubectl(
        &[
            "pullbroker",
            "can-i",
            "--config",
            example.to_str().unwrap(),
            "--as",
            "system:serviceaccount:team-a:web",
            "pull",
            "registry.corp.example/apps/team-a/web:1.0",
        ],
        None,
    );
    assert_eq!(
        can_i.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&can_i.stderr)
    );
    assert!(String::from_utf8_lossy(&can_i.stdout).starts_with("yes"));
    let denied = kubectl(
        &[
            "pullbroker",
            "can-i",
            "--config",
            example.to_str().unwrap(),
            "--as",
            "system:serviceaccount:team-b:web",
            "pull",
            "registry.corp.example/apps/team-a/web:1.0",
        ],
        None,
    );
    assert_eq!(denied.status.code(), Some(1), "exit codes pass through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_pullbroker_audit_reads_the_cluster_kubectl_points_at() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let client = fake.client().await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), "team-a");
    let bad = base64::engine::general_purpose::STANDARD.encode("{not json");
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bad"}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": bad}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "team-a");
    pods.create(
        &Default::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "web"}, "spec": {"imagePullSecrets": [{"name": "bad"}],
            "containers": [{"name": "app", "image": "registry.corp.example/apps/web:1"}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let (out, diagnosed) = tokio::task::spawn_blocking(move || {
        (
            kubectl(
                &[
                    "pullbroker",
                    "audit",
                    "-A",
                    "-o",
                    "json",
                    "--fail-on",
                    "error",
                ],
                Some(&kubeconfig),
            ),
            kubectl(
                &[
                    "pullbroker",
                    "diagnose",
                    "pod",
                    "team-a/web",
                    "--no-network",
                ],
                Some(&kubeconfig),
            ),
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&diagnosed.stdout);
    assert_eq!(
        diagnosed.status.code(),
        Some(0),
        "no pull failure reported: {text}"
    );
    assert!(text.contains("imagePullSecrets: bad is unusable"), "{text}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"][0]["code"], "secret.malformed");
    assert_eq!(report["findings"][0]["objects"][0], "Secret team-a/bad");
}
