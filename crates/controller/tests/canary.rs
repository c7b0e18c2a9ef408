//! The canary: sync a static copy, an exec-source credential and a
//! broker-minted credential, plus an exec source that fails while printing
//! a secret, and assert that no secret value — raw or base64 — appears in
//! any log line (debug everywhere, trace for pullbroker), Event or status.

mod support;

use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use pullbroker_core::policy::{PullGrant, RegistryCredential};
use pullbroker_testenv::logs::capture_all;
use serde_json::json;
use support::*;

const STATIC_PW: &str = "static-CANARY-71f0";
const EXEC_PW: &str = "exec-CANARY-a55e";
const FAILING_PW: &str = "failing-CANARY-beef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_events_or_status() {
    // Exec sources and minting run in pullbroker_credentials since it moved out of the broker.
    let capture = capture_all(
        "debug,pullbroker_controller=trace,pullbroker_credentials=trace,pullbroker_broker=trace",
    );

    let dir = tempfile::tempdir().unwrap();
    for (name, body, code) in [
        ("good", format!("{{\"kind\":\"CredentialProviderResponse\",\"cacheDuration\":\"1h\",\"auth\":{{\"ecr.example\":{{\"username\":\"AWS\",\"password\":\"{EXEC_PW}\"}}}}}}"), 0),
        ("bad", format!("{{\"kind\":\"CredentialProviderResponse\",\"auth\":{{\"x\":{{\"username\":\"u\",\"password\":\"{FAILING_PW}\"}}}}}}"), 3),
    ] {
        let script = dir.path().join(name);
        std::fs::write(&script, format!("#!/bin/sh\ncat >/dev/null\necho '{FAILING_PW}' >&2\nprintf '%s' '{body}'\nexit {code}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let c = Cluster::start(REGISTRY, None).await;
    c.create_in::<Secret>(SYSTEM, json!({"metadata": {"name": "hub-auth"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": format!("{{\"auths\":{{\"hub.example\":{{\"username\":\"bot\",\"password\":\"{STATIC_PW}\"}}}}}}")}}))
        .await;
    for (name, registry, source) in [
        (
            "hub",
            "hub.example",
            json!({"secretRef": {"name": "hub-auth"}}),
        ),
        ("ecr", "ecr.example", json!({"exec": {"command": "good"}})),
        (
            "broken",
            "broken.example",
            json!({"exec": {"command": "bad"}}),
        ),
    ] {
        c.create::<RegistryCredential>(
            json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name}, "spec": {"registries": [registry], "source": source}}),
        )
        .await;
    }
    c.tenant("team-a", &[("app", &[])]).await;
    for (grant, cred, extra) in [
        ("corp", "corp", json!({})),
        ("hub", "hub", json!({"allowStaticCopy": true})),
        ("ecr", "ecr", json!({"allowUpstreamCopy": true})),
        ("broken", "broken", json!({"allowUpstreamCopy": true})),
    ] {
        let mut spec = json!({"credential": cred, "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
            "repositories": ["**"], "purposes": ["sync"]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c.grant(grant, spec).await;
    }
    let replica = Replica::start(
        c.controller.clone(),
        Settings {
            exec_source_dir: Some(dir.path().to_path_buf()),
            ..settings("r1")
        },
    );
    let mut minted = Vec::new();
    for grant in ["corp", "hub", "ecr"] {
        let s = eventually("synced", WAIT, || async {
            c.secret("team-a", &format!("pullbroker-{grant}")).await
        })
        .await;
        let registry = ["registry.corp.example", "hub.example", "ecr.example"][minted.len()];
        minted.push(credential_in(&s, registry).1);
    }
    assert_eq!(minted[1], STATIC_PW);
    assert_eq!(minted[2], EXEC_PW);
    // The failing source has been tried (and logged) at least twice.
    eventually("failure logged", WAIT, || async {
        let logs = capture.text();
        (logs.matches("exited with").count() >= 2).then_some(())
    })
    .await;
    eventually("statuses written", WAIT, || async {
        let g = Api::<PullGrant>::all(c.client.clone())
            .get("ecr")
            .await
            .unwrap();
        g.status.map(|_| ())
    })
    .await;
    let broken = eventually("failing source in status", WAIT, || async {
        let c = Api::<RegistryCredential>::all(c.client.clone())
            .get("broken")
            .await
            .unwrap();
        c.status.filter(|s| {
            s.conditions
                .first()
                .is_some_and(|c| c.reason == "SourceUnavailable")
        })
    })
    .await;
    assert!(
        broken.conditions[0].message.contains("exited with"),
        "{:?}",
        broken.conditions[0]
    );
    replica.stop().await;

    let mut observed = capture.text();
    let events = Api::<Event>::all(c.client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    observed.push_str(&serde_json::to_string(&events.items).unwrap());
    let grants = Api::<PullGrant>::all(c.client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let creds = Api::<RegistryCredential>::all(c.client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    for g in &grants.items {
        observed.push_str(&serde_json::to_string(&g.status).unwrap());
    }
    for cr in &creds.items {
        observed.push_str(&serde_json::to_string(&cr.status).unwrap());
    }
    assert!(
        observed.contains("issued pull secret"),
        "logs were captured"
    );
    for secret in [STATIC_PW, EXEC_PW, FAILING_PW, minted[0].as_str()] {
        assert!(!observed.contains(secret), "a secret leaked: {secret}");
        let b64 = STANDARD.encode(secret);
        assert!(
            !observed.contains(&b64[..b64.len() - 4]),
            "a secret leaked in base64: {secret}"
        );
        // And the broker credential's signature part alone.
        if let Some((_, sig)) = secret.rsplit_once('.') {
            assert!(!observed.contains(sig), "a broker credential's MAC leaked");
        }
    }
}
