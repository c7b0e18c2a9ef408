//! Registry traffic through a real forward proxy (Debian `squid`) on
//! loopback, by Go's `HTTPS_PROXY`/`NO_PROXY` rules: a TLS registry known
//! by a name only the proxy resolves is reached through it (its access log
//! shows the CONNECT), a name in `NO_PROXY` goes direct, and loopback is
//! never proxied.

use std::sync::Arc;
use std::time::Duration;

use pullbroker_core::proxy::ProxyEnv;
use pullbroker_core::Reference;
use pullbroker_registry::{ClientSettings, RegistryClient, RegistryTls, Resolver, ResolverOptions};
use pullbroker_testenv::pki::PrivateCa;
use pullbroker_testenv::squid::Squid;
use pullbroker_testenv::{skopeo, Auth, Env, Registry, RegistryOptions};

const NAME: &str = "reg.proxy.test";

fn resolver(settings: ClientSettings) -> Resolver {
    Resolver::new(
        RegistryClient::new(settings).unwrap(),
        Arc::new(pullbroker_core::keychain::Anonymous),
        ResolverOptions::default(),
    )
}

#[tokio::test]
async fn registry_requests_follow_https_proxy_and_no_proxy_as_go_does() {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::new("Proxy Test CA").unwrap();
    let tls = ca
        .server(&dir.path().join("tls"), &[NAME, "127.0.0.1"])
        .unwrap();
    let registry = Registry::start(RegistryOptions {
        name: "behind-proxy".into(),
        auth: Auth::Anonymous,
        tls: Some(tls),
        quiet: true,
        data_dir: None,
    })
    .unwrap();
    let direct = format!("{}/demo/app:v1", registry.host());
    skopeo::copy(&env.layout, "v1", &direct, None, skopeo::Format::Oci, false).unwrap();
    let want = skopeo::digest(&direct, None).unwrap();
    let squid = Squid::start(&[NAME]).unwrap();
    let named = format!("{NAME}:{}", registry.addr.port());
    let settings = |no_proxy: &str| ClientSettings {
        proxy: Some(ProxyEnv {
            https_proxy: Some(squid.url()),
            http_proxy: Some(squid.url()),
            no_proxy: no_proxy.into(),
        }),
        registry_tls: vec![RegistryTls {
            registries: vec![named.clone(), registry.host()],
            ca_pems: vec![ca.cert_pem.clone().into_bytes()],
            ca_only: true,
            plain_http: false,
        }],
        // No pooled connections: each tunnel closes, and squid logs it,
        // when its request is done.
        max_idle_per_host: 0,
        ..Default::default()
    };

    // Through the proxy: only it can resolve the name.
    let r = resolver(settings(""));
    let got = r
        .resolve(&Reference::parse(&format!("{named}/demo/app:v1")).unwrap())
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), want);
    // Loopback by address is never proxied, even with a proxy set.
    let got = r
        .resolve(&Reference::parse(&direct).unwrap())
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), want);
    drop(r); // closes the tunnel: squid logs it now
    let line = squid
        .wait_for_line(&format!("CONNECT {named}"), Duration::from_secs(10))
        .unwrap();
    assert!(line.contains("HIER_DIRECT/127.0.0.1"), "{line}");
    let before = squid.lines();
    assert!(
        !before.iter().any(|l| l.contains(&registry.host())),
        "loopback went through the proxy: {before:?}"
    );

    // Named in NO_PROXY (as a domain suffix entry): direct, so the name does
    // not resolve here — and the proxy never sees it.
    let r = resolver(settings(".proxy.test"));
    let err = r
        .resolve(&Reference::parse(&format!("{named}/demo/app:v2")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class(), "connect", "{err}");
    assert!(err.to_string().contains(&named), "{err}");
    drop(r);
    assert_eq!(squid.lines(), before, "NO_PROXY traffic reached the proxy");
}
