//! The built-in certificate bootstrap: the leader writes a serving
//! certificate the broker serves and a webhook `caBundle` that verifies it
//! for the Service's name (as the API server checks it), renews the
//! certificate, and rolls the CA over without a handshake failing.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use pullbroker_broker::tls::ReloadingCert;
use pullbroker_broker::{config, Broker};
use pullbroker_controller::serving_cert::ServingCertSettings;
use pullbroker_credentials::pki;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::*;

const HOST: &str = "pullbroker.pullbroker-system.svc";

fn field(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// `GET /healthz` over TLS to `addr`, trusting only `bundle` and checking
/// the certificate for [`HOST`]; the status line, or the handshake error.
fn healthz(addr: std::net::SocketAddr, bundle: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(HOST).unwrap())
            .unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

async fn check(addr: std::net::SocketAddr, bundle: &str) -> Result<String, String> {
    let bundle = bundle.to_string();
    tokio::task::spawn_blocking(move || healthz(addr, &bundle))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_writes_a_certificate_the_webhook_trusts_renews_it_and_rolls_the_ca_over() {
    let c = Cluster::start(REGISTRY, None).await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.client.clone());
    hooks
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "pullbroker-pin"},
                "webhooks": [{
                    "name": "pin.pullbroker.dev",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "clientConfig": {"service": {"namespace": SYSTEM, "name": "pullbroker", "path": "/v1/admission/pin"}},
                }],
            })),
        )
        .await
        .unwrap();
    let certs = ServingCertSettings {
        webhook: Some("pullbroker-pin".into()),
        // Short lives, so renewal (at 13 s) and the CA rollover (at 20 s)
        // happen here; the renewed certificate (valid until the old CA ends,
        // at 30 s) is still being served when the CA rolls over.
        validity: Duration::from_secs(20),
        ca_validity: Duration::from_secs(30),
        ..ServingCertSettings::for_service(SYSTEM, "pullbroker")
    };
    let _replica = Replica::start(
        c.controller.clone(),
        Settings {
            serving_cert: Some(certs),
            ..settings("a")
        },
    );
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), SYSTEM);
    let ca_bundle = || async {
        let hook = hooks.get("pullbroker-pin").await.ok()?;
        let b = hook.webhooks?[0].client_config.ca_bundle.clone()?;
        Some(String::from_utf8(b.0).unwrap())
    };
    let first = eventually(
        "the serving certificate",
        Duration::from_secs(20),
        || async { secrets.get_opt("pullbroker-broker-tls").await.unwrap() },
    )
    .await;
    assert_eq!(first.type_.as_deref(), Some("kubernetes.io/tls"));
    let bundle = eventually("the webhook's caBundle", Duration::from_secs(20), ca_bundle).await;
    assert_eq!(
        field(&first, "ca.crt"),
        bundle,
        "the Secret's ca.crt is the webhook's bundle"
    );
    let info = pki::inspect(&field(&first, "tls.crt")).unwrap();
    assert_eq!(
        info.hosts,
        [HOST, "pullbroker.pullbroker-system.svc.cluster.local"]
    );

    // The broker serves what the Secret holds (as its volume would show it).
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    let mount = |s: &Secret| {
        std::fs::write(dir.path().join("tls.crt"), field(s, "tls.crt")).unwrap();
        std::fs::write(dir.path().join("tls.key"), field(s, "tls.key")).unwrap();
    };
    mount(&first);
    let file = dir.path().join("broker.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  tls: {{certFile: tls.crt, keyFile: tls.key}}\n  serviceAccountIssuer: {{issuer: \"{KUBE_ISSUER}\", jwksFile: jwks.json}}\n"
        ),
    )
    .unwrap();
    let snapshot = config::load(&file).unwrap();
    let cert = ReloadingCert::load(snapshot.listeners.tls.as_ref().unwrap()).unwrap();
    let broker = Broker::new(snapshot, None, Default::default(), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = cert.clone();
    let _server = AbortOnDrop::from(tokio::spawn(async move {
        broker
            .serve_tls(listener, served, std::future::pending())
            .await
            .unwrap()
    }));
    assert_eq!(check(addr, &bundle).await.unwrap(), "HTTP/1.1 200 OK");
    let stranger = pki::new_ca("someone else", Duration::from_secs(60)).unwrap();
    let refused = check(addr, &stranger.cert_pem).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // Renewal: a new certificate from the same CA, before the old one expires.
    let renewed = eventually("a renewed certificate", Duration::from_secs(20), || async {
        let s = secrets.get("pullbroker-broker-tls").await.unwrap();
        (field(&s, "tls.crt") != field(&first, "tls.crt")).then_some(s)
    })
    .await;
    let renewed_info = pki::inspect(&field(&renewed, "tls.crt")).unwrap();
    assert!(renewed_info.not_after > info.not_after);
    assert!(
        pki::now() < info.not_after,
        "renewed before the old one expired"
    );
    mount(&renewed);
    assert!(cert.reload().unwrap());
    assert_eq!(
        check(addr, &ca_bundle().await.unwrap()).await.unwrap(),
        "HTTP/1.1 200 OK"
    );

    // The CA rollover: the bundle trusts both CAs, and so the certificate
    // still being served and the new CA's certificate both verify.
    let two = eventually("a CA rollover", Duration::from_secs(30), || async {
        let b = ca_bundle().await?;
        (pki::all(&b).unwrap().len() == 2).then_some(b)
    })
    .await;
    assert!(
        two.ends_with(&bundle),
        "the previous CA stays in the bundle: {two}"
    );
    assert_eq!(
        check(addr, &two).await.unwrap(),
        "HTTP/1.1 200 OK",
        "old CA's certificate"
    );
    let by_new_ca = eventually(
        "a certificate of the new CA",
        Duration::from_secs(20),
        || async {
            let s = secrets.get("pullbroker-broker-tls").await.unwrap();
            let leaf = pki::inspect(&field(&s, "tls.crt")).unwrap();
            let new_ca = pki::inspect(&two).unwrap();
            (leaf.issuer == new_ca.subject).then_some(s)
        },
    )
    .await;
    assert_eq!(field(&by_new_ca, "ca.crt"), two);
    mount(&by_new_ca);
    assert!(cert.reload().unwrap());
    assert_eq!(
        check(addr, &two).await.unwrap(),
        "HTTP/1.1 200 OK",
        "new CA's certificate"
    );
    let old_ca_only = check(addr, &bundle).await.unwrap_err();
    assert!(
        old_ca_only.contains("UnknownIssuer"),
        "really a new CA: {old_ca_only}"
    );
}
