//! The fake API server, driven by the real `kube` client over HTTP.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use pullbroker_core::policy::model::{PullGrant, PullGrantStatus};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::json;

async fn client(api: &FakeApi) -> Client {
    api.client().await
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// Namespaces to create in: a real API server refuses creates in one that
/// does not exist.
async fn namespaces(fake: &FakeApi, names: &[&str]) {
    let api: Api<Namespace> = Api::all(fake.client().await);
    for name in names {
        api.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap();
    }
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API Status, got {other}"),
    }
}

#[tokio::test]
async fn crud_conflicts_selectors_and_patches() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = client(&fake).await;
    let namespaces: Api<Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-a", "labels": {"tenant": "a"}}})),
        )
        .await
        .unwrap();
    namespaces
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-b", "labels": {"tenant": "b"}}})),
        )
        .await
        .unwrap();
    let err = namespaces
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-a"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "AlreadyExists".into()));
    let selected = namespaces
        .list(&ListParams::default().labels("tenant in (a,c)"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    assert!(selected
        .metadata
        .resource_version
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(
        namespaces
            .list(&ListParams::default().labels("tenant!=a"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        namespaces
            .list(&ListParams::default().fields("metadata.name=team-b"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "team-a");
    let sa = sas
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "app"}, "imagePullSecrets": [{"name": "user-own"}]})),
        )
        .await
        .unwrap();
    let rv = sa.metadata.resource_version.clone().unwrap();
    // Optimistic concurrency: a JSON patch guarded by resourceVersion (as the
    // controller edits the atomic imagePullSecrets list).
    let add = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "pullbroker-corp"}}]);
    let patched = sas
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(add.clone()).unwrap()),
        )
        .await
        .unwrap();
    let names: Vec<String> = patched
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["user-own", "pullbroker-corp"]);
    let stale = sas
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(add).unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(stale).0, 422, "a failed test op is refused");
    // Replace with a stale resourceVersion: 409 Conflict.
    let mut old = sa.clone();
    old.automount_service_account_token = Some(false);
    assert_eq!(
        api_error(
            sas.replace("app", &PostParams::default(), &old)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    // Merge patch.
    let merged = sas
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.metadata.labels.unwrap()["x"], "y");

    let secrets: Api<Secret> = Api::namespaced(c.clone(), "team-a");
    let err = secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "bad"}, "type": "kubernetes.io/dockerconfigjson"})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".into()));
    assert_eq!(
        api_error(secrets.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    sas.delete("app", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(sas.get("app").await.unwrap_err()).0, 404);
    assert_eq!(
        fake.writes()["create namespaces"],
        3,
        "the refused create counts as a write attempt too"
    );
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let grants: Api<PullGrant> = Api::all(client(&fake).await);
    let spec = json!({"credential": "corp", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["*"]}, "repositories": ["apps/**"], "purposes": ["sync"]});
    let g = grants
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-a"}, "spec": spec})),
        )
        .await
        .unwrap();
    assert_eq!(g.metadata.generation, Some(1));
    let status = PullGrantStatus {
        observed_generation: Some(1),
        selected_namespaces: Some(3),
        ..Default::default()
    };
    let g2 = grants
        .patch_status(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status, "spec": {"credential": "ignored"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        g2.spec.credential, "corp",
        "the status subresource never changes spec"
    );
    assert_eq!(g2.status.unwrap().selected_namespaces, Some(3));
    assert_eq!(
        g2.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    let g3 = grants
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"repositories": ["apps/team-a/**"]}, "status": null})),
        )
        .await
        .unwrap();
    assert_eq!(
        g3.metadata.generation,
        Some(2),
        "spec changes bump the generation"
    );
    assert_eq!(
        g3.status.unwrap().selected_namespaces,
        Some(3),
        "the main resource never changes status"
    );
}

#[tokio::test]
async fn watch_streams_changes_and_expires_old_versions() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    namespaces(&fake, &["team-a", "p"]).await;
    let c = client(&fake).await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "team-a");
    let mut events = watcher(
        secrets.clone(),
        watcher::Config::default().labels("app=pullbroker"),
    )
    .boxed();
    // The initial list completes before we write, so the write is a watch event.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitDone) => break,
            _ => continue,
        }
    }
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "unrelated"}})),
        )
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "ours", "labels": {"app": "pullbroker"}}})),
        )
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        watcher::Event::Apply(s) => assert_eq!(
            s.metadata.name.as_deref(),
            Some("ours"),
            "label selectors filter the watch"
        ),
        other => panic!("unexpected {other:?}"),
    }
    secrets
        .delete("ours", &DeleteParams::default())
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, watcher::Event::Delete(_)), "{ev:?}");

    // Relabelling moves an object out of the selection (DELETED for this
    // watch) and back in (ADDED), as the real watch cache reports it.
    let relabel = |v: Option<&str>| {
        let secrets = secrets.clone();
        let patch = json!({"metadata": {"labels": {"app": v}}});
        async move {
            secrets
                .patch("unrelated", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap()
        }
    };
    let next = |ev: Option<Result<_, _>>| ev.unwrap().unwrap();
    let within = Duration::from_secs(10);
    relabel(Some("pullbroker")).await;
    let ev = next(tokio::time::timeout(within, events.next()).await.unwrap());
    assert!(
        matches!(ev, watcher::Event::Apply(s) if s.metadata.name.as_deref() == Some("unrelated"))
    );
    relabel(None).await;
    let ev = next(tokio::time::timeout(within, events.next()).await.unwrap());
    assert!(
        matches!(ev, watcher::Event::Delete(s) if s.metadata.name.as_deref() == Some("unrelated"))
    );

    // After compaction a watch from an old resourceVersion gets 410 Expired.
    let old_rv = "101";
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "later"}})),
        )
        .await
        .unwrap();
    fake.compact();
    let mut stream = secrets
        .watch(&kube::api::WatchParams::default(), old_rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        kube::api::WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizers_hold_and_owners_collect() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    namespaces(&fake, &["team-a", "p"]).await;
    let secrets: Api<Secret> = Api::namespaced(client(&fake).await, "team-a");
    let owner = secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "owner", "finalizers": ["pullbroker.dev/cleanup"]}})),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.unwrap();
    secrets
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "dependent", "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": "owner", "uid": uid}]}})))
        .await
        .unwrap();
    secrets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let held = secrets.get("owner").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "held by its finalizer"
    );
    assert!(secrets.get("dependent").await.is_ok());
    secrets
        .patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(api_error(secrets.get("owner").await.unwrap_err()).0, 404);
    assert_eq!(
        api_error(secrets.get("dependent").await.unwrap_err()).0,
        404,
        "garbage collected"
    );
}

#[tokio::test]
async fn token_request_and_token_review_answer_like_kube_apiserver() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    namespaces(&fake, &["team-a", "p"]).await;
    let c = client(&fake).await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "team-a");
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "app"}})),
    )
    .await
    .unwrap();
    let request = |seconds: i64| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["pullbroker".into()],
            expiration_seconds: Some(seconds),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = sas
        .create_token_request("app", &PostParams::default(), &request(300))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422, "less than 10 minutes is refused");
    let issued = sas
        .create_token_request("app", &PostParams::default(), &request(600))
        .await
        .unwrap();
    let token = issued.status.unwrap().token;
    let reviews: Api<TokenReview> = Api::all(c);
    let review = |token: String, audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: Some(vec![audience.to_string()]),
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review(token.clone(), "pullbroker"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(
        ok.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:team-a:app")
    );
    let bad = reviews
        .create(&PostParams::default(), &review(token, "other"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(bad.authenticated, None);
    assert!(bad
        .error
        .unwrap()
        .contains("is invalid for the target audiences"));
}

/// Server-side apply as `kubernetes-facts.md` records kube-apiserver v1.36 doing it.
#[tokio::test]
async fn server_side_apply_owns_fields_and_conflicts() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    namespaces(&fake, &["team-a", "p"]).await;
    let c = client(&fake).await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "team-a");
    let ours = |label: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pullbroker-corp", "labels": {"x": label, "app.kubernetes.io/managed-by": "pullbroker"}}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}});
    let applied = secrets
        .patch(
            "pullbroker-corp",
            &PatchParams::apply("pullbroker"),
            &Patch::Apply(ours("a")),
        )
        .await
        .unwrap();
    let fields = applied.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        (fields[0].manager.as_deref(), fields[0].operation.as_deref()),
        (Some("pullbroker"), Some("Apply"))
    );
    let rv = applied.metadata.resource_version.clone();
    // The same apply again changes nothing.
    let again = secrets
        .patch(
            "pullbroker-corp",
            &PatchParams::apply("pullbroker"),
            &Patch::Apply(ours("a")),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "no write when nothing changed"
    );
    // Another manager setting a field we own to another value: 409 with causes.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pullbroker-corp", "labels": {"x": "b"}}});
    let err = secrets
        .patch(
            "pullbroker-corp",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(theirs.clone()),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                s.message,
                "Apply failed with 1 conflict: conflict with \"pullbroker\": .metadata.labels.x"
            );
        }
        other => panic!("{other}"),
    }
    // Forced, the field changes hands.
    let forced = secrets
        .patch(
            "pullbroker-corp",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(theirs),
        )
        .await
        .unwrap();
    assert_eq!(forced.metadata.labels.unwrap()["x"], "b");
    // A field we stop applying (and nobody else owns) is removed.
    let fewer = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pullbroker-corp"}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}});
    let s2 = secrets
        .patch(
            "pullbroker-corp",
            &PatchParams::apply("pullbroker"),
            &Patch::Apply(fewer),
        )
        .await
        .unwrap();
    let labels = s2.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("app.kubernetes.io/managed-by"),
        "{labels:?}"
    );
    assert_eq!(labels["x"], "b", "kubectl's field stays");
    // Apply needs a field manager.
    let resp = reqwest_like_apply(&fake.url).await;
    assert_eq!(resp, 400);
}

/// `ServiceAccount.imagePullSecrets` is atomic: after a user's JSON patch adds
/// an entry, the list belongs to the user, and re-applying without it does not
/// remove our entry (observed on kube-apiserver v1.36).
#[tokio::test]
async fn image_pull_secrets_are_an_atomic_list() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    namespaces(&fake, &["team-a", "p"]).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client(&fake).await, "team-a");
    let with_ours = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}, "imagePullSecrets": [{"name": "pullbroker-corp"}]});
    sas.patch(
        "app",
        &PatchParams::apply("pullbroker"),
        &Patch::Apply(with_ours),
    )
    .await
    .unwrap();
    let add = json!([{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "user-own"}}]);
    let patched = sas
        .patch(
            "app",
            &PatchParams {
                field_manager: Some("kubectl-patch".into()),
                ..Default::default()
            },
            &Patch::Json::<()>(serde_json::from_value(add).unwrap()),
        )
        .await
        .unwrap();
    let owners: Vec<(String, String)> = patched
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|f| (f.manager.unwrap(), f.operation.unwrap()))
        .collect();
    assert!(
        owners.contains(&("kubectl-patch".into(), "Update".into())),
        "{owners:?}"
    );
    let without =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}});
    let after = sas
        .patch(
            "app",
            &PatchParams::apply("pullbroker"),
            &Patch::Apply(without),
        )
        .await
        .unwrap();
    let names: Vec<String> = after
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["pullbroker-corp", "user-own"],
        "the applier no longer owns the list"
    );
}

async fn reqwest_like_apply(url: &str) -> u16 {
    // kube always sends a field manager for Apply, so use a raw request.
    let body = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#;
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let req = format!(
        "PATCH /api/v1/namespaces/team-a/secrets/pullbroker-corp HTTP/1.1\r\nHost: x\r\nContent-Type: application/apply-patch+yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn lists_page_with_limit_and_continue_and_serve_metadata_only() {
    use kube::core::PartialObjectMeta;
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = client(&fake).await;
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "p"}})),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "p");
    for i in 0..5 {
        secrets
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": format!("s{i}")}, "stringData": {"k": "SECRET-VALUE"}})),
            )
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = secrets.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|s| s.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    let err = secrets
        .list(&ListParams::default().continue_token("garbage"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 400);

    // stringData was folded into data, base64, as the API server does.
    let s0 = secrets.get("s0").await.unwrap();
    assert_eq!(s0.data.unwrap()["k"].0, b"SECRET-VALUE");

    // Metadata-only reads carry no data, in lists and watches alike.
    let meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(c.clone(), "p");
    let list = meta.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 5);
    let events: Vec<_> = watcher(meta, watcher::Config::default())
        .take(7)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 7, "Init, five objects, InitDone");
    let full = raw_get(
        &fake.url,
        "/api/v1/namespaces/p/secrets",
        "application/json",
    )
    .await;
    assert!(
        full.contains("U0VDUkVULVZBTFVF"),
        "a full list carries data"
    );
    let partial = raw_get(
        &fake.url,
        "/api/v1/namespaces/p/secrets",
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    )
    .await;
    assert!(
        partial.contains("\"kind\":\"PartialObjectMetadataList\""),
        "{partial}"
    );
    assert!(
        !partial.contains("U0VDUkVULVZBTFVF"),
        "metadata only: no data"
    );
}

/// A plain HTTP GET with the given Accept header.
async fn raw_get(base: &str, path: &str, accept: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn down_cuts_every_connection_and_up_restores_the_same_state() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = client(&fake).await;
    let ns: Api<Namespace> = Api::all(c.clone());
    ns.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "kept"}})),
    )
    .await
    .unwrap();
    let mut events = watcher(ns.clone(), watcher::Config::default()).boxed();
    loop {
        if let Some(watcher::Event::InitDone) =
            tokio::time::timeout(Duration::from_secs(10), events.try_next())
                .await
                .unwrap()
                .unwrap()
        {
            break;
        }
    }
    fake.set_down(true);
    // The open watch is cut: the watcher reports the failure.
    let cut = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(cut.is_err(), "{cut:?}");
    let e = ns.get("kept").await.unwrap_err();
    assert!(!matches!(e, kube::Error::Api(_)), "a transport error: {e}");
    fake.set_down(false);
    assert_eq!(
        ns.get("kept").await.unwrap().metadata.name.as_deref(),
        Some("kept")
    );
}
