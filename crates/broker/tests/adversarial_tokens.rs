//! Service-account token verification under attack: every case is rejected
//! with the right error class, and none panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pullbroker_broker::satoken::{IssuerSettings, JwksSource, TokenError, Verifier};
use pullbroker_broker::tokenreview::{HttpTokenReview, ReviewOutcome, TokenReviewer};
use pullbroker_testenv::issuer::{now, TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

const AUD: &str = "pullbroker";

fn settings(jwks: JwksSource) -> IssuerSettings {
    IssuerSettings {
        issuer: KUBE_ISSUER.into(),
        audience: AUD.into(),
        jwks,
        leeway: Duration::from_secs(30),
        fetch_token: None,
        ca_pem: None,
        min_refresh_interval: Duration::from_secs(10),
        keys_refresh_interval: Duration::from_secs(300),
        review_cache: Default::default(),
        dev_keys_allowed: false,
    }
}

async fn verifier(jwks: String) -> Verifier {
    Verifier::new(settings(JwksSource::Static(jwks)), None)
        .await
        .unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Replaces the payload of a signed token, keeping header and signature.
fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims), parts[2])
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.", b64(&header), b64(claims))
}

fn edit(mut claims: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut claims);
    claims
}

#[tokio::test]
async fn adversarial_suite() {
    let a = TestIssuer::rsa(KUBE_ISSUER);
    let b = TestIssuer::rsa(KUBE_ISSUER); // another cluster, same issuer URL
    let e = TestIssuer::ec(KUBE_ISSUER);
    let v = verifier(TestIssuer::jwks_of(&[&a, &e])).await;
    let good = a.claims("team-a", "app", AUD, 600);
    let t = now();

    // Controls: these must pass, or the suite proves nothing.
    for (name, token) in [
        ("rsa", a.sign(&good)),
        ("ec", e.sign(&e.claims("team-a", "app", AUD, 600))),
        (
            "aud among several",
            a.sign(&edit(good.clone(), |c| c["aud"] = json!(["other", AUD]))),
        ),
        (
            "legacy sub-only token",
            a.sign(&edit(good.clone(), |c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            })),
        ),
        (
            "within leeway",
            a.sign(&edit(good.clone(), |c| c["exp"] = json!(t - 20))),
        ),
    ] {
        let got = v.verify(&token, t).await;
        assert!(got.is_ok(), "control {name} failed: {got:?}");
        assert_eq!(
            got.unwrap().subject.to_string(),
            "system:serviceaccount:team-a:app"
        );
    }

    let hs_pub = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(a.kid.clone());
        jsonwebtoken::encode(
            &h,
            &good,
            &EncodingKey::from_secret(a.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let hs_jwks_n = {
        let mut h = Header::new(Algorithm::HS512);
        h.kid = Some(a.kid.clone());
        jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(a.jwks().as_bytes())).unwrap()
    };
    let attacker = TestIssuer::rsa("https://attacker.example");
    let embedded_jwk = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(attacker.kid.clone());
        h.jwk = Some(
            serde_json::from_str(
                &serde_json::from_str::<Value>(&attacker.jwks()).unwrap()["keys"][0].to_string(),
            )
            .unwrap(),
        );
        attacker.sign_with(&h, &good)
    };
    let jku = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(attacker.kid.clone());
        h.jku = Some("https://attacker.example/jwks".into());
        attacker.sign_with(&h, &good)
    };
    let b_with_a_kid = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(a.kid.clone());
        b.sign_with(&h, &good)
    };
    let es_header_rsa_kid = {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(a.kid.clone());
        e.sign_with(&h, &good)
    };
    let ps_header_rs_key = {
        let mut h = Header::new(Algorithm::PS256);
        h.kid = Some(a.kid.clone());
        a.sign_with(&h, &good)
    };
    let no_kid = a.sign_with(&Header::new(Algorithm::RS256), &good);
    let crit = {
        let valid = a.sign(&good);
        let parts: Vec<&str> = valid.split('.').collect();
        let header = json!({"alg": "RS256", "kid": a.kid, "crit": ["exp"]});
        format!("{}.{}.{}", b64(&header), parts[1], parts[2])
    };
    let typ_tampered = {
        let valid = a.sign(&good);
        let parts: Vec<&str> = valid.split('.').collect();
        let header = json!({"alg": "RS256", "kid": a.kid, "typ": "JWT", "x": 1});
        format!("{}.{}.{}", b64(&header), parts[1], parts[2])
    };
    let valid = a.sign(&good);
    let huge = a.sign(&edit(good.clone(), |c| {
        c["padding"] = json!("x".repeat(20_000))
    }));

    use TokenError as E;
    let class = |e: &E| e.class();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            a.sign(&edit(good.clone(), |c| c["exp"] = json!(t - 600))),
            "expired",
        ),
        (
            "expired beyond leeway",
            a.sign(&edit(good.clone(), |c| c["exp"] = json!(t - 31))),
            "expired",
        ),
        (
            "not yet valid",
            a.sign(&edit(good.clone(), |c| c["nbf"] = json!(t + 600))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            a.sign(&edit(good.clone(), |c| c["iat"] = json!(t + 600))),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            a.sign(&edit(good.clone(), |c| c["aud"] = json!(["other"]))),
            "audience",
        ),
        (
            "audience of the API server",
            a.sign(&edit(good.clone(), |c| {
                c["aud"] = json!(["https://kubernetes.default.svc"])
            })),
            "audience",
        ),
        (
            "empty audience",
            a.sign(&edit(good.clone(), |c| c["aud"] = json!([]))),
            "audience",
        ),
        (
            "no audience",
            a.sign(&edit(good.clone(), |c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            "claims",
        ),
        (
            "wrong issuer",
            a.sign(&edit(good.clone(), |c| {
                c["iss"] = json!("https://other.example")
            })),
            "issuer",
        ),
        (
            "issuer with trailing slash",
            a.sign(&edit(good.clone(), |c| {
                c["iss"] = json!(format!("{KUBE_ISSUER}/"))
            })),
            "issuer",
        ),
        (
            "no issuer",
            a.sign(&edit(good.clone(), |c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
            "claims",
        ),
        (
            "no exp",
            a.sign(&edit(good.clone(), |c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "claims",
        ),
        (
            "exp is a string",
            a.sign(&edit(good.clone(), |c| {
                c["exp"] = json!(format!("{}", t + 600))
            })),
            "claims",
        ),
        (
            "nbf is a string",
            a.sign(&edit(good.clone(), |c| c["nbf"] = json!("soon"))),
            "claims",
        ),
        (
            "no sub",
            a.sign(&edit(good.clone(), |c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "claims",
        ),
        (
            "sub is a user",
            a.sign(&edit(good.clone(), |c| c["sub"] = json!("alice"))),
            "claims",
        ),
        (
            "sub is a node",
            a.sign(&edit(good.clone(), |c| {
                c["sub"] = json!("system:node:node-1")
            })),
            "claims",
        ),
        (
            "sub names another namespace",
            a.sign(&edit(good.clone(), |c| {
                c["sub"] = json!("system:serviceaccount:team-b:app")
            })),
            "claims",
        ),
        (
            "claim names another namespace",
            a.sign(&edit(good.clone(), |c| {
                c["kubernetes.io"]["namespace"] = json!("kube-system")
            })),
            "claims",
        ),
        (
            "namespace is a number",
            a.sign(&edit(good.clone(), |c| {
                c["kubernetes.io"]["namespace"] = json!(7)
            })),
            "claims",
        ),
        (
            "serviceaccount missing",
            a.sign(&edit(good.clone(), |c| {
                c["kubernetes.io"]
                    .as_object_mut()
                    .unwrap()
                    .remove("serviceaccount");
            })),
            "claims",
        ),
        (
            "kubernetes.io is a string",
            a.sign(&edit(good.clone(), |c| {
                c["kubernetes.io"] = json!("team-a")
            })),
            "claims",
        ),
        (
            "legacy claims contradict sub",
            a.sign(&edit(good.clone(), |c| {
                let o = c.as_object_mut().unwrap();
                o.remove("kubernetes.io");
                o.insert(
                    "kubernetes.io/serviceaccount/namespace".into(),
                    json!("kube-system"),
                );
                o.insert(
                    "kubernetes.io/serviceaccount/service-account.name".into(),
                    json!("app"),
                );
            })),
            "claims",
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "kid": a.kid}), &good),
            "algorithm",
        ),
        (
            "alg NONE",
            unsigned(json!({"alg": "NONE"}), &good),
            "algorithm",
        ),
        (
            "alg None without kid",
            unsigned(json!({"alg": "None"}), &good),
            "algorithm",
        ),
        (
            "alg missing",
            unsigned(json!({"kid": a.kid}), &good),
            "malformed",
        ),
        ("HS256 with the RSA public key", hs_pub, "algorithm"),
        ("HS512 with the JWKS as secret", hs_jwks_n, "algorithm"),
        ("ES256 header on an RSA key", es_header_rsa_kid, "algorithm"),
        (
            "PS256 header on an RS256 key",
            ps_header_rs_key,
            "algorithm",
        ),
        ("unknown kid (other cluster)", b.sign(&good), "unknown_key"),
        ("attacker key embedded as jwk", embedded_jwk, "unknown_key"),
        ("attacker jku", jku, "unknown_key"),
        ("other key under our kid", b_with_a_kid, "signature"),
        ("no kid", no_kid, "malformed"),
        ("crit header", crit, "malformed"),
        ("tampered header", typ_tampered, "signature"),
        (
            "tampered payload: other namespace",
            with_payload(
                &valid,
                &edit(good.clone(), |c| {
                    c["kubernetes.io"]["namespace"] = json!("team-b");
                    c["sub"] = json!("system:serviceaccount:team-b:app");
                }),
            ),
            "signature",
        ),
        (
            "tampered payload: later exp",
            with_payload(
                &valid,
                &edit(good.clone(), |c| c["exp"] = json!(t + 999_999)),
            ),
            "signature",
        ),
        (
            "signature removed",
            format!("{}.", valid.rsplit_once('.').unwrap().0),
            "signature",
        ),
        (
            "signature of another token",
            format!(
                "{}.{}",
                valid.rsplit_once('.').unwrap().0,
                a.sign(&edit(good.clone(), |c| c["jti"] = json!("x")))
                    .rsplit_once('.')
                    .unwrap()
                    .1
            ),
            "signature",
        ),
        (
            "truncated",
            valid[..valid.len() / 2].to_string(),
            "malformed",
        ),
        (
            "truncated signature",
            valid[..valid.len() - 10].to_string(),
            "signature",
        ),
        (
            "two parts",
            valid.rsplit_once('.').unwrap().0.to_string(),
            "malformed",
        ),
        ("four parts", format!("{valid}.x"), "malformed"),
        ("JWE-shaped", "a.b.c.d.e".to_string(), "malformed"),
        ("empty", String::new(), "malformed"),
        ("garbage", "not a token".to_string(), "malformed"),
        (
            "header not base64",
            format!("!!!.{}", valid.split_once('.').unwrap().1),
            "malformed",
        ),
        (
            "header not JSON",
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode("hello"),
                valid.split_once('.').unwrap().1
            ),
            "malformed",
        ),
        (
            "payload not JSON",
            with_payload_raw(&valid, "hello"),
            "signature",
        ),
        ("oversized", huge, "oversized"),
        ("trailing whitespace", format!("{valid} "), "malformed"),
        ("NUL inside", format!("{valid}\0"), "malformed"),
    ];
    assert!(cases.len() >= 40, "the suite has {} cases", cases.len());
    for (name, token, want) in &cases {
        match v.verify(token, t).await {
            Ok(ok) => panic!("ACCEPTED {name}: {ok:?}"),
            Err(err) => {
                assert_eq!(class(&err), *want, "{name}: got {err}");
                assert!(
                    token.len() < 40 || !err.to_string().contains(token.as_str()),
                    "{name}: error echoes the token"
                );
            }
        }
    }
}

fn with_payload_raw(token: &str, payload: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload),
        parts[2]
    )
}

#[tokio::test]
async fn unknown_kid_refreshes_jwks_at_most_once_per_interval() {
    let old = TestIssuer::rsa(KUBE_ISSUER);
    let new = TestIssuer::rsa(KUBE_ISSUER);
    let stranger = TestIssuer::rsa(KUBE_ISSUER);
    let fetches = Arc::new(AtomicUsize::new(0));
    let (f, jwks_before, jwks_after) = (
        fetches.clone(),
        old.jwks(),
        TestIssuer::jwks_of(&[&old, &new]),
    );
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(|axum::extract::State(base): axum::extract::State<String>| async move {
                axum::Json(json!({"issuer": KUBE_ISSUER, "jwks_uri": format!("{base}/openid/v1/jwks")}))
            }),
        )
        .route(
            "/openid/v1/jwks",
            axum::routing::get(move || {
                let n = f.fetch_add(1, Ordering::SeqCst);
                // The first fetch sees only the old key; later ones the rotated set.
                let body = if n == 0 { jwks_before.clone() } else { jwks_after.clone() };
                async move { body }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = app.with_state(base.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let v = Verifier::new(settings(JwksSource::Discovery(base)), None)
        .await
        .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    v.verify(&old.token("team-a", "app", AUD), now())
        .await
        .unwrap();
    // A token from the rotated key: one refresh, then accepted.
    v.verify(&new.token("team-a", "app", AUD), now())
        .await
        .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // Unknown keys do not make us hammer the issuer: within the interval, no fetch.
    for _ in 0..5 {
        let err = v
            .verify(&stranger.token("team-a", "app", AUD), now())
            .await
            .unwrap_err();
        assert_eq!(err.class(), "unknown_key");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(|| async {
            axum::Json(
                json!({"issuer": "https://evil.example", "jwks_uri": "http://127.0.0.1:1/jwks"}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Not a start-up error (the issuer may be fixed later), but no keys,
    // the reason kept for /readyz, and every token unavailable.
    let v = Verifier::new(settings(JwksSource::Discovery(base)), None)
        .await
        .unwrap();
    assert_eq!(v.key_count(), 0);
    let err = v.keys_health().last_error.unwrap();
    assert!(err.contains("discovery names issuer"), "{err}");
    let a = TestIssuer::rsa(KUBE_ISSUER);
    let refused = v
        .verify(&a.token("team-a", "app", AUD), now())
        .await
        .unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
}

/// A key the issuer removes from its JWKS stops verifying at the next
/// refresh, also for tokens verified (and cached) before.
#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_verifying_cached_tokens_too() {
    let old = TestIssuer::rsa(KUBE_ISSUER);
    let new = TestIssuer::rsa(KUBE_ISSUER);
    let served = Arc::new(std::sync::Mutex::new(TestIssuer::jwks_of(&[&old, &new])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (body, f) = (served.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            f.fetch_add(1, Ordering::SeqCst);
            let b = body.lock().unwrap().clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let v = Arc::new(
        Verifier::new(
            IssuerSettings {
                keys_refresh_interval: Duration::from_secs(1),
                review_cache: Default::default(),
                ..settings(JwksSource::Url(url))
            },
            None,
        )
        .await
        .unwrap(),
    );
    let _refresher = v.spawn_refresher().unwrap();
    let token = old.token("team-a", "app", AUD);
    v.verify(&token, now()).await.unwrap();
    v.verify(&token, now()).await.unwrap(); // now from the cache

    *served.lock().unwrap() = new.jwks();
    let seen = fetches.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fetches.load(Ordering::SeqCst) < seen + 1 || v.key_count() != 1 {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = v.verify(&token, now()).await.unwrap_err();
    assert_eq!(err.class(), "unknown_key", "{err:?}");
    v.verify(&new.token("team-a", "app", AUD), now())
        .await
        .unwrap();
}

/// TokenReview answers as a real kube-apiserver v1.36 does (HTTP 201, verdict
/// in status): a pod-bound token whose pod was deleted is refused although
/// its signature is fine.
#[tokio::test]
async fn token_review_catches_revoked_tokens() {
    let a = TestIssuer::rsa(KUBE_ISSUER);
    let live = a.token("team-a", "app", AUD);
    let revoked = a.sign(&edit(a.claims("team-a", "app", AUD, 600), |c| {
        c["jti"] = json!("deleted-pod")
    }));
    let (live2, revoked2) = (live.clone(), revoked.clone());
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        axum::routing::post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let (live, revoked) = (live2.clone(), revoked2.clone());
            async move {
                assert_eq!(headers["authorization"], "Bearer reviewer-token");
                assert_eq!(body["spec"]["audiences"], json!([AUD]));
                let token = body["spec"]["token"].as_str().unwrap();
                let status = if token == live {
                    json!({"authenticated": true, "user": {"username": "system:serviceaccount:team-a:app", "groups": ["system:serviceaccounts"]}, "audiences": [AUD]})
                } else if token == revoked {
                    json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
                } else {
                    json!({"user": {}, "error": "[invalid bearer token]"})
                };
                (axum::http::StatusCode::CREATED, axum::Json(json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": status})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let reviewer: Arc<dyn TokenReviewer> =
        Arc::new(HttpTokenReview::new(&base, "reviewer-token".to_string().into(), None).unwrap());
    let outcome: ReviewOutcome = reviewer.review(&live, &[AUD.to_string()]).await.unwrap();
    assert!(outcome.authenticated);
    let v = Verifier::new(settings(JwksSource::Static(a.jwks())), Some(reviewer))
        .await
        .unwrap();
    assert!(v.verify(&live, now()).await.is_ok());
    let err = v.verify(&revoked, now()).await.unwrap_err();
    assert_eq!(err.class(), "revoked");
    assert!(err.to_string().contains("invalidated"), "{err}");
}

/// A TokenReview call that fails (the API server is down) is no verdict on
/// the token: the class is `review_unavailable`, never `revoked`, and the
/// broker answers 503 (retry) without the API server's URL.
#[tokio::test]
async fn a_failed_token_review_is_unavailable_not_revoked() {
    let a = TestIssuer::rsa(KUBE_ISSUER);
    let live = a.token("team-a", "app", AUD);
    // Nothing listens there.
    let refused = pullbroker_testenv::net::RefusedPort::new();
    let dead = format!("http://{}", refused.host());
    let reviewer: Arc<dyn TokenReviewer> =
        Arc::new(HttpTokenReview::new(&dead, "reviewer-token".to_string().into(), None).unwrap());
    let v = Verifier::new(settings(JwksSource::Static(a.jwks())), Some(reviewer))
        .await
        .unwrap();
    let err = v.verify(&live, now()).await.unwrap_err();
    assert_eq!(err.class(), "review_unavailable", "{err}");
    assert!(err.is_unavailable());
}
