//! What the broker sends to, and takes from, an issuer: the fetch token goes
//! to the discovery document's own origin only, oversized answers are
//! refused unread, and the development issuer's key (public in this
//! repository) is trusted only by a broker that listens on loopback alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use pullbroker_broker::satoken::{IssuerSettings, JwksSource, Verifier};
use pullbroker_testenv::issuer::{now, TestIssuer, KUBE_ISSUER};
use serde_json::json;

fn settings(jwks: JwksSource) -> IssuerSettings {
    IssuerSettings {
        issuer: KUBE_ISSUER.into(),
        audience: "pullbroker".into(),
        jwks,
        leeway: Duration::from_secs(30),
        fetch_token: Some("FETCH-TOKEN-CANARY".to_string().into()),
        ca_pem: None,
        min_refresh_interval: Duration::from_secs(10),
        keys_refresh_interval: Duration::from_secs(300),
        review_cache: Default::default(),
        dev_keys_allowed: false,
    }
}

/// Serves `app` on a loopback port of its own; returns its origin.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

type Seen = Arc<Mutex<Vec<Option<String>>>>;

fn recorder(seen: &Seen, body: String) -> axum::routing::MethodRouter {
    let seen = seen.clone();
    axum::routing::get(move |headers: HeaderMap| {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        seen.lock().unwrap().push(auth);
        let body = body.clone();
        async move { body }
    })
}

#[tokio::test]
async fn a_jwks_uri_on_another_origin_never_receives_the_fetch_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    let (discovery_seen, jwks_seen): (Seen, Seen) = Default::default();
    let keys = serve(axum::Router::new().route("/keys", recorder(&jwks_seen, issuer.jwks()))).await;
    let doc = json!({"issuer": KUBE_ISSUER, "jwks_uri": format!("{keys}/keys")}).to_string();
    let discovery = serve(axum::Router::new().route(
        "/.well-known/openid-configuration",
        recorder(&discovery_seen, doc),
    ))
    .await;
    let verifier = Verifier::new(settings(JwksSource::Discovery(discovery)), None)
        .await
        .unwrap();
    assert_eq!(verifier.key_count(), 1, "the keys still load");
    assert_eq!(
        *discovery_seen.lock().unwrap(),
        [Some("Bearer FETCH-TOKEN-CANARY".to_string())],
        "the discovery document's own origin gets the token"
    );
    assert_eq!(
        *jwks_seen.lock().unwrap(),
        [None],
        "another origin does not"
    );
    verifier
        .verify(&issuer.token("team-a", "app", "pullbroker"), now())
        .await
        .expect("tokens verify with keys fetched without the token");
}

#[tokio::test]
async fn a_jwks_uri_on_the_same_origin_gets_the_fetch_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    let seen: Seen = Default::default();
    // The document names its own origin, known only once it listens.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let doc =
        json!({"issuer": KUBE_ISSUER, "jwks_uri": format!("{origin}/openid/v1/jwks")}).to_string();
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", recorder(&seen, doc))
        .route("/openid/v1/jwks", recorder(&seen, issuer.jwks()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let verifier = Verifier::new(settings(JwksSource::Discovery(origin)), None)
        .await
        .unwrap();
    assert_eq!(verifier.key_count(), 1);
    let bearer = Some("Bearer FETCH-TOKEN-CANARY".to_string());
    assert_eq!(*seen.lock().unwrap(), [bearer.clone(), bearer]);
}

/// An endless JWKS (no Content-Length, chunks forever) is refused at the cap:
/// the broker starts without keys and says why, it does not buffer it.
#[tokio::test]
async fn an_oversized_jwks_is_refused_unread() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
                // Bounded, so the test ends even if the cap were missing:
                // 64 MiB, 64 times the cap.
                let body = futures::stream::iter((0..1024).map(move |_| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                }));
                axum::body::Body::from_stream(body)
            }
        }),
    );
    let origin = serve(app).await;
    let verifier = Verifier::new(settings(JwksSource::Url(format!("{origin}/keys"))), None)
        .await
        .unwrap();
    assert_eq!(verifier.key_count(), 0);
    let error = verifier.keys_health().last_error.expect("a reason");
    assert!(error.contains("larger than"), "{error}");
    // Not read to the end: what was produced is what socket buffers held
    // when the broker stopped reading, far below the 64 MiB on offer.
    let chunks = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(chunks < 1024, "{chunks} chunks were produced: read it all");
}

/// The development issuer's key ID, refused unless the broker listens on
/// loopback alone: its private key is in this repository.
#[tokio::test]
async fn the_dev_issuer_key_is_refused_beyond_loopback() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone");
    let jwks = std::fs::read_to_string(root.join("issuer-jwks.json")).unwrap();
    let refused = Verifier::new(settings(JwksSource::Static(jwks.clone())), None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.to_string().contains("development issuer"),
        "{refused}"
    );
    let allowed = Verifier::new(
        IssuerSettings {
            dev_keys_allowed: true,
            ..settings(JwksSource::Static(jwks))
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(allowed.key_count(), 1);

    // From the config file: the listener decides.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("issuer-jwks.json"),
        dir.path().join("issuer-jwks.json"),
    )
    .unwrap();
    let config = |listen: &str, transport: &str| {
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, format!("apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  listen: \"{listen}\"\n  {transport}\n  serviceAccountIssuer: {{issuer: https://pullbroker.dev.invalid, jwksFile: issuer-jwks.json}}\n")).unwrap();
        pullbroker_broker::config::load(&path).unwrap()
    };
    let loopback = config("127.0.0.1:8480", "insecurePlainHttp: true");
    assert!(loopback.issuer.dev_keys_allowed);
    let exposed = config("0.0.0.0:8443", "tls: {certFile: tls.crt, keyFile: tls.key}");
    assert!(!exposed.issuer.dev_keys_allowed);
    let err = pullbroker_broker::Broker::new(exposed, None, Default::default(), None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("development issuer"), "{err}");
}
