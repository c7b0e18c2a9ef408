//! A synced secret, exactly as the controller wrote it, used as skopeo's
//! auth file against a real token-auth `docker-registry` that trusts the
//! broker: it pulls the granted repository and nothing else, and after a
//! rotation the old credential stops working once it expires.

mod support;

#[path = "../../broker/tests/support/mod.rs"]
mod broker;

use serde_json::json;
use support::*;

const SECRET: &str = "pullbroker-sync-a";

#[tokio::test]
async fn skopeo_pulls_with_a_synced_secret_and_rotation_retires_the_old_one() {
    let s = broker::start().await;
    let sync_grant = "apiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {name: sync-a}\nspec:\n  credential: corp\n  subjects: {namespaces: [team-a], serviceAccounts: [app]}\n  repositories: [demo/app]\n  purposes: [sync]\n  ttl: 6s\n";
    // The broker and the cluster hold the same documents and signing key.
    s.write_config(&format!("{}---\n{sync_grant}", broker::DEFAULT_GRANTS));
    s.broker.reload().await.unwrap();
    let c = Cluster::start(&s.host(), Some((s.key_pem.clone(), s.cert_pem.clone()))).await;
    c.tenant("team-a", &[("app", &[])]).await;
    c.grant(
        "sync-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
               "repositories": ["demo/app"], "purposes": ["sync"], "ttl": "6s"}),
    )
    .await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    let first = eventually("synced secret", WAIT, || async {
        c.secret("team-a", SECRET).await
    })
    .await;
    let old = config_of(&first);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (host, cfg) = (s.host(), old.clone());
    let results = broker::blocking(move || {
        ["demo/app:v1", "other/app:v1", "demo/sub/deep:v1"]
            .map(|repo| inspect(&d, &cfg, &format!("{host}/{repo}")))
    })
    .await;
    assert!(results[0].is_ok(), "granted repository: {:?}", results[0]);
    for r in &results[1..] {
        let e = r.as_ref().expect_err("not granted");
        assert!(
            e.contains("unauthorized") || e.contains("denied") || e.contains("401"),
            "{e}"
        );
    }

    // Rotation at half the 6 s lifetime: new content before the old expires.
    let rotated = eventually("rotation", WAIT, || async {
        c.secret("team-a", SECRET)
            .await
            .filter(|s| config_of(s) != old)
    })
    .await;
    let old_expiry =
        first.metadata.annotations.as_ref().unwrap()["pullbroker.dev/expires-at"].clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        now <= old_expiry,
        "rotated before the old credential expired ({now} vs {old_expiry})"
    );
    let (d, host, cfg) = (dir.path().to_path_buf(), s.host(), config_of(&rotated));
    broker::blocking(move || inspect(&d, &cfg, &format!("{host}/demo/app:v1")))
        .await
        .expect("the rotated credential works");

    // The old credential stops working at the registry once it expires.
    let host = s.host();
    eventually("old credential refused", WAIT, || {
        let (d, host, cfg) = (dir.path().to_path_buf(), host.clone(), old.clone());
        async move {
            broker::blocking(move || inspect(&d, &cfg, &format!("{host}/demo/app:v1")))
                .await
                .err()
        }
    })
    .await;
    let current = c.secret("team-a", SECRET).await.unwrap();
    let (d, host, cfg) = (dir.path().to_path_buf(), s.host(), config_of(&current));
    broker::blocking(move || inspect(&d, &cfg, &format!("{host}/demo/app:v1")))
        .await
        .expect("whatever the secret holds now works");
    replica.stop().await;
}
