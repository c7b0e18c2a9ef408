//! The broker with `policySource: kubernetes`: grants, credentials, central
//! secrets and namespace labels come from the (fake) API server; tokens are
//! the API server's own (TokenRequest), verified through OIDC discovery.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pullbroker_core::policy::PullGrant;
use std::time::Duration;

use serde_json::{json, Value};
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
    let source = tokio::spawn(pullbroker_cluster::policy_source::run(
        c.broker.clone(),
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
        pullbroker_credentials::mint::BrokerCredential::is_one(body["password"].as_str().unwrap()),
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

fn broker_file(
    dir: &std::path::Path,
    name: &str,
    issuer_source: &str,
    kubernetes: bool,
) -> std::path::PathBuf {
    let file = dir.join(name);
    let source = if kubernetes {
        "  policySource: kubernetes\n"
    } else {
        ""
    };
    std::fs::write(
        &file,
        format!(
            "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n{source}  serviceAccountIssuer:\n    issuer: https://kubernetes.default.svc\n    {issuer_source}\n"
        ),
    )
    .unwrap();
    file
}

/// The cluster policy source feeding `broker`, until dropped.
fn follow_cluster(c: &Cluster, broker: &pullbroker_broker::Broker) -> AbortOnDrop {
    AbortOnDrop::from(tokio::spawn(pullbroker_cluster::policy_source::run(
        c.broker.clone(),
        std::sync::Arc::new(broker.clone()),
        SYSTEM.into(),
    )))
}

async fn health(url: &str) -> Value {
    serde_json::from_str(&get(url, "/healthz").await.1).unwrap()
}

/// Started while the API server (issuer discovery, JWKS, the cluster policy)
/// is down, the broker comes up alive and not ready, says why, and becomes
/// ready by itself when the API answers.
#[tokio::test]
async fn started_against_dead_dependencies_the_broker_becomes_ready_by_itself() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    let dir = tempfile::tempdir().unwrap();
    let discovery = broker_file(
        dir.path(),
        "discovery.yaml",
        &format!(
            "discoveryUrl: {}/.well-known/openid-configuration",
            c.fake.url
        ),
        true,
    );
    let jwks = broker_file(
        dir.path(),
        "jwks.yaml",
        &format!("jwksUrl: {}/openid/v1/jwks", c.fake.url),
        false,
    );
    c.fake.set_down(true);
    let (cluster_broker, cluster_url, _s1) = serve_broker(&discovery).await;
    let (_file_broker, file_url, _s2) = serve_broker(&jwks).await;
    let source = follow_cluster(&c, &cluster_broker);
    for url in [&cluster_url, &file_url] {
        assert_eq!(get(url, "/healthz").await.0, 200, "alive");
        let (code, why) = get(url, "/readyz").await;
        assert_eq!(code, 503, "{why}");
    }
    assert_eq!(
        get(&cluster_url, "/readyz").await.1,
        "waiting for the policy from the cluster"
    );
    let why = eventually("the reason for unreadiness", WAIT, || async {
        let (_, why) = get(&file_url, "/readyz").await;
        why.contains("jwks:").then_some(why)
    })
    .await;
    assert!(
        why.starts_with("no service-account issuer keys loaded"),
        "{why}"
    );
    assert!(!why.contains("127.0.0.1"), "no URL in the reason: {why}");
    assert_eq!(health(&file_url).await["issuerKeys"]["loaded"], 0);

    c.fake.set_down(false);
    for url in [&cluster_url, &file_url] {
        eventually("ready without a restart", WAIT, || async {
            (get(url, "/readyz").await == (200, "ok".to_string())).then_some(())
        })
        .await;
    }
    let h = health(&cluster_url).await;
    assert_eq!(h["policy"]["current"], true, "{h}");
    assert!(h["issuerKeys"]["loaded"].as_u64().unwrap() > 0, "{h}");
    // And it verifies tokens: default deny, not "unavailable".
    let t = token(&c, "team-a", "app").await;
    let (status, body) =
        exchange(&cluster_url, &t, "registry.corp.example/apps/team-a/web:1").await;
    assert_eq!(status, 403, "{body}");
    drop(source);
}

/// The API server is down for 20 s: exchanges keep working from the cached
/// keys and policy while `/healthz` and `/metrics` say how stale it is; a
/// grant deleted as the API returns stops allowing within 10 s.
#[tokio::test]
async fn after_an_outage_a_deleted_grant_stops_allowing_within_ten_seconds() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
               "repositories": ["apps/team-a/**"], "purposes": ["pull"]}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = broker_file(
        dir.path(),
        "broker.yaml",
        &format!("discoveryUrl: {}", c.fake.url),
        true,
    );
    let (broker, url, _server) = serve_broker(&file).await;
    let _source = follow_cluster(&c, &broker);
    let image = "registry.corp.example/apps/team-a/web:1";
    let t = token(&c, "team-a", "app").await;
    eventually("allowed", WAIT, || async {
        (exchange(&url, &t, image).await.0 == 200).then_some(())
    })
    .await;

    c.fake.set_down(true);
    let down = std::time::Instant::now();
    let stale = eventually("staleness reported", WAIT, || async {
        let h = health(&url).await;
        (h["policy"]["current"] == false && h["policy"]["staleSeconds"].as_u64() >= Some(2))
            .then_some(h)
    })
    .await;
    assert_eq!(stale["status"], "ok", "{stale}");
    assert_eq!(get(&url, "/readyz").await.0, 200, "serving from cache");
    assert_eq!(
        exchange(&url, &t, image).await.0,
        200,
        "cached keys and policy serve"
    );
    let metrics = get(&url, "/metrics").await.1;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pullbroker_policy_stale_seconds "))
        .unwrap();
    assert!(
        line.split(' ').nth(1).unwrap().parse::<i64>().unwrap() >= 2,
        "{line}"
    );
    // The outage lasts 20 s (the scenario, not a synchronisation): long
    // enough for a client-go-style backoff (0.8 s doubling) to be waiting
    // 12.8 s for its next try — past the 10 s bound below — where ours
    // (`Prompt`, capped at 2 s) retries within 2 s.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down.elapsed())).await;

    c.fake.set_down(false);
    let back = std::time::Instant::now();
    Api::<PullGrant>::all(c.client.clone())
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "denied after the outage",
        Duration::from_secs(10),
        || async { (exchange(&url, &t, image).await.0 == 403).then_some(()) },
    )
    .await;
    let took = back.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    eventually("current again", WAIT, || async {
        (health(&url).await["policy"]["current"] == true).then_some(())
    })
    .await;
    eprintln!("grant deleted as the API returned: refused after {took:?}");
}

/// The API server hangs while the policy source re-lists (its watches were
/// cut a moment before), with TokenReview on: exchanges do not wait for
/// either. A token reviewed within the stale window is served its verdict,
/// a never-seen one gets 503 once the review gives up — both well within the
/// kubelet plugin's 5 s — and when the API answers again the policy is
/// current again.
#[tokio::test]
async fn a_hung_api_server_stalls_neither_exchanges_nor_the_policy_for_good() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[]), ("other", &[])]).await;
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app", "other"]},
               "repositories": ["apps/team-a/**"], "purposes": ["pull"]}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("review-token"), "unused-by-the-fake\n").unwrap();
    let file = broker_file(
        dir.path(),
        "broker.yaml",
        &format!(
            "discoveryUrl: {u}\n    tokenReview: {{apiServer: \"{u}\", tokenFile: review-token, cacheTtl: 0s}}",
            u = c.fake.url
        ),
        true,
    );
    let (broker, url, _server) = serve_broker(&file).await;
    let _source = follow_cluster(&c, &broker);
    let image = "registry.corp.example/apps/team-a/web:1";
    let (reviewed, unseen) = (
        token(&c, "team-a", "app").await,
        token(&c, "team-a", "other").await,
    );
    eventually("allowed", WAIT, || async {
        (exchange(&url, &reviewed, image).await.0 == 200).then_some(())
    })
    .await;

    // The watches are cut; the policy source re-lists into a hung server.
    c.fake.set_down(true);
    eventually("the policy is stale", WAIT, || async {
        (health(&url).await["policy"]["current"] == false).then_some(())
    })
    .await;
    c.fake.set_hung(true);
    c.fake.set_down(false);

    let started = std::time::Instant::now();
    let (status, body) = exchange(&url, &reviewed, image).await;
    let recent = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(recent < Duration::from_millis(1500), "took {recent:?}");

    let started = std::time::Instant::now();
    let (status, body) = exchange(&url, &unseen, image).await;
    let refused = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["class"], "unavailable", "{body}");
    assert!(refused < Duration::from_secs(3), "took {refused:?}");

    c.fake.set_hung(false);
    eventually("the policy is current again", WAIT, || async {
        (health(&url).await["policy"]["current"] == true).then_some(())
    })
    .await;
    assert_eq!(
        exchange(&url, &unseen, image).await.0,
        200,
        "reviewed again"
    );
}
