//! Sync mode across a namespace that terminates while the controller writes
//! to it, on the fake API server that answers as kube-apiserver v1.36 does:
//! creates there are refused (403 `NamespaceTerminating`), updates and
//! deletes still succeed, and the namespace controller removes the contents
//! a moment later. The controller creates nothing there, fails nothing,
//! keeps serving the other namespaces, and forgets the namespace once gone.

mod support;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use pullbroker_core::policy::PullGrant;
use serde_json::json;
use std::sync::atomic::Ordering;
use support::*;

const SECRET: &str = "pullbroker-teams";

fn creates(c: &Cluster) -> usize {
    c.fake
        .writes()
        .iter()
        .filter(|(k, _)| k.starts_with("create ") || k.starts_with("apply "))
        .filter(|(k, _)| k.ends_with(" secrets"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn a_namespace_deleted_under_the_controller_gets_nothing_new_and_is_forgotten() {
    let c = Cluster::start(REGISTRY, None).await;
    for ns in ["team-a", "team-b"] {
        c.tenant(ns, &[("app", &[])]).await;
    }
    c.grant(
        "teams",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-*"], "serviceAccounts": ["app"]},
               "repositories": ["**"], "purposes": ["sync"], "ttl": "10m"}),
    )
    .await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    for ns in ["team-a", "team-b"] {
        eventually(&format!("secret in {ns}"), WAIT, || async {
            c.pull_secrets(ns, "app")
                .await
                .contains(&SECRET.to_string())
                .then_some(())
        })
        .await;
    }
    let grants: Api<PullGrant> = Api::all(c.client.clone());
    let selected = |n: i64| {
        let grants = grants.clone();
        async move {
            grants
                .get("teams")
                .await
                .ok()
                .and_then(|g| g.status)
                .filter(|s| s.selected_namespaces == Some(n))
        }
    };
    eventually("two selected", WAIT, || selected(2)).await;

    // team-b is deleted; the namespace controller is held off, so it stays
    // Terminating with its contents for as long as this test needs.
    c.fake.set_namespace_controller(false);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(c.client.clone())
        .delete("team-b", &DeleteParams::default())
        .await
        .unwrap();
    // The grant now selects one namespace: a terminating one is not synced.
    eventually("one selected", WAIT, || selected(1)).await;
    let created_before = creates(&c);

    // A change that reissues every secret (a shorter ttl): team-a's is
    // rewritten; nothing is created in team-b.
    let before = c.secret("team-a", SECRET).await.unwrap();
    grants
        .patch(
            "teams",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ttl": "5m"}})),
        )
        .await
        .unwrap();
    eventually("team-a reissued", WAIT, || async {
        let s = c.secret("team-a", SECRET).await?;
        (s.annotations().get("pullbroker.dev/issued-at")
            != before.annotations().get("pullbroker.dev/issued-at")
            || s.resource_version() != before.resource_version())
        .then_some(())
    })
    .await;
    eventually("status after the change", WAIT, || async {
        grants
            .get("teams")
            .await
            .ok()
            .and_then(|g| g.status)
            .filter(|s| s.observed_generation == Some(2) && s.selected_namespaces == Some(1))
    })
    .await;
    assert_eq!(
        creates(&c) - created_before,
        1,
        "team-a's secret applied again, nothing created in team-b"
    );

    // The namespace controller runs: team-b and its contents go, and the
    // controller neither recreates anything nor counts a failure.
    c.fake.run_namespace_controller();
    eventually("team-b gone", WAIT, || async {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(c.client.clone())
            .get_opt("team-b")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // A namespace created and reissued after that proves the controller is
    // still working (its reconciles are serial per namespace, not per
    // cluster); team-b never comes back.
    c.tenant("team-c", &[("app", &[])]).await;
    eventually("secret in team-c", WAIT, || async {
        c.secret("team-c", SECRET).await.map(|_| ())
    })
    .await;
    eventually("two selected again", WAIT, || selected(2)).await;
    assert!(c.secret("team-b", SECRET).await.is_none());
    assert_eq!(
        replica.metrics.failures.load(Ordering::Relaxed),
        0,
        "a terminating namespace is no failure"
    );
    replica.stop().await;
}
