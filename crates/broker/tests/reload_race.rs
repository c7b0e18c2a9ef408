//! A reload of the file and an install of the cluster's policy at the same
//! time: neither undoes the other. The reload is held inside its await (the
//! new issuer's first JWKS fetch, answered only when the test says) while
//! the cluster source installs a policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use pullbroker_broker::{config, Broker};
use pullbroker_core::policy::{Named, Policy};
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::issuer::TestIssuer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

const BROKER: &str = "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {name: b}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer: {issuer: https://kubernetes.default.svc, ISSUER_KEYS}\n";

/// A policy with one grant named `grant`.
fn policy(grant: &str) -> Policy {
    let credential = serde_saphyr::from_str(
        "registries: [registry.corp.example]\nsource: {secretRef: {name: corp-pull}}",
    )
    .unwrap();
    let spec = serde_saphyr::from_str(
        "credential: corp\nsubjects: {namespaces: [team-a], serviceAccounts: [web]}\nrepositories: ['apps/**']\npurposes: [pull]",
    )
    .unwrap();
    let (p, problems) = Policy::new(
        vec![Named {
            name: "corp".into(),
            spec: credential,
        }],
        vec![Named {
            name: grant.into(),
            spec,
        }],
        BTreeMap::new(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    p
}

fn grants(b: &Broker) -> Vec<String> {
    b.snapshot()
        .policy
        .grants()
        .iter()
        .map(|g| g.name.clone())
        .collect()
}

/// One HTTP request answered with `jwks` once `release` fires;
/// `asked` is notified when the request has arrived.
async fn held_jwks(
    jwks: String,
    listener: tokio::net::TcpListener,
    asked: Arc<Notify>,
    release: oneshot::Receiver<()>,
) {
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf[read..]).await.unwrap();
        assert!(n > 0, "the request ended early");
        read += n;
    }
    asked.notify_one();
    release.await.unwrap();
    let body = jwks;
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_installed_while_a_reload_awaits_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.yaml");
    let jwks = TestIssuer::ec("https://kubernetes.default.svc").jwks();
    std::fs::write(dir.path().join("jwks.json"), &jwks).unwrap();
    std::fs::write(&path, BROKER.replace("ISSUER_KEYS", "jwksFile: jwks.json")).unwrap();
    let broker = Broker::new(
        config::load(&path).unwrap(),
        Some(path.clone()),
        ClientSettings::default(),
        None,
    )
    .await
    .unwrap();
    broker.install_policy(policy("before"), BTreeMap::new(), BTreeMap::new());
    assert_eq!(grants(&broker), ["before"]);

    // A new issuer URL: the reload builds a verifier and awaits its first fetch.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    std::fs::write(
        &path,
        BROKER.replace("ISSUER_KEYS", &format!("jwksUrl: '{url}'")),
    )
    .unwrap();
    let asked = Arc::new(Notify::new());
    let (release, released) = oneshot::channel();
    let server = tokio::spawn(held_jwks(jwks, listener, asked.clone(), released));
    let reloading = {
        let b = broker.clone();
        tokio::spawn(async move { b.reload().await })
    };
    asked.notified().await;
    broker.install_policy(policy("during"), BTreeMap::new(), BTreeMap::new());
    release.send(()).unwrap();
    reloading.await.unwrap().unwrap();
    server.await.unwrap();
    assert_eq!(
        grants(&broker),
        ["during"],
        "the reload kept the policy installed while it awaited"
    );
}
