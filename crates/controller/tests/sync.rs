//! Sync mode against the fake API server with the real kube client: secrets
//! and references appear in exactly the selected namespaces, follow selector
//! changes and grant deletion, leave users' entries alone, and carry
//! namespace-scoped broker credentials.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use pullbroker_core::policy::{PullGrant, RegistryCredential};
use pullbroker_credentials::mint::BrokerCredential;
use serde_json::json;
use support::*;

const SECRET: &str = "pullbroker-team-a";

async fn has_ref(c: &Cluster, ns: &str, sa: &str) -> bool {
    c.pull_secrets(ns, sa).await.iter().any(|s| s == SECRET)
}

/// The sync grant `team-a` for team-a's `app`, repositories `apps/team-a/**`.
async fn grant_team_a_app(c: &Cluster) {
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
               "repositories": ["apps/team-a/**"], "purposes": ["sync"]}),
    )
    .await;
}

#[tokio::test]
async fn grant_lifecycle_creates_follows_and_cleans_up() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &["user-own"]), ("default", &[])])
        .await;
    c.tenant("team-a-dev", &[("app", &[])]).await;
    c.tenant("team-ab", &[("app", &[])]).await;
    c.tenant("other", &[("app", &[])]).await;
    // A user's own secret that happens to carry our name: never ours.
    c.create_in::<Secret>(
        "other",
        json!({"metadata": {"name": SECRET}, "stringData": {"x": "y"}}),
    )
    .await;
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-a", "team-a-*"], "serviceAccounts": ["app"]},
               "repositories": ["apps/team-a/**"], "purposes": ["sync"], "ttl": "10m"}),
    )
    .await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));

    // Exactly the selected namespaces and service accounts.
    for ns in ["team-a", "team-a-dev"] {
        eventually(&format!("reference in {ns}"), WAIT, || async {
            has_ref(&c, ns, "app").await.then_some(())
        })
        .await;
        let s = c.secret(ns, SECRET).await.expect("secret exists");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(s.labels()["app.kubernetes.io/managed-by"], "pullbroker");
        assert!(
            s.owner_references().is_empty(),
            "we delete it ourselves, after the references"
        );
        // A broker credential for the namespace, not the central secret.
        let (user, password) = credential_in(&s, REGISTRY);
        assert_eq!(user, "pullbroker");
        let cred = BrokerCredential::open(&password, &c.keys()).expect("a valid broker credential");
        assert_eq!(
            (cred.ns.as_str(), cred.sa.as_str(), cred.cred.as_str()),
            (ns, "", "corp")
        );
        let lifetime = cred.exp - cred.iat;
        assert!((590..=600).contains(&lifetime), "ttl 10m, got {lifetime}s");
    }
    assert_eq!(
        c.pull_secrets("team-a", "app").await,
        ["user-own", SECRET],
        "users' entries stay, ours appended"
    );
    assert!(
        !has_ref(&c, "team-a", "default").await,
        "only granted service accounts"
    );
    assert!(
        c.secret("team-ab", SECRET).await.is_none(),
        "team-ab is not team-a-*"
    );
    let status = eventually("grant status", WAIT, || async {
        let g = Api::<PullGrant>::all(c.client.clone())
            .get("team-a")
            .await
            .unwrap();
        g.status.filter(|s| s.selected_namespaces == Some(2))
    })
    .await;
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(
        (
            status.conditions[0].status.as_str(),
            status.conditions[0].reason.as_str()
        ),
        ("True", "Synced")
    );
    assert_eq!(status.observed_generation, Some(1));
    // The credential's status: its source, and rotation times from the
    // secrets — the latest issue, and the earliest due (half of the 10m ttl
    // after the earliest issue; the two secrets may be a second apart).
    let mut issued = Vec::new();
    for ns in ["team-a", "team-a-dev"] {
        let s = c.secret(ns, SECRET).await.expect("secret exists");
        let at = &s.annotations()["pullbroker.dev/issued-at"];
        issued.push(chrono::DateTime::parse_from_rfc3339(at).unwrap());
    }
    let latest = *issued.iter().max().unwrap();
    let due = *issued.iter().min().unwrap() + chrono::Duration::seconds(300);
    let cred = eventually("credential status", WAIT, || async {
        let c = Api::<RegistryCredential>::all(c.client.clone())
            .get("corp")
            .await
            .unwrap();
        let parse = |t: &Option<String>| {
            t.as_deref()
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        };
        c.status.filter(|s| {
            parse(&s.last_rotation) == Some(latest) && parse(&s.next_rotation) == Some(due)
        })
    })
    .await;
    assert_eq!(
        (
            cred.conditions[0].status.as_str(),
            cred.conditions[0].reason.as_str()
        ),
        ("True", "SourceAvailable")
    );
    c.create::<RegistryCredential>(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "keyless"}, "spec": {"registries": ["other.example"], "source": {"tokenIssuer": {
        "signingKeySecretRef": {"name": "no-such-secret"}, "service": "s", "issuer": "i"}}}}))
        .await;
    let keyless = eventually("keyless status", WAIT, || async {
        Api::<RegistryCredential>::all(c.client.clone())
            .get("keyless")
            .await
            .unwrap()
            .status
    })
    .await;
    assert_eq!(keyless.conditions[0].reason, "SourceUnavailable");
    assert!(
        keyless.conditions[0].message.contains("no-such-secret"),
        "{}",
        keyless.conditions[0].message
    );

    // A new namespace is served.
    c.tenant("team-a-new", &[("app", &[])]).await;
    eventually("new namespace served", WAIT, || async {
        has_ref(&c, "team-a-new", "app").await.then_some(())
    })
    .await;
    // A new service account in a served namespace too; one not granted is left alone.
    c.create_in::<k8s_openapi::api::core::v1::ServiceAccount>(
        "team-a",
        json!({"metadata": {"name": "worker"}}),
    )
    .await;

    // Narrowing the grant removes what it no longer selects.
    Api::<PullGrant>::all(c.client.clone())
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app", "worker"]}}})),
        )
        .await
        .unwrap();
    eventually("narrowed", WAIT, || async {
        (c.secret("team-a-dev", SECRET).await.is_none()
            && c.secret("team-a-new", SECRET).await.is_none()
            && !has_ref(&c, "team-a-dev", "app").await
            && !has_ref(&c, "team-a-new", "app").await
            && has_ref(&c, "team-a", "worker").await)
            .then_some(())
    })
    .await;
    assert!(has_ref(&c, "team-a", "app").await, "still selected");

    // Deleting the grant removes everything we made; users' entries survive.
    Api::<PullGrant>::all(c.client.clone())
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("grant deleted: cleaned up", WAIT, || async {
        (c.secret("team-a", SECRET).await.is_none()
            && !has_ref(&c, "team-a", "app").await
            && !has_ref(&c, "team-a", "worker").await)
            .then_some(())
    })
    .await;
    assert_eq!(c.pull_secrets("team-a", "app").await, ["user-own"]);
    let theirs = c
        .secret("other", SECRET)
        .await
        .expect("the user's secret survives");
    assert!(theirs
        .labels()
        .get("app.kubernetes.io/managed-by")
        .is_none());
    replica.stop().await;
}

#[tokio::test]
async fn static_passwords_are_copied_only_on_opt_in_and_flagged() {
    let c = Cluster::start(REGISTRY, None).await;
    c.create_in::<Secret>(SYSTEM, json!({"metadata": {"name": "hub-auth"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{\"static.example\":{\"username\":\"bot\",\"password\":\"CANARY-static-pw\"}}}"}}))
        .await;
    c.create::<pullbroker_core::policy::RegistryCredential>(json!({
        "apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "hub"},
        "spec": {"registries": ["static.example"], "source": {"secretRef": {"name": "hub-auth"}}}}))
        .await;
    c.tenant("team-a", &[("app", &[])]).await;
    let spec = json!({"credential": "hub", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["*"]},
        "repositories": ["**"], "purposes": ["sync"]});
    c.grant("hub", spec.clone()).await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    let status = eventually("blocked status", WAIT, || async {
        Api::<PullGrant>::all(c.client.clone())
            .get("hub")
            .await
            .unwrap()
            .status
    })
    .await;
    assert_eq!(status.conditions[0].status, "False");
    assert_eq!(status.conditions[0].reason, "StaticCopyNotAllowed");
    assert!(status.conditions[0].message.contains("allowUpstreamCopy"));
    assert!(
        c.secret("team-a", "pullbroker-hub").await.is_none(),
        "no copy without opt-in"
    );

    Api::<PullGrant>::all(c.client.clone())
        .patch(
            "hub",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowStaticCopy": true}})),
        )
        .await
        .unwrap();
    let s = eventually("static copy", WAIT, || async {
        c.secret("team-a", "pullbroker-hub").await
    })
    .await;
    assert_eq!(s.annotations()["pullbroker.dev/static-copy"], "true");
    let status = eventually("flagged status", WAIT, || async {
        let st = Api::<PullGrant>::all(c.client.clone())
            .get("hub")
            .await
            .unwrap()
            .status?;
        (st.static_copy && st.observed_generation == Some(2)).then_some(st)
    })
    .await;
    assert_eq!(status.conditions[0].reason, "SyncedStaticCopy");
    let before = c.fake.writes().get("apply secrets").copied().unwrap_or(0);

    // The upstream password changes centrally: every copy follows at once.
    Api::<Secret>::namespaced(c.client.clone(), SYSTEM)
        .patch("hub-auth", &PatchParams::default(), &Patch::Merge(json!({"stringData": {".dockerconfigjson":
            "{\"auths\":{\"static.example\":{\"username\":\"bot\",\"password\":\"CANARY-new-pw\"}}}"}})))
        .await
        .unwrap();
    let copied = eventually("new password copied", WAIT, || async {
        let s = c.secret("team-a", "pullbroker-hub").await?;
        let config = String::from_utf8(s.data.as_ref()?[".dockerconfigjson"].0.clone()).ok()?;
        config.contains("CANARY-new-pw").then_some(s)
    })
    .await;
    assert_ne!(
        copied.annotations()["pullbroker.dev/source-version"],
        s.annotations()["pullbroker.dev/source-version"]
    );
    assert_eq!(
        c.fake.writes()["apply secrets"],
        before + 1,
        "one rewrite for one change"
    );
    replica.stop().await;
}

#[tokio::test]
async fn pods_admitted_before_the_secret_get_an_event_and_owned_ones_are_recreated() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::events::v1::Event;
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    grant_team_a_app(&c).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "team-a");
    // Created before the controller ran: admitted without our secret.
    for (name, image, owned) in [
        ("owned", "registry.corp.example/apps/team-a/web:1", true),
        ("bare", "registry.corp.example/apps/team-a/web:1", false),
        ("elsewhere", "registry.corp.example/apps/team-b/web:1", true),
    ] {
        let owner = if owned {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid", "controller": true}])
        } else {
            json!([])
        };
        c.create_in::<Pod>(
            "team-a",
            json!({"metadata": {"name": name, "ownerReferences": owner},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": image}]}}),
        )
        .await;
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "c", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}})))
            .await
            .unwrap();
    }
    let replica = Replica::start(
        c.controller.clone(),
        Settings {
            recreate_stuck_pods: true,
            ..settings("r1")
        },
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), "team-a");
    let warned = eventually("events for both stuck pods", WAIT, || async {
        let list = events.list(&Default::default()).await.unwrap().items;
        let names: Vec<String> = list
            .iter()
            .filter(|e| e.reason.as_deref() == Some("MissingPullSecret"))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        (names.len() >= 2).then_some((names, list))
    })
    .await;
    let (mut names, list) = warned;
    names.sort();
    assert_eq!(
        names,
        ["bare", "owned"],
        "not the pod whose image no grant covers"
    );
    let note = list
        .iter()
        .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bare"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        note.contains(SECRET) && note.contains("delete the pod"),
        "{note}"
    );
    eventually("owned pod deleted", WAIT, || async {
        pods.get_opt("owned").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        pods.get_opt("bare").await.unwrap().is_some(),
        "no owner to recreate it: left alone"
    );
    assert!(pods.get_opt("elsewhere").await.unwrap().is_some());
    replica.stop().await;
}

/// A reference patch that loses a race (409 from the API server) is redone
/// on a fresh read of the service account, keeping the other writer's entry.
#[tokio::test]
async fn a_service_account_patch_that_loses_a_race_is_redone_on_a_fresh_read() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &["user-own"])]).await;
    grant_team_a_app(&c).await;
    c.fake.fail_next("patch", "serviceaccounts", 409);
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    eventually("the reference, after the conflict", WAIT, || async {
        has_ref(&c, "team-a", "app").await.then_some(())
    })
    .await;
    assert_eq!(c.pull_secrets("team-a", "app").await, ["user-own", SECRET]);
    let writes = c.fake.writes();
    assert_eq!(
        writes.get("patch serviceaccounts"),
        Some(&1),
        "one patch landed after the refused one: {writes:?}"
    );
    replica.stop().await;
}

/// Revocation whose reference removal fails (a 500 from the API server) keeps
/// the secret until a later pass has removed the reference: the entry never
/// points at a deleted secret, which could not be told from a user's own.
#[tokio::test]
async fn a_failed_reference_removal_keeps_the_secret_until_the_reference_is_gone() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &["user-own"])]).await;
    grant_team_a_app(&c).await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    eventually("the reference", WAIT, || async {
        has_ref(&c, "team-a", "app").await.then_some(())
    })
    .await;
    c.fake.fail_next("patch", "serviceaccounts", 500);
    Api::<PullGrant>::all(c.client.clone())
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the secret removed", WAIT, || async {
        c.secret("team-a", SECRET).await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        c.pull_secrets("team-a", "app").await,
        ["user-own"],
        "the reference went first"
    );
    let writes = c.fake.writes();
    assert_eq!(
        writes.get("patch serviceaccounts"),
        Some(&2),
        "the reference added, then removed on the retry after the refused patch: {writes:?}"
    );
    replica.stop().await;
}

/// A status write that keeps failing (a grant deleted a moment ago answers
/// 404 while the cache still lists it) does not hold back the other grants'
/// statuses: each write stands alone.
#[tokio::test]
async fn a_status_write_that_keeps_failing_does_not_hold_back_the_others() {
    let c = Cluster::start(REGISTRY, None).await;
    let names = ["one", "two", "three", "four"];
    for name in names {
        c.grant(
            name,
            json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
                   "repositories": ["apps/**"], "purposes": ["pull"]}),
        )
        .await;
    }
    // The first grant whose status is written fails, then and ever after.
    c.fake.fail_object_of_next("patch", "pullgrants", 404);
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    let grants = Api::<PullGrant>::all(c.client.clone());
    let written = eventually("three of the four statuses", WAIT, || async {
        let mut with = Vec::new();
        for name in names {
            let g = grants.get(name).await.unwrap();
            if g.status.is_some_and(|s| !s.conditions.is_empty()) {
                with.push(name);
            }
        }
        (with.len() == 3).then_some(with)
    })
    .await;
    // Written after the grants' in the same pass: its write may still be on its way.
    let credentials = Api::<RegistryCredential>::all(c.client.clone());
    eventually(
        &format!("the credential's status too ({written:?} had theirs)"),
        WAIT,
        || async {
            let cred = credentials.get("corp").await.unwrap();
            cred.status
                .is_some_and(|s| !s.conditions.is_empty())
                .then_some(())
        },
    )
    .await;
    replica.stop().await;
}

/// A namespace whose reconcile keeps failing is counted as backing off until
/// it is deleted; then its count (and what was kept for it) is forgotten,
/// not kept for the life of the process.
#[tokio::test]
async fn a_deleted_namespace_is_forgotten_by_the_failure_backoff() {
    use k8s_openapi::api::core::v1::Namespace;
    use std::sync::atomic::Ordering;
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-a", &[("app", &[])]).await;
    grant_team_a_app(&c).await;
    // The managed secret's write fails, then and ever after.
    c.fake.fail_object_of_next("patch", "secrets", 500);
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    eventually("team-a backing off", WAIT, || async {
        (replica.metrics.backing_off.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert!(replica
        .metrics
        .render()
        .contains("pullbroker_controller_namespaces_backing_off 1"));
    Api::<Namespace>::all(c.client.clone())
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    eventually("team-a forgotten", WAIT, || async {
        (replica.metrics.backing_off.load(Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    replica.stop().await;
}
