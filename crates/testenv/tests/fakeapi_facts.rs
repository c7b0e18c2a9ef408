//! The fake API server against what a real kube-apiserver v1.36.2 answered
//! (`../shared/kubernetes-facts.md`): namespace lifecycle, strategic merge
//! patch, server-side apply of map lists and watch bookmarks. The recorded answers are quoted here as the
//! facts file gives them and compared whole.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// One plain HTTP request: (status, body as JSON).
async fn raw(base: &str, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A Deployment's containers: (name, image), in order.
fn images(d: Deployment) -> Vec<(String, Option<String>)> {
    d.spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| (c.name, c.image))
        .collect()
}

async fn namespace(c: &Client, name: &str) {
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn namespace_lifecycle_answers_as_kube_apiserver() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = fake.client().await;
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string()
    };

    // Create in a namespace that does not exist: 404, as recorded.
    let (code, body) = raw(
        &fake.url,
        "POST",
        "/api/v1/namespaces/facts-missing/configmaps",
        "application/json",
        &cm("x"),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        serde_json::from_str::<Value>(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \"facts-missing\" not found","reason":"NotFound","details":{"name":"facts-missing","kind":"namespaces"},"code":404}"#).unwrap()
    );

    // A new namespace is Active, with the kubernetes finalizer.
    namespace(&c, "facts3").await;
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let ns = namespaces.get("facts3").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );

    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), "facts3");
    maps.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "x"}})),
    )
    .await
    .unwrap();
    maps.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();

    // DELETE returns at once; the namespace is Terminating, contents stay
    // until the namespace controller runs (held off here).
    fake.set_namespace_controller(false);
    namespaces
        .delete("facts3", &DeleteParams::default())
        .await
        .unwrap();
    let ns = namespaces.get("facts3").await.unwrap();
    assert!(ns.metadata.deletion_timestamp.is_some());
    assert_eq!(
        ns.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );

    // Creating there, by POST or server-side apply: 403, as recorded.
    let recorded = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"y\" is forbidden: unable to create new content in namespace facts3 because it is being terminated","reason":"Forbidden","details":{"name":"y","kind":"configmaps","causes":[{"reason":"NamespaceTerminating","message":"namespace facts3 is being terminated","field":"metadata.namespace"}]},"code":403}"#;
    let (code, body) = raw(
        &fake.url,
        "POST",
        "/api/v1/namespaces/facts3/configmaps",
        "application/json",
        &cm("y"),
    )
    .await;
    assert_eq!((code, body), (403, serde_json::from_str(recorded).unwrap()));
    let (code, body) = raw(
        &fake.url,
        "PATCH",
        "/api/v1/namespaces/facts3/configmaps/y?fieldManager=t",
        "application/apply-patch+yaml",
        &cm("y"),
    )
    .await;
    assert_eq!((code, body), (403, serde_json::from_str(recorded).unwrap()));

    // Updates and patches of what exists still succeed.
    maps.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();

    // The namespace controller: what it can delete goes, a finalizer holds
    // its object (with a deletionTimestamp) and the namespace says so.
    fake.run_namespace_controller();
    assert!(maps.get_opt("x").await.unwrap().is_none());
    let held = maps.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let ns = namespaces.get("facts3").await.unwrap();
    let conditions = ns.status.unwrap().conditions.unwrap();
    let remaining = conditions
        .iter()
        .find(|c| c.type_ == "NamespaceContentRemaining")
        .unwrap();
    assert_eq!(
        (
            remaining.status.as_str(),
            remaining.reason.as_deref(),
            remaining.message.as_deref()
        ),
        (
            "True",
            Some("SomeResourcesRemain"),
            Some("Some resources are remaining: configmaps. has 1 resource instances")
        )
    );
    let finalizers = conditions
        .iter()
        .find(|c| c.type_ == "NamespaceFinalizersRemaining")
        .unwrap();
    assert_eq!(
        (finalizers.status.as_str(), finalizers.reason.as_deref()),
        ("True", Some("SomeFinalizersRemain"))
    );
    for t in [
        "NamespaceDeletionDiscoveryFailure",
        "NamespaceDeletionGroupVersionParsingFailure",
        "NamespaceDeletionContentFailure",
    ] {
        assert_eq!(
            conditions.iter().find(|c| c.type_ == t).unwrap().status,
            "False",
            "{t}"
        );
    }

    // The finalizer removed: the object goes, then the namespace (GET 404).
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(maps.get_opt("held").await.unwrap().is_none());
    fake.run_namespace_controller();
    assert!(namespaces.get_opt("facts3").await.unwrap().is_none());

    // Running by itself (the default), the controller empties and removes a
    // deleted namespace without being asked.
    fake.set_namespace_controller(true);
    namespace(&c, "facts4").await;
    let maps4: Api<ConfigMap> = Api::namespaced(c.clone(), "facts4");
    maps4
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "x"}})),
        )
        .await
        .unwrap();
    let gone = watcher::watch_object(namespaces.clone(), "facts4")
        .try_filter(|o| futures::future::ready(o.is_none()))
        .boxed();
    namespaces
        .delete("facts4", &DeleteParams::default())
        .await
        .unwrap();
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), gone.into_future())
        .await
        .expect("the namespace is removed");
    assert!(matches!(first, Some(Ok(None))), "{first:?}");
    assert!(maps4.get_opt("x").await.unwrap().is_none());
}

#[tokio::test]
async fn strategic_merge_patch_merges_by_key_where_kubernetes_does() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = fake.client().await;
    namespace(&c, "team-a").await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "team-a");
    deployments
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "app", "image": "app:1"}, {"name": "side", "image": "side:0"}]}}}})),
        )
        .await
        .unwrap();
    // Strategic: containers merge by name — only `side` changes.
    let side = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "side:1"}]}}}});
    let d = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(side.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        images(d),
        [
            ("app".into(), Some("app:1".into())),
            ("side".into(), Some("side:1".into()))
        ]
    );
    // JSON merge patch: the list is replaced.
    let d = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(side))
        .await
        .unwrap();
    assert_eq!(images(d), [("side".into(), Some("side:1".into()))]);

    // ServiceAccount.imagePullSecrets is atomic under a strategic merge
    // patch too: the user's entry is gone.
    let accounts: Api<ServiceAccount> = Api::namespaced(c.clone(), "team-a");
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "app"}, "imagePullSecrets": [{"name": "user-own"}]})),
        )
        .await
        .unwrap();
    let sa = accounts
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Strategic(json!({"imagePullSecrets": [{"name": "pullbroker-g"}]})),
        )
        .await
        .unwrap();
    let names: Vec<String> = sa
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["pullbroker-g"]);

    // Custom resources take no strategic merge patch (415).
    let (code, body) = raw(
        &fake.url,
        "PATCH",
        "/apis/pullbroker.dev/v1alpha1/pullgrants/g",
        "application/strategic-merge-patch+json",
        "{}",
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (404, Some("NotFound")),
        "no such grant yet"
    );
    Api::<pullbroker_core::policy::model::PullGrant>::all(c.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant", "metadata": {"name": "g"},
                "spec": {"credential": "c", "subjects": {"namespaces": ["a"], "serviceAccounts": ["*"]},
                "repositories": ["**"], "purposes": ["pull"]}})),
        )
        .await
        .unwrap();
    let (code, body) = raw(
        &fake.url,
        "PATCH",
        "/apis/pullbroker.dev/v1alpha1/pullgrants/g",
        "application/strategic-merge-patch+json",
        "{}",
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
}

#[tokio::test]
async fn watches_get_bookmarks_as_asked() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = fake.client().await;
    namespace(&c, "team-a").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(c.clone(), "team-a");
    for name in ["a", "b"] {
        accounts
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": name}})),
            )
            .await
            .unwrap();
    }
    let rv = accounts
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // A streaming list: the objects as ADDED, then one bookmark marking the
    // end of the initial state — carrying only kind, apiVersion and that
    // metadata, as recorded.
    let (_, body) = {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let addr = fake.url.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("GET /api/v1/namespaces/team-a/serviceaccounts?watch=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut lines = tokio::io::BufReader::new(s).lines();
        let mut events = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v.get("type").is_some() {
                    events.push(v);
                }
            }
        }
        (0, events)
    };
    let types: Vec<&str> = body.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"], "{body:?}");
    assert_eq!(
        body[2],
        json!({"type": "BOOKMARK", "object": {"kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}}}})
    );

    // kube's own watcher takes that as its initial list.
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher(accounts.clone(), config).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitApply(sa)) => seen.push(sa.metadata.name.unwrap()),
            Some(watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["a", "b"]);

    // A plain watch from the list's version gets periodic bookmarks (a
    // minute apart on a real server; shortened here) with the version the
    // watch has reached.
    fake.set_bookmark_interval(Duration::from_millis(200));
    let mut events = accounts
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "c"}})),
        )
        .await
        .unwrap();
    let mut added = None;
    let bookmark = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(sa)) => added = sa.metadata.resource_version,
            Some(WatchEvent::Bookmark(b)) if added.is_some() => break b,
            _ => {}
        }
    };
    assert_eq!(
        Some(bookmark.metadata.resource_version),
        added,
        "the bookmark follows the last event"
    );
}

/// Server-side apply of a Deployment as two managers: a pod template's
/// `containers` is a `listType=map` keyed by `name` ("a manager applying
/// only `side` leaves the other containers in place"), while
/// `ServiceAccount.imagePullSecrets` stays atomic (the applier owns the
/// whole list).
#[tokio::test]
async fn server_side_apply_merges_containers_by_name_and_keeps_other_lists_atomic() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = fake.client().await;
    namespace(&c, "team-a").await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "team-a");
    let deployment = |containers: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}})
    };
    let apply = |manager: &'static str, force: bool| {
        let mut p = PatchParams::apply(manager);
        p.force = force;
        p
    };
    let both = json!([{"name": "app", "image": "app:1"}, {"name": "side", "image": "side:0"}]);
    deployments
        .patch(
            "web",
            &apply("deployer", false),
            &Patch::Apply(deployment(both)),
        )
        .await
        .unwrap();

    // Another manager changing `side`'s image conflicts on that one field…
    let side = deployment(json!([{"name": "side", "image": "side:1"}]));
    let err = deployments
        .patch("web", &apply("sidecar", false), &Patch::Apply(side.clone()))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with \"deployer\": .spec.template.spec.containers[name=\"side\"].image"
        )
    );
    // …and, forced, changes only `side`: `app` stays.
    let d = deployments
        .patch("web", &apply("sidecar", true), &Patch::Apply(side))
        .await
        .unwrap();
    assert_eq!(
        images(d),
        [
            ("app".into(), Some("app:1".into())),
            ("side".into(), Some("side:1".into()))
        ]
    );
    // The deployer no longer applying `side` leaves it to the sidecar…
    let d = deployments
        .patch(
            "web",
            &apply("deployer", false),
            &Patch::Apply(deployment(json!([{"name": "app", "image": "app:2"}]))),
        )
        .await
        .unwrap();
    assert_eq!(
        images(d),
        [
            ("app".into(), Some("app:2".into())),
            ("side".into(), Some("side:1".into()))
        ]
    );
    // …and once nobody applies it, the element goes whole.
    let d = deployments
        .patch(
            "web",
            &apply("sidecar", false),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"sidecar": "off"}}})),
        )
        .await
        .unwrap();
    assert_eq!(images(d), [("app".into(), Some("app:2".into()))]);

    // ServiceAccount.imagePullSecrets: atomic, the applier owns the list.
    let accounts: Api<ServiceAccount> = Api::namespaced(c.clone(), "team-a");
    let sa = |names: &[&str]| {
        let list: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}, "imagePullSecrets": list})
    };
    accounts
        .patch(
            "app",
            &apply("user", false),
            &Patch::Apply(sa(&["user-own"])),
        )
        .await
        .unwrap();
    let got = accounts
        .patch(
            "app",
            &apply("pullbroker", true),
            &Patch::Apply(sa(&["pullbroker-g"])),
        )
        .await
        .unwrap();
    let names: Vec<String> = got
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["pullbroker-g"], "replaced whole, not merged");
    let fields = serde_json::to_value(&got.metadata.managed_fields).unwrap();
    assert_eq!(
        fields[0]["fieldsV1"],
        json!({"f:imagePullSecrets": {}}),
        "the whole list is one field"
    );
}
