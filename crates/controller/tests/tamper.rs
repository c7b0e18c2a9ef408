//! A tenant can write to the managed secret in its own namespace. Whatever it
//! writes — another credential, an added key, a rotation time moved to 2099,
//! a removed label — the controller finds it (its own writes are known by
//! resourceVersion and sealed) and replaces the secret whole, with one write,
//! also when the edit happened while the controller was down.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use pullbroker_controller::seal::{intact, SEAL_KEY_SECRET};
use pullbroker_core::seal::SealKey;
use pullbroker_credentials::mint::BrokerCredential;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "pullbroker-team-a";
const TTL: i64 = 600;

async fn seal_key(c: &Cluster) -> SealKey {
    let s = eventually("seal key", WAIT, || async {
        c.secret(SYSTEM, SEAL_KEY_SECRET).await
    })
    .await;
    SealKey::from_bytes(&s.data.unwrap()["key"].0).unwrap()
}

/// The secret as the controller means it: sealed, nothing but our key, a
/// valid broker credential for the namespace, expiring within the ttl.
fn healthy(c: &Cluster, key: &SealKey, s: &Secret) -> bool {
    let now = Utc::now().timestamp();
    let data = s.data.clone().unwrap_or_default();
    let expires = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("pullbroker.dev/expires-at"))
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(i64::MAX, |t| t.timestamp());
    let labels = s.metadata.labels.clone().unwrap_or_default();
    intact(key, s)
        && data.keys().eq([".dockerconfigjson"])
        && labels.get("pullbroker.dev/grant").map(String::as_str) == Some("team-a")
        && labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("pullbroker")
        && expires <= now + TTL
        && BrokerCredential::open(&credential_in(s, REGISTRY).1, &c.keys())
            .is_ok_and(|b| b.ns == "team-a" && b.exp <= now + TTL)
}

/// The fake's write counters for secrets.
fn secret_writes(c: &Cluster) -> BTreeMap<String, usize> {
    c.fake
        .writes()
        .into_iter()
        .filter(|(k, _)| k.ends_with(" secrets"))
        .collect()
}

fn delta(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> Vec<String> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect()
}

/// A tenant's edit, as `kubectl patch` would send it.
async fn tenant_patch(c: &Cluster, patch: Value) {
    Api::<Secret>::namespaced(c.client.clone(), "team-a")
        .patch(
            SECRET,
            &PatchParams {
                field_manager: Some("kubectl-patch".into()),
                ..Default::default()
            },
            &Patch::Merge(patch),
        )
        .await
        .unwrap();
}

async fn healed(c: &Cluster, key: &SealKey, what: &str) -> Secret {
    eventually(what, WAIT, || async {
        c.secret("team-a", SECRET)
            .await
            .filter(|s| healthy(c, key, s))
    })
    .await
}

/// Waits until every reconcile of team-a caused so far has finished: a new
/// granted service account gets its reference in a later reconcile, after
/// the secret writes of the earlier ones.
async fn settle(c: &Cluster, n: usize) {
    let sa = format!("w-{n}");
    c.create_in::<k8s_openapi::api::core::v1::ServiceAccount>(
        "team-a",
        json!({"metadata": {"name": sa}}),
    )
    .await;
    eventually(&format!("{sa} referenced"), WAIT, || async {
        c.pull_secrets("team-a", &sa)
            .await
            .iter()
            .any(|s| s == SECRET)
            .then_some(())
    })
    .await;
}

async fn cluster() -> Cluster {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app", "w-*"]},
               "repositories": ["apps/team-a/**"], "purposes": ["sync"], "ttl": "10m"}),
    )
    .await;
    c
}

fn base64_json(v: &Value) -> String {
    use base64::Engine as _;
    let bytes = match v {
        Value::String(s) => s.as_bytes().to_vec(),
        v => serde_json::to_vec(v).unwrap(),
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn each_tenant_edit_is_replaced_whole_with_one_write() {
    let c = cluster().await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    let key = seal_key(&c).await;
    let mut last = healed(&c, &key, "first issue").await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "data edited",
            json!({"data": {".dockerconfigjson": base64_json(
                &json!({"auths": {REGISTRY: {"username": "tenant", "password": "theirs"}}}))}}),
        ),
        (
            "key added",
            json!({"data": {"extra": base64_json(&json!("x"))}}),
        ),
        (
            "expiry moved to 2099",
            json!({"metadata": {"annotations": {"pullbroker.dev/expires-at": "2099-01-01T00:00:00Z",
                                                 "pullbroker.dev/issued-at": "2098-12-31T00:00:00Z"}}}),
        ),
        (
            "grant label removed",
            json!({"metadata": {"labels": {"pullbroker.dev/grant": null}}}),
        ),
        (
            "managed-by label removed and a key added",
            json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}},
                   "data": {"extra": base64_json(&json!("y"))}}),
        ),
    ];
    for (n, (what, patch)) in cases.into_iter().enumerate() {
        let before = secret_writes(&c);
        tenant_patch(&c, patch).await;
        let s = eventually(what, WAIT, || async {
            c.secret("team-a", SECRET)
                .await
                .filter(|s| s.metadata.resource_version != last.metadata.resource_version)
                .filter(|s| healthy(&c, &key, s))
        })
        .await;
        settle(&c, n).await;
        let expected: &[&str] = if what.starts_with("managed-by") {
            // Out of our label selection it looks missing: applied, then
            // replaced because the apply kept the tenant's key.
            &["apply secrets +1", "patch secrets +1", "update secrets +1"]
        } else {
            &["patch secrets +1", "update secrets +1"]
        };
        assert_eq!(
            delta(&before, &secret_writes(&c)),
            expected,
            "{what}: the tenant's patch and our one write"
        );
        let now = c.secret("team-a", SECRET).await.unwrap();
        assert_eq!(
            now.metadata.resource_version, s.metadata.resource_version,
            "{what}: quiet since"
        );
        last = s;
    }
    assert_eq!(
        replica
            .metrics
            .repaired
            .load(std::sync::atomic::Ordering::Relaxed),
        4,
        "found by its seal (the unlabelled one looked missing)"
    );
    replica.stop().await;
}

#[tokio::test]
async fn an_edit_made_while_the_controller_was_down_is_healed_and_a_clean_restart_writes_nothing() {
    let c = cluster().await;
    let r1 = Replica::start(c.controller.clone(), settings("r1"));
    let key = seal_key(&c).await;
    healed(&c, &key, "first issue").await;
    settle(&c, 0).await;
    r1.stop().await;

    // A clean restart: reads (the seal check) but no writes.
    let before = secret_writes(&c);
    let r2 = Replica::start(c.controller.clone(), settings("r2"));
    settle(&c, 1).await;
    assert!(delta(&before, &secret_writes(&c)).is_empty());
    r2.stop().await;

    // The rotation time moved while nobody watched, then six restarts would
    // not heal it before; one does now.
    tenant_patch(
        &c,
        json!({"metadata": {"annotations": {"pullbroker.dev/expires-at": "2099-01-01T00:00:00Z"}}}),
    )
    .await;
    let before = secret_writes(&c);
    let r3 = Replica::start(c.controller.clone(), settings("r3"));
    healed(&c, &key, "healed after a restart").await;
    settle(&c, 2).await;
    r3.stop().await;
    assert_eq!(delta(&before, &secret_writes(&c)), ["update secrets +1"]);
}
