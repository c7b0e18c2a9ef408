//! An ECR-style refreshing upstream: an exec source (kubelet
//! credential-provider protocol) hands out a short-lived credential for a
//! real htpasswd `docker-registry`; the controller syncs it, refreshes it
//! from its real expiry once for all namespaces, and skopeo pulls with it.

mod support;

use std::os::unix::fs::PermissionsExt;

use kube::api::Api;
use kube::ResourceExt;
use pullbroker_core::policy::RegistryCredential;
use pullbroker_testenv::{Env, PASSWORD, REPO, USER};
use serde_json::json;
use support::*;

const SECRET: &str = "pullbroker-ecr";

fn runs(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("runs")).map_or(0, |s| s.lines().count())
}

/// Writes `script` as the executable `dir/name`.
fn executable(dir: &std::path::Path, name: &str, script: &str) {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A controller replica whose exec sources live in `dir`.
fn replica_with_exec_dir(c: &Cluster, dir: &std::path::Path) -> Replica {
    Replica::start(
        c.controller.clone(),
        Settings {
            exec_source_dir: Some(dir.to_path_buf()),
            ..settings("r1")
        },
    )
}

#[tokio::test]
async fn an_exec_source_is_synced_refreshed_from_its_expiry_and_pulls() {
    let env = Env::shared();
    let host = env.basic.host();
    let dir = tempfile::tempdir().unwrap();
    // The "cloud": answers with the registry's current password, valid 4 s.
    std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
    executable(dir.path(), "issue-token", &format!(
            "#!/bin/sh\ncat >/dev/null\necho run >> '{d}/runs'\nprintf '{{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderResponse\",\"cacheKeyType\":\"Registry\",\"cacheDuration\":\"4s\",\"auth\":{{\"{host}\":{{\"username\":\"{USER}\",\"password\":\"%s\"}}}}}}' \"$(cat '{d}/password')\"\n",
            d = dir.path().display()
        ));

    let c = Cluster::start(REGISTRY, None).await;
    c.create::<RegistryCredential>(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "ecr"}, "spec": {"registries": [host], "source": {"exec": {"command": "issue-token"}}}}))
        .await;
    // A document cannot point the controller at any other executable.
    c.create::<RegistryCredential>(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "evil"}, "spec": {"registries": ["evil.example"], "source": {"exec": {"command": "../../bin/sh"}}}}))
        .await;
    let namespaces = ["team-1", "team-2", "team-3"];
    for ns in namespaces {
        c.tenant(ns, &[("app", &[])]).await;
    }
    c.grant(
        "ecr",
        json!({"credential": "ecr", "subjects": {"namespaces": ["team-*"], "serviceAccounts": ["app"]},
               "repositories": ["**"], "purposes": ["sync"], "allowUpstreamCopy": true}),
    )
    .await;
    let replica = replica_with_exec_dir(&c, dir.path());
    let mut first = Vec::new();
    for ns in namespaces {
        first.push(eventually("synced", WAIT, || async { c.secret(ns, SECRET).await }).await);
    }
    assert_eq!(runs(dir.path()), 1, "one refresh serves every namespace");
    let ann = first[0].metadata.annotations.clone().unwrap();
    let lifetime = chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/expires-at"]).unwrap()
        - chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/issued-at"]).unwrap();
    assert_eq!(
        lifetime.num_seconds(),
        4,
        "the upstream's real lifetime, not the grant's ttl"
    );
    assert!(first[0]
        .annotations()
        .get("pullbroker.dev/static-copy")
        .is_none());

    // skopeo pulls with exactly what the secret holds.
    inspect(
        dir.path(),
        &config_of(&first[0]),
        &format!("{host}/{REPO}:v1"),
    )
    .expect("skopeo pulls with the synced upstream credential");

    // Refreshed at half its real lifetime: once, for all three namespaces.
    let issued = ann["pullbroker.dev/issued-at"].clone();
    for ns in namespaces {
        eventually("refreshed", WAIT, || async {
            let s = c.secret(ns, SECRET).await?;
            (s.annotations()["pullbroker.dev/issued-at"] != issued).then_some(())
        })
        .await;
    }
    let n = runs(dir.path());
    assert!(
        (2..=3).contains(&n),
        "one exec per refresh, not per namespace ({n})"
    );

    let evil = eventually("evil credential refused", WAIT, || async {
        Api::<RegistryCredential>::all(c.client.clone())
            .get("evil")
            .await
            .unwrap()
            .status
    })
    .await;
    assert_eq!(evil.conditions[0].reason, "Invalid");
    assert!(
        evil.conditions[0].message.contains("not a path"),
        "{}",
        evil.conditions[0].message
    );
    replica.stop().await;
}

/// An exec source's token opens everything its identity can read, so sync
/// copies it only on the operator's explicit `allowUpstreamCopy`; the copy
/// then lives at most the grant's ttl, however long the token is valid.
#[tokio::test]
async fn an_upstream_token_is_copied_only_on_opt_in_and_for_at_most_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    executable(dir.path(), "long-token", &format!("#!/bin/sh\ncat >/dev/null\necho run >> '{}/runs'\nprintf '{{\"kind\":\"CredentialProviderResponse\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"cacheDuration\":\"12h\",\"auth\":{{\"ecr.example\":{{\"username\":\"AWS\",\"password\":\"CANARY-long\"}}}}}}'\n", dir.path().display()));
    let c = Cluster::start(REGISTRY, None).await;
    c.create::<RegistryCredential>(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "ecr"}, "spec": {"registries": ["ecr.example"], "source": {"exec": {"command": "long-token"}}}}))
        .await;
    c.tenant("team-a", &[("app", &[])]).await;
    c.grant(
        "ecr",
        json!({"credential": "ecr", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
               "repositories": ["**"], "purposes": ["sync"], "ttl": "15m"}),
    )
    .await;
    let replica = replica_with_exec_dir(&c, dir.path());
    let status = eventually("blocked status", WAIT, || async {
        Api::<pullbroker_core::policy::PullGrant>::all(c.client.clone())
            .get("ecr")
            .await
            .unwrap()
            .status
    })
    .await;
    assert_eq!(
        (
            status.conditions[0].status.as_str(),
            status.conditions[0].reason.as_str()
        ),
        ("False", "UpstreamCopyNotAllowed")
    );
    assert!(
        status.conditions[0].message.contains("allowUpstreamCopy"),
        "{}",
        status.conditions[0].message
    );
    assert!(c.secret("team-a", SECRET).await.is_none(), "nothing copied");

    Api::<pullbroker_core::policy::PullGrant>::all(c.client.clone())
        .patch(
            "ecr",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"allowUpstreamCopy": true}})),
        )
        .await
        .unwrap();
    let secret = eventually("copied", WAIT, || async {
        c.secret("team-a", SECRET).await
    })
    .await;
    let ann = secret.annotations();
    let lifetime = chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/expires-at"]).unwrap()
        - chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/issued-at"]).unwrap();
    assert_eq!(
        lifetime.num_seconds(),
        15 * 60,
        "the grant's ttl, not the token's 12h"
    );
    let status = eventually("flagged status", WAIT, || async {
        let st = Api::<pullbroker_core::policy::PullGrant>::all(c.client.clone())
            .get("ecr")
            .await
            .unwrap()
            .status?;
        st.upstream_copy.then_some(st)
    })
    .await;
    assert_eq!(status.conditions[0].reason, "SyncedUpstreamCopy");

    // A ttl of 2 s: the copy is replaced within it, though the token is
    // valid for 12 h.
    Api::<pullbroker_core::policy::PullGrant>::all(c.client.clone())
        .patch(
            "ecr",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"ttl": "2s"}})),
        )
        .await
        .unwrap();
    let short = eventually("a copy for the shorter ttl", WAIT, || async {
        let s = c.secret("team-a", SECRET).await?;
        let ann = s.annotations();
        let lifetime = chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/expires-at"])
            .ok()?
            - chrono::DateTime::parse_from_rfc3339(&ann["pullbroker.dev/issued-at"]).ok()?;
        (lifetime.num_seconds() == 2).then(|| ann["pullbroker.dev/issued-at"].clone())
    })
    .await;
    eventually("replaced within its ttl", WAIT, || async {
        let s = c.secret("team-a", SECRET).await?;
        (s.annotations()["pullbroker.dev/issued-at"] != short).then_some(())
    })
    .await;
    replica.stop().await;
}

#[tokio::test]
async fn the_broker_hands_out_an_exec_sources_credential_capped_by_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    executable(dir.path(), "short-token", "#!/bin/sh\ncat >/dev/null\nprintf '{\"kind\":\"CredentialProviderResponse\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"cacheDuration\":\"90s\",\"auth\":{\"ecr.example\":{\"username\":\"AWS\",\"password\":\"CANARY-ecr-pw\"}}}'\n");
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    let file = dir.path().join("broker.yaml");
    std::fs::write(&file, format!(
        "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  execSourceDir: .\n  serviceAccountIssuer: {{issuer: https://kubernetes.default.svc, discoveryUrl: {}}}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: ecr}}\nspec: {{registries: [ecr.example], source: {{exec: {{command: short-token}}}}}}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {{name: g}}\nspec: {{credential: ecr, subjects: {{namespaces: [team-a], serviceAccounts: [app]}}, repositories: ['**'], purposes: [pull], ttl: 10m}}\n",
        c.fake.url)).unwrap();
    let (_broker, url, _server) = serve_broker(&file).await;
    let token = token(&c, "team-a", "app").await;
    let (status, body) = exchange(&url, &token, "ecr.example/app:1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["username"], "AWS", "{body}");
    assert_eq!(body["password"], "CANARY-ecr-pw");
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (80..=90).contains(&left),
        "capped by the upstream's 90 s, not the grant's 10m: {left}"
    );
}
