//! The broker with `policySource: kubernetes`: grants, credentials, central
//! secrets and namespace labels come from the (fake) API server; tokens are
//! the API server's own (TokenRequest), verified through OIDC discovery.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pullbroker_core::policy::PullGrant;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_broker_follows_grants_and_labels_in_the_cluster() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer:\n    issuer: https://kubernetes.default.svc\n    discoveryUrl: {}\n",
            c.fake.url
        ),
    )
    .unwrap();
    let (broker, url, server) = serve_broker(&file).await;
    let (code, _) = get(&url, "/readyz").await;
    assert_eq!(code, 503, "not ready before the cluster's policy arrives");
    let source = tokio::spawn(pullbroker_controller::policy_source::run(
        c.client.clone(),
        std::sync::Arc::new(broker.clone()),
        SYSTEM.into(),
    ));
    eventually("credential from the cluster", WAIT, || async {
        broker
            .snapshot()
            .credentials
            .contains_key("corp")
            .then_some(())
    })
    .await;

    assert_eq!(get(&url, "/readyz").await, (200, "ok".to_string()));
    let image = "registry.corp.example/apps/team-a/web:1";
    let t = token(&c, "team-a", "app").await;
    let (status, body) = exchange(&url, &t, image).await;
    assert_eq!(status, 403, "default deny: {body}");

    // A grant by label: the namespace's labels come from the cluster too.
    c.grant(
        "tenant-a",
        json!({"credential": "corp", "subjects": {"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "serviceAccounts": ["app"]},
               "repositories": ["apps/team-a/**"], "purposes": ["pull"]}),
    )
    .await;
    eventually("grant seen", WAIT, || async {
        (broker.snapshot().policy.grants().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        exchange(&url, &t, image).await.0,
        403,
        "namespace not labelled yet"
    );
    Api::<Namespace>::all(c.client.clone())
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tenant": "a"}}})),
        )
        .await
        .unwrap();
    let body = eventually("allowed once labelled", WAIT, || async {
        let (status, body) = exchange(&url, &t, image).await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(
        body["password"].as_str().unwrap().starts_with("pbc1."),
        "{body}"
    );
    assert_eq!(
        exchange(&url, &t, "registry.corp.example/apps/team-b/web:1")
            .await
            .0,
        403
    );

    // A malformed grant in the cluster is left out, not fatal.
    c.grant(
        "broken",
        json!({"credential": "nope", "subjects": {"namespaces": ["*"], "serviceAccounts": ["*"]},
               "repositories": ["**"], "purposes": ["pull"]}),
    )
    .await;
    // Deleting the grant revokes at once.
    Api::<PullGrant>::all(c.client.clone())
        .delete("tenant-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("denied once the grant is gone", WAIT, || async {
        (exchange(&url, &t, image).await.0 == 403).then_some(())
    })
    .await;
    // A reload of the file keeps the cluster's policy.
    broker.reload().await.unwrap();
    assert!(broker.snapshot().credentials.contains_key("corp"));
    source.abort();
    drop(server);
}
