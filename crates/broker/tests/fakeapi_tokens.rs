//! The broker's token verification against the fake API server: OIDC
//! discovery and JWKS as kube-apiserver serves them, tokens from TokenRequest,
//! and the online check through TokenReview.

use std::sync::Arc;
use std::time::Duration;

use pullbroker_broker::satoken::{IssuerSettings, JwksSource, Verifier};
use pullbroker_broker::tokenreview::{HttpTokenReview, TokenReviewer};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{now, TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

/// The issuer as a cluster's: keys by OIDC discovery at `url`.
fn discovery_settings(url: impl Into<String>) -> IssuerSettings {
    IssuerSettings {
        issuer: KUBE_ISSUER.into(),
        audience: "pullbroker".into(),
        jwks: JwksSource::Discovery(url.into()),
        leeway: Duration::from_secs(30),
        fetch_token: None,
        ca_pem: None,
        min_refresh_interval: Duration::from_secs(10),
        keys_refresh_interval: Duration::from_secs(300),
        review_cache: Default::default(),
        dev_keys_allowed: false,
    }
}

/// Creates service account `team-a/NAME` on the fake API server (and the
/// namespace, the first time: creates in a missing one are refused).
async fn create_account(fake: &FakeApi, name: &str) {
    let _ = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces", fake.url))
        .json(&json!({"metadata": {"name": "team-a"}}))
        .send()
        .await
        .unwrap();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/team-a/serviceaccounts",
            fake.url
        ))
        .json(&json!({"metadata": {"name": name}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
}

/// A token for `team-a/ACCOUNT` from the fake's TokenRequest.
async fn token_request(fake: &FakeApi, account: &str, audience: &str) -> String {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 600}});
    let v: Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/team-a/serviceaccounts/{account}/token",
            fake.url
        ))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_from_token_request_verify_by_discovery_and_review() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    create_account(&fake, "app").await;
    let token_for = |audience: &'static str| token_request(&fake, "app", audience);
    let reviewer: Arc<dyn TokenReviewer> =
        Arc::new(HttpTokenReview::new(&fake.url, "unused".to_string().into(), None).unwrap());
    let settings = discovery_settings(fake.url.clone());
    let verifier = Verifier::new(settings, Some(reviewer)).await.unwrap();
    let verified = verifier
        .verify(&token_for("pullbroker").await, now())
        .await
        .unwrap();
    assert_eq!(
        verified.subject.to_string(),
        "system:serviceaccount:team-a:app"
    );
    // Not bound to a pod: no pod or node claims, as from a real server.
    assert_eq!(
        (verified.pod.as_ref(), verified.node.as_deref()),
        (None, None)
    );
    let err = verifier
        .verify(&token_for("https://kubernetes.default.svc").await, now())
        .await
        .unwrap_err();
    assert_eq!(err.class(), "audience");
}

/// `discoveryUrl` as the issuer's base URL or as the discovery document's
/// full URL: both load the keys (the full URL used to get the suffix twice).
#[tokio::test]
async fn discovery_by_base_url_or_full_document_url() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    for url in [
        fake.url.clone(),
        format!("{}/", fake.url),
        format!("{}/.well-known/openid-configuration", fake.url),
    ] {
        let settings = discovery_settings(url.clone());
        let verifier = Verifier::new(settings, None)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(verifier.key_count() > 0, "{url}");
    }
}

/// `tokenReview.tokenFile` is read relative to the config file, and a
/// rotated token (a projected token is rewritten in place) is used for the
/// next review without a restart.
#[tokio::test]
async fn a_rotated_token_review_token_file_is_picked_up() {
    use pullbroker_broker::Broker;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let bearer = headers["authorization"].to_str().unwrap().to_string();
                record.lock().unwrap().push(bearer);
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                        "status": {"authenticated": true, "user": {"username": "system:serviceaccount:team-a:app"}}})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    std::fs::write(dir.path().join("review-token"), "first\n").unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(&config, format!("apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  serviceAccountIssuer:\n    issuer: {KUBE_ISSUER}\n    jwksFile: jwks.json\n    tokenReview: {{apiServer: \"{api}\", tokenFile: review-token}}\n")).unwrap();
    let broker = Broker::new(
        pullbroker_broker::config::load(&config).unwrap(),
        Some(config.clone()),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    let _watcher = broker.spawn_watcher(Duration::from_millis(50));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let b = broker.clone();
    tokio::spawn(async move { b.serve(listener, std::future::pending()).await.unwrap() });

    let exchange = |jti: &str| {
        let token = issuer.sign(&{
            let mut c = issuer.claims("team-a", "app", "pullbroker", 600);
            c["jti"] = json!(jti);
            c
        });
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/exchange"))
                .json(&json!({"token": token, "image": "registry.example/app:1"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Denied by policy (there is none), but reviewed first.
    assert_eq!(exchange("one").await, 403);
    assert_eq!(seen.lock().unwrap().last().unwrap(), "Bearer first");

    let tmp = dir.path().join("review-token.tmp");
    std::fs::write(&tmp, "second\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("review-token")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        exchange(&format!("probe-{n}")).await;
        if seen.lock().unwrap().last().unwrap() == "Bearer second" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated token never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An API server that accepts connections and never answers is treated as
/// one that refuses them, within the kubelet plugin's 5 s: a token with a
/// positive verdict inside the stale window is served at once, a token never
/// reviewed gets "unavailable" (503) when the review times out.
#[tokio::test]
async fn a_hung_api_server_serves_recent_verdicts_and_refuses_the_rest_promptly() {
    use pullbroker_broker::tokenreview::ReviewCacheSettings;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    for account in ["app", "other"] {
        create_account(&fake, account).await;
    }
    let (known, unknown) = (
        token_request(&fake, "app", "pullbroker").await,
        token_request(&fake, "other", "pullbroker").await,
    );
    let reviewer: Arc<dyn TokenReviewer> =
        Arc::new(HttpTokenReview::new(&fake.url, "unused".to_string().into(), None).unwrap());
    let settings = IssuerSettings {
        // No positive caching: every verification below asks TokenReview.
        review_cache: ReviewCacheSettings {
            positive: Duration::ZERO,
            ..Default::default()
        },
        ..discovery_settings(fake.url.clone())
    };
    let defaults = ReviewCacheSettings::default();
    let verifier = Verifier::new(settings, Some(reviewer)).await.unwrap();
    verifier.verify(&known, now()).await.expect("reviewed");
    let reviews = verifier.token_reviews().unwrap();

    fake.set_hung(true);
    let started = std::time::Instant::now();
    let v = verifier
        .verify(&known, now())
        .await
        .expect("the recent verdict");
    let stale_in = started.elapsed();
    assert_eq!(v.subject.to_string(), "system:serviceaccount:team-a:app");
    assert_eq!(
        verifier.token_reviews().unwrap(),
        reviews + 1,
        "a review was tried"
    );
    assert!(
        stale_in < Duration::from_millis(1500) && stale_in < defaults.timeout,
        "served only after {stale_in:?}"
    );

    let started = std::time::Instant::now();
    let err = verifier.verify(&unknown, now()).await.unwrap_err();
    let refused_in = started.elapsed();
    assert_eq!(err.class(), "review_unavailable", "{err}");
    assert!(
        refused_in >= defaults.timeout && refused_in < Duration::from_secs(3),
        "refused after {refused_in:?}"
    );

    // Answering again, the API server decides again.
    fake.set_hung(false);
    verifier
        .verify(&unknown, now())
        .await
        .expect("reviewed again");
}
