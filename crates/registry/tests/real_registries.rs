//! The resolver against real Debian `docker-registry` instances (anonymous,
//! htpasswd, TLS, token auth), checked against `skopeo inspect`.

use std::sync::Arc;
use std::time::Duration;

use pullbroker_core::{Credential, DockerConfig, Keychain, Reference};
use pullbroker_registry::{
    ClientSettings, RegistryClient, RegistryError, Resolver, ResolverOptions,
};
use pullbroker_testenv::{fixtures, skopeo, token_server, Env, Registry, PASSWORD, PUSHES, USER};

fn keychain_for(registry: &Registry, user: &str, password: &str) -> Arc<dyn Keychain> {
    Arc::new(DockerConfig::single(&registry.host(), Credential::basic(user, password)).unwrap())
}

fn resolver(
    settings: ClientSettings,
    keychain: Arc<dyn Keychain>,
    options: ResolverOptions,
) -> Resolver {
    Resolver::new(RegistryClient::new(settings).unwrap(), keychain, options)
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

#[tokio::test]
async fn every_digest_matches_skopeo_on_every_registry() {
    let env = Env::shared();
    let cases = [
        (&env.anon, None),
        (&env.basic, Some((USER, PASSWORD))),
        (&env.token, Some((USER, PASSWORD))),
    ];
    for (registry, creds) in cases {
        let keychain: Arc<dyn Keychain> = match creds {
            Some((u, p)) => keychain_for(registry, u, p),
            None => Arc::new(pullbroker_core::keychain::Anonymous),
        };
        let r = resolver(
            ClientSettings::default(),
            keychain,
            ResolverOptions::default(),
        );
        let images: Vec<Reference> = PUSHES
            .iter()
            .map(|(_, tag, _, _)| reference(&env.image(registry, tag)))
            .collect();
        let results = r.resolve_all(&images, |_, _| {}).await;
        for (image, result) in images.iter().zip(results) {
            let ours = result
                .unwrap_or_else(|e| panic!("{image}: {e}"))
                .digest
                .to_string();
            let theirs = skopeo::digest(&image.to_string(), creds).unwrap();
            assert_eq!(ours, theirs, "{image} on {}", registry.host());
        }
        // OCI tags keep the digests we generated.
        let v1 = r
            .resolve(&reference(&env.image(registry, "v1")))
            .await
            .unwrap();
        assert_eq!(v1.digest.to_string(), env.fixtures.tags["v1"]);
        let multi = r
            .resolve(&reference(&env.image(registry, "multi")))
            .await
            .unwrap();
        assert_eq!(multi.digest.to_string(), env.fixtures.tags["multi"]);
        assert_eq!(multi.media_type.as_deref(), Some(fixtures::OCI_INDEX));
    }
}

#[tokio::test]
async fn platform_picks_the_child_manifest_of_an_index_or_list() {
    let env = Env::shared();
    for tag in ["multi", "multi-docker"] {
        let image = env.image(&env.anon, tag);
        let index: serde_json::Value =
            serde_json::from_slice(&skopeo::raw(&image, None).unwrap()).unwrap();
        let arm_in_index = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "arm64")
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let options = ResolverOptions {
            platform: Some("linux/arm64".parse().unwrap()),
            ..Default::default()
        };
        let r = resolver(
            ClientSettings::default(),
            Arc::new(pullbroker_core::keychain::Anonymous),
            options,
        );
        let got = r
            .resolve(&reference(&image))
            .await
            .unwrap()
            .digest
            .to_string();
        assert_eq!(got, arm_in_index, "{tag}");
        let by_digest = format!("{}/{}@{got}", env.anon.host(), pullbroker_testenv::REPO);
        assert_eq!(skopeo::architecture(&by_digest, None).unwrap(), "arm64");
        if tag == "multi" {
            assert_eq!(got, env.fixtures.platforms["linux/arm64"]);
        }
        // A platform the index lacks is a clear error listing what it has.
        let s390 = ResolverOptions {
            platform: Some("linux/s390x".parse().unwrap()),
            ..Default::default()
        };
        let r = resolver(
            ClientSettings::default(),
            Arc::new(pullbroker_core::keychain::Anonymous),
            s390,
        );
        let err = r.resolve(&reference(&image)).await.unwrap_err();
        assert!(matches!(err, RegistryError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
    }
}

#[tokio::test]
async fn tls_registry_with_extra_ca_or_insecure() {
    let env = Env::shared();
    let image = reference(&env.image(&env.tls, "v1"));
    let keychain = keychain_for(&env.tls, USER, PASSWORD);
    let ca = std::fs::read(env.dir.path().join("tls.crt")).unwrap();
    let with_ca = ClientSettings {
        ca_pems: vec![ca],
        ..Default::default()
    };
    let r = resolver(with_ca, keychain.clone(), ResolverOptions::default());
    assert_eq!(
        r.resolve(&image).await.unwrap().digest.to_string(),
        env.fixtures.tags["v1"]
    );

    // Without the CA the certificate is refused, and the HTTP fallback (which
    // reaches a TLS port) does not hide that.
    let r = resolver(
        ClientSettings::default(),
        keychain.clone(),
        ResolverOptions::default(),
    );
    let err = r.resolve(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let insecure = ClientSettings {
        insecure: vec![env.tls.host()],
        ..Default::default()
    };
    let r = resolver(insecure, keychain, ResolverOptions::default());
    assert_eq!(
        r.resolve(&image).await.unwrap().digest.to_string(),
        env.fixtures.tags["v1"]
    );
}

#[tokio::test]
async fn wrong_password_is_unauthorized_naming_registry_and_repository() {
    let env = Env::shared();
    for registry in [&env.basic, &env.token] {
        let r = resolver(
            ClientSettings::default(),
            keychain_for(registry, USER, "wrong-CANARY-pw"),
            ResolverOptions::default(),
        );
        let err = r
            .resolve(&reference(&env.image(registry, "v1")))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&registry.host()) && msg.contains("demo/app"),
            "{msg}"
        );
        assert!(msg.contains("unauthorized"), "{msg}");
        for secret in ["wrong-CANARY-pw", PASSWORD] {
            assert!(
                !msg.contains(secret) && !format!("{err:?}").contains(secret),
                "{msg}"
            );
        }
    }
    // Anonymous on an authenticated registry is refused too.
    for registry in [&env.basic, &env.token] {
        let r = resolver(
            ClientSettings::default(),
            Arc::new(pullbroker_core::keychain::Anonymous),
            ResolverOptions::default(),
        );
        let err = r
            .resolve(&reference(&env.image(registry, "v1")))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    }
}

#[tokio::test]
async fn second_credential_is_tried_when_the_first_is_refused() {
    let env = Env::shared();
    let host = env.basic.host();
    let config = format!(
        r#"{{"auths":{{"{host}":{{"username":"{USER}","password":"nope"}},"{host}/demo":{{"username":"{USER}","password":"{PASSWORD}"}},"{host}/demo/app":{{"username":"x","password":"y"}}}}}}"#
    );
    let keychain: Arc<dyn Keychain> = Arc::new(DockerConfig::parse(config.as_bytes()).unwrap());
    let image = reference(&env.image(&env.basic, "v1"));
    assert_eq!(keychain.credentials_for(&image).len(), 3);
    let r = resolver(
        ClientSettings::default(),
        keychain,
        ResolverOptions::default(),
    );
    assert_eq!(
        r.resolve(&image).await.unwrap().digest.to_string(),
        env.fixtures.tags["v1"]
    );
}

#[tokio::test]
async fn identity_token_uses_the_oauth2_refresh_grant() {
    let env = Env::shared();
    let keychain: Arc<dyn Keychain> = Arc::new(
        DockerConfig::single(
            &env.token.host(),
            Credential::IdentityToken {
                username: "<token>".into(),
                token: token_server::IDENTITY_TOKEN.to_string().into(),
            },
        )
        .unwrap(),
    );
    let r = resolver(
        ClientSettings::default(),
        keychain,
        ResolverOptions::default(),
    );
    let got = r
        .resolve(&reference(&env.image(&env.token, "v1")))
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), env.fixtures.tags["v1"]);
}

#[tokio::test]
async fn unknown_tag_and_repository_are_not_found() {
    let env = Env::shared();
    let r = resolver(
        ClientSettings::default(),
        keychain_for(&env.token, USER, PASSWORD),
        ResolverOptions::default(),
    );
    for image in [
        env.image(&env.token, "no-such-tag"),
        format!("{}/no/such-repo:v1", env.token.host()),
    ] {
        let err = r.resolve(&reference(&image)).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotFound { .. }),
            "{image}: {err}"
        );
        assert!(err.to_string().contains("not found"), "{err}");
    }
}

#[tokio::test]
async fn registry_down_fails_fast_and_a_hung_one_within_the_timeout() {
    let settings = ClientSettings {
        timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    // Nothing listens: connection refused on both transports.
    let refused = pullbroker_testenv::net::RefusedPort::new();
    let port = refused.addr().port();
    let r = resolver(
        settings.clone(),
        keychain_for_host(&format!("127.0.0.1:{port}")),
        ResolverOptions::default(),
    );
    let err = r
        .resolve(&reference(&format!("127.0.0.1:{port}/demo/app:v1")))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains(PASSWORD));

    // Accepts connections, never answers: a timeout, bounded by our own limit.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hung.local_addr().unwrap();
    let r = resolver(
        settings,
        keychain_for_host(&addr.to_string()),
        ResolverOptions::default(),
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        r.resolve(&reference(&format!("{addr}/demo/app:v1"))),
    )
    .await;
    let err = outcome
        .expect("the client's own timeout must fire first")
        .unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
    drop(hung);
}

fn keychain_for_host(host: &str) -> Arc<dyn Keychain> {
    Arc::new(DockerConfig::single(host, Credential::basic(USER, PASSWORD)).unwrap())
}

#[tokio::test]
async fn digest_references_never_touch_the_network() {
    let refused = pullbroker_testenv::net::RefusedPort::new();
    let port = refused.addr().port();
    let digest = "sha256:683a5ba4d6838eb126aee099c4c2cb17c6d38c20b9084c9d8dd68a48565d2c81";
    let r = resolver(
        ClientSettings::default(),
        Arc::new(pullbroker_core::keychain::Anonymous),
        ResolverOptions::default(),
    );
    let got = r
        .resolve(&reference(&format!("127.0.0.1:{port}/a:v1@{digest}")))
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), digest);
    assert!(!got.from_registry);
}

#[tokio::test]
async fn one_token_serves_every_tag_of_a_repository() {
    let env = Env::shared();
    let repo = "tokenreuse/app";
    for (src, dst) in [("v1", "a"), ("multi", "b"), ("v1", "c")] {
        skopeo::copy(
            &env.layout,
            src,
            &format!("{}/{repo}:{dst}", env.token.host()),
            Some((USER, PASSWORD)),
            skopeo::Format::Oci,
            src == "multi",
        )
        .unwrap();
    }
    let scope = format!("repository:{repo}:pull");
    let before = env.token_server.issued_for(&scope);
    let options = ResolverOptions {
        cache_ttl: Duration::ZERO,
        ..Default::default()
    };
    let r = resolver(
        ClientSettings::default(),
        keychain_for(&env.token, USER, PASSWORD),
        options,
    );
    let images: Vec<Reference> = ["a", "b", "c", "a", "b", "c", "a"]
        .iter()
        .map(|t| reference(&format!("{}/{repo}:{t}", env.token.host())))
        .collect();
    for result in r.resolve_all(&images, |_, _| {}).await {
        result.unwrap();
    }
    // And again, sequentially: still the cached token.
    r.resolve(&images[0]).await.unwrap();
    assert_eq!(
        env.token_server.issued_for(&scope) - before,
        1,
        "one token for the repository"
    );
}
