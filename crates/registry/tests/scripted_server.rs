//! Client behaviours a real registry cannot be made to show on demand —
//! 429/5xx with retries, a missing or lying `Docker-Content-Digest`, a revoked
//! bearer token, request counts under de-duplication — against a scripted
//! HTTP server on loopback. Correctness against real registries is in
//! `real_registries.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Response};
use pullbroker_core::{Digest, Reference};
use pullbroker_registry::{
    ClientSettings, RegistryClient, RegistryError, Resolver, ResolverOptions,
};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

type Script = dyn Fn(&Request<Body>, usize) -> Response<Body> + Send + Sync;

struct Scripted {
    addr: std::net::SocketAddr,
    manifest_requests: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

/// Serves `/v2/` as 200 and every other path with `script(request, n)`, where
/// `n` counts manifest requests so far (from 0).
async fn serve(
    script: impl Fn(&Request<Body>, usize) -> Response<Body> + Send + Sync + 'static,
) -> Scripted {
    let script: Arc<Script> = Arc::new(script);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (script, count) = (script.clone(), c.clone());
        async move {
            if req.uri().path() == "/v2/" {
                return Response::new(Body::empty());
            }
            let n = if req.uri().path().contains("/manifests/") {
                count.fetch_add(1, Ordering::SeqCst)
            } else {
                usize::MAX
            };
            script(&req, n)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Scripted {
        addr,
        manifest_requests: count,
        _server: server,
    }
}

fn manifest_response(method: &Method, digest_header: Option<&str>) -> Response<Body> {
    let mut b = Response::builder()
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("content-length", MANIFEST.len());
    if let Some(d) = digest_header {
        b = b.header("docker-content-digest", d);
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(MANIFEST)
    };
    b.body(body).unwrap()
}

fn status(code: u16) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

fn settings(addr: std::net::SocketAddr) -> ClientSettings {
    ClientSettings {
        plain_http: vec![addr.to_string()],
        backoff: Duration::from_millis(1),
        ..Default::default()
    }
}

fn resolver(s: &Scripted, options: ResolverOptions) -> Resolver {
    Resolver::new(
        RegistryClient::new(settings(s.addr)).unwrap(),
        Arc::new(pullbroker_core::keychain::Anonymous),
        options,
    )
}

fn image(s: &Scripted, tag: &str) -> Reference {
    Reference::parse(&format!("{}/demo/app:{tag}", s.addr)).unwrap()
}

fn good_digest() -> String {
    Digest::sha256_of(MANIFEST).to_string()
}

#[tokio::test]
async fn retries_429_and_5xx_then_succeeds() {
    let s = serve(|req, n| match n {
        0 => status(429),
        1 => status(503),
        _ => manifest_response(req.method(), Some(&good_digest())),
    })
    .await;
    let got = resolver(&s, ResolverOptions::default())
        .resolve(&image(&s, "v1"))
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), good_digest());
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_are_bounded() {
    let s = serve(|_, _| status(500)).await;
    let err = resolver(&s, ResolverOptions::default())
        .resolve(&image(&s, "v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unavailable {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        s.manifest_requests.load(Ordering::SeqCst),
        3,
        "1 try + 2 retries"
    );
}

#[tokio::test]
async fn rate_limits_are_retried_within_the_backoff_and_given_up_past_it() {
    let limited = |retry_after: &'static str| {
        move |_: &Request<Body>, _: usize| {
            Response::builder()
                .status(429)
                .header("retry-after", retry_after)
                .body(Body::empty())
                .unwrap()
        }
    };
    let counted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let hook = {
        let counted = counted.clone();
        pullbroker_registry::OnRateLimited(Arc::new(move |r: &str| {
            counted.lock().unwrap().push(r.to_string())
        }))
    };
    let client = |s: &Scripted, max_backoff: Duration| {
        Resolver::new(
            RegistryClient::new(ClientSettings {
                max_backoff,
                on_rate_limited: Some(hook.clone()),
                ..settings(s.addr)
            })
            .unwrap(),
            Arc::new(pullbroker_core::keychain::Anonymous),
            ResolverOptions::default(),
        )
    };
    // Retry-After 0 fits the backoff: retried, then given up as rate_limited.
    let s = serve(limited("0")).await;
    let err = client(&s, Duration::from_secs(2))
        .resolve(&image(&s, "v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RateLimited { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(err.class(), "rate_limited");
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 3);
    assert_eq!(counted.lock().unwrap().len(), 3);
    // Retry-After 30 s is longer than any backoff: not retried sooner.
    let s = serve(limited("30")).await;
    let started = std::time::Instant::now();
    let err = client(&s, Duration::from_secs(2))
        .resolve(&image(&s, "v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::RateLimited {
                attempts: 1,
                retry_after: Some(30),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("retry after 30s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 1);
    assert_eq!(counted.lock().unwrap().last().unwrap(), &s.addr.to_string());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let s = serve(|_, _| status(400)).await;
    let err = resolver(&s, ResolverOptions::default())
        .resolve(&image(&s, "v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Protocol { .. }), "{err}");
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn head_without_digest_falls_back_to_get_and_hashes_the_body() {
    let s = serve(|req, _| manifest_response(req.method(), None)).await;
    let got = resolver(&s, ResolverOptions::default())
        .resolve(&image(&s, "v1"))
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), good_digest());
    assert_eq!(
        s.manifest_requests.load(Ordering::SeqCst),
        2,
        "HEAD, then GET"
    );
}

#[tokio::test]
async fn a_body_that_does_not_match_its_digest_is_refused() {
    let lie = format!("sha256:{}", "0".repeat(64));
    let s = serve(move |req, _| manifest_response(req.method(), Some(&lie))).await;
    let client = RegistryClient::new(settings(s.addr)).unwrap();
    let err = client
        .get_manifest(&image(&s, "v1"), "v1", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    // Asking by digest: the body must hash to the digest asked for.
    let s = serve(|req, _| manifest_response(req.method(), None)).await;
    let client = RegistryClient::new(settings(s.addr)).unwrap();
    let other = format!("sha256:{}", "1".repeat(64));
    let err = client
        .get_manifest(&image(&s, "v1"), &other, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn identical_concurrent_resolutions_share_one_request() {
    let s = serve(|req, _| manifest_response(req.method(), Some(&good_digest()))).await;
    let r = resolver(
        &s,
        ResolverOptions {
            cache_ttl: Duration::ZERO,
            ..Default::default()
        },
    );
    let img = image(&s, "v1");
    let all = futures::future::join_all((0..16).map(|_| r.resolve(&img))).await;
    assert!(all
        .iter()
        .all(|x| x.as_ref().unwrap().digest.to_string() == good_digest()));
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 1);
    // With the cache off, a later resolution asks again.
    r.resolve(&img).await.unwrap();
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn digest_cache_serves_repeat_tags_until_ttl() {
    let s = serve(|req, _| manifest_response(req.method(), Some(&good_digest()))).await;
    let r = resolver(&s, ResolverOptions::default());
    let first = r.resolve(&image(&s, "v1")).await.unwrap();
    let second = r.resolve(&image(&s, "v1")).await.unwrap();
    assert!(first.from_registry && !second.from_registry);
    assert_eq!(s.manifest_requests.load(Ordering::SeqCst), 1);
    r.resolve(&image(&s, "v2")).await.unwrap();
    assert_eq!(
        s.manifest_requests.load(Ordering::SeqCst),
        2,
        "another tag is another request"
    );
}

#[tokio::test]
async fn a_rejected_token_is_renewed_once() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let t = tokens.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let realm = format!("http://{addr}/token");
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (t, realm) = (t.clone(), realm.clone());
        async move {
            let challenge = format!(r#"Bearer realm="{realm}",service="svc""#);
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match req.uri().path() {
                "/token" => {
                    let n = t.fetch_add(1, Ordering::SeqCst);
                    Response::new(Body::from(format!(
                        r#"{{"token":"tok-{n}","expires_in":300}}"#
                    )))
                }
                "/v2/" => Response::builder()
                    .status(401)
                    .header("www-authenticate", challenge)
                    .body(Body::empty())
                    .unwrap(),
                // The first token is "revoked": only tok-1 is accepted.
                _ if auth == "Bearer tok-1" => {
                    manifest_response(req.method(), Some(&good_digest()))
                }
                _ => Response::builder()
                    .status(401)
                    .header(
                        "www-authenticate",
                        format!(r#"{challenge},error="invalid_token""#),
                    )
                    .body(Body::empty())
                    .unwrap(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = RegistryClient::new(ClientSettings {
        plain_http: vec![addr.to_string()],
        ..Default::default()
    })
    .unwrap();
    let r = Resolver::new(
        client,
        Arc::new(pullbroker_core::keychain::Anonymous),
        ResolverOptions::default(),
    );
    let img = Reference::parse(&format!("{addr}/demo/app:v1")).unwrap();
    assert_eq!(
        r.resolve(&img).await.unwrap().digest.to_string(),
        good_digest()
    );
    assert_eq!(tokens.load(Ordering::SeqCst), 2);
    // A token the registry keeps refusing is an error, not a loop.
    let img = Reference::parse(&format!("{addr}/other/app:v1")).unwrap();
    let err = r.resolve(&img).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("invalid_token"), "{err}");
    assert_eq!(tokens.load(Ordering::SeqCst), 4);
}

/// A token endpoint answering absurd lifetimes (`expires_in` near `i64::MAX`)
/// used to overflow the cache's clock arithmetic inside the shared token
/// fetch, and the poisoned single-flight then failed every later request for
/// that registry: now the same image resolves ten times in a row (digest
/// cache off, so each goes to the registry).
#[tokio::test]
async fn absurd_token_lifetimes_never_poison_later_requests() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let realm = format!("http://{addr}/token");
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let realm = realm.clone();
        async move {
            let bearer = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
            match req.uri().path() {
                "/token" => Response::new(Body::from(format!(
                    r#"{{"token":"tok","expires_in":{}}}"#,
                    i64::MAX
                ))),
                _ if bearer && req.uri().path() != "/v2/" => {
                    manifest_response(req.method(), Some(&good_digest()))
                }
                _ => Response::builder()
                    .status(401)
                    .header(
                        "www-authenticate",
                        format!(r#"Bearer realm="{realm}",service="svc""#),
                    )
                    .body(Body::empty())
                    .unwrap(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = RegistryClient::new(ClientSettings {
        plain_http: vec![addr.to_string()],
        ..Default::default()
    })
    .unwrap();
    let r = Resolver::new(
        client,
        Arc::new(pullbroker_core::keychain::Anonymous),
        ResolverOptions {
            cache_ttl: Duration::ZERO,
            ..Default::default()
        },
    );
    let img = Reference::parse(&format!("{addr}/demo/app:v1")).unwrap();
    for i in 0..10 {
        assert_eq!(
            r.resolve(&img).await.unwrap().digest.to_string(),
            good_digest(),
            "request {i}"
        );
    }
}

/// A registry's `/v2/` answer is trusted for `endpoint_ttl`, then asked
/// again: one that switched to token auth (another realm) is followed.
#[tokio::test]
async fn the_endpoint_is_asked_again_once_its_ttl_passes() {
    let pings = Arc::new(AtomicUsize::new(0));
    let p = pings.clone();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let p = p.clone();
        async move {
            if req.uri().path() == "/v2/" {
                p.fetch_add(1, Ordering::SeqCst);
                return Response::new(Body::empty());
            }
            manifest_response(req.method(), Some(&good_digest()))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let reference: Reference = format!("{addr}/demo/app:v1").parse().unwrap();
    for (ttl, expected) in [(Duration::from_secs(600), 1), (Duration::ZERO, 3)] {
        pings.store(0, Ordering::SeqCst);
        let client = RegistryClient::new(ClientSettings {
            endpoint_ttl: ttl,
            ..settings(addr)
        })
        .unwrap();
        for _ in 0..3 {
            client
                .head_manifest(&reference, &[pullbroker_core::Credential::Anonymous])
                .await
                .unwrap();
        }
        assert_eq!(pings.load(Ordering::SeqCst), expected, "ttl {ttl:?}");
    }
}
