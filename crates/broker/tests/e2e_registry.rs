//! The broker end to end: credentials from `/v1/exchange` work for skopeo
//! (GET token flow) and containerd's ctr (POST password grant) against a real
//! token-auth docker-registry — for granted repositories only.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use pullbroker_credentials::keys::SigningKey;
use pullbroker_credentials::mint::{self, Access, BrokerCredential};
use pullbroker_testenv::containerd::Containerd;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::skopeo;
use serde_json::{json, Value};
use support::*;

const ACCEPT: &str = pullbroker_registry::manifest::ACCEPT;

fn now() -> i64 {
    pullbroker_testenv::issuer::now()
}

async fn exchange_ok(s: &Setup, image: &str) -> (String, String) {
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let (status, body) = exchange(&s.url, &token, image).await;
    assert_eq!(status, 200, "{body}");
    (
        body["username"].as_str().unwrap().to_string(),
        body["password"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_granted_repositories_only() {
    let s = start().await;
    let (user, pass) = exchange_ok(&s, &s.image("demo/app:v1")).await;
    assert_eq!(user, "pullbroker");
    assert!(pullbroker_credentials::mint::BrokerCredential::is_one(
        &pass
    ));
    let want = s.layout.tags["v1"].clone();
    for repo in ["demo/app:v1", "demo/sub/deep:v1"] {
        let image = s.image(repo);
        let (u, p) = (user.clone(), pass.clone());
        let got = blocking(move || skopeo::digest(&image, Some((&u, &p)))).await;
        assert_eq!(got.unwrap(), want, "{repo}");
    }
    // Same credential, a repository outside the grant: the registry refuses.
    let image = s.image("other/app:v1");
    let (u, p) = (user.clone(), pass.clone());
    let err = blocking(move || skopeo::digest(&image, Some((&u, &p))))
        .await
        .unwrap_err();
    assert!(
        err.contains("unauthorized") || err.contains("denied"),
        "{err}"
    );
    assert!(!err.contains(&pass));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_with_the_password_grant() {
    let s = start().await;
    let (user, pass) = exchange_ok(&s, &s.image("demo/app:v1")).await;
    let containerd = blocking(Containerd::start).await.unwrap();
    let containerd = std::sync::Arc::new(containerd);
    let (c, image, u, p) = (
        containerd.clone(),
        s.image("demo/app:v1"),
        user.clone(),
        pass.clone(),
    );
    let out = blocking(move || c.pull(&image, Some((&u, &p)))).await;
    assert!(out.is_ok(), "ctr pull failed: {out:?}");
    let (c, image) = (containerd.clone(), s.image("demo/app:v1"));
    let listed = blocking(move || c.ctr(&["images", "ls", "-q"]))
        .await
        .unwrap();
    assert!(listed.contains(&image), "{listed}");
    let (c, image, u, p) = (
        containerd.clone(),
        s.image("other/app:v1"),
        user,
        pass.clone(),
    );
    let err = blocking(move || c.pull(&image, Some((&u, &p))))
        .await
        .unwrap_err();
    assert!(
        err.contains("401") || err.contains("nauthorized") || err.contains("denied"),
        "{err}"
    );
    assert!(!err.contains(&pass));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_refuses_foreign_issuers_audiences_and_other_namespaces() {
    let s = start().await;
    let image = s.image("demo/app:v1");
    let other_cluster = TestIssuer::rsa(KUBE_ISSUER);
    let (status, body) = exchange(
        &s.url,
        &other_cluster.token("team-a", "app", AUDIENCE),
        &image,
    )
    .await;
    assert_eq!(
        (status, body["error"]["class"].as_str()),
        (401, Some("unknown_key")),
        "{body}"
    );
    let (status, body) = exchange(
        &s.url,
        &s.issuer.token("team-a", "app", "some-other-audience"),
        &image,
    )
    .await;
    assert_eq!(
        (status, body["error"]["class"].as_str()),
        (401, Some("audience")),
        "{body}"
    );
    // A valid token of another namespace's service account.
    let (status, body) = exchange(&s.url, &s.issuer.token("team-b", "app", AUDIENCE), &image).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace team-b is not a subject"),
        "{body}"
    );
    // Malformed input changes nothing and says why.
    let (status, body) = exchange(
        &s.url,
        &s.issuer.token("team-a", "app", AUDIENCE),
        "Not/Valid",
    )
    .await;
    assert_eq!(
        (status, body["error"]["class"].as_str()),
        (400, Some("invalid_reference")),
        "{body}"
    );
    let resp = http()
        .post(format!("{}/v1/exchange", s.url))
        .body("{\"token\": 5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

/// Registry-level checks: what the registry itself refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refuses_expired_foreign_and_misaddressed_tokens() {
    let s = start().await;
    let key = SigningKey::from_pem(&s.key_pem, &s.cert_pem).unwrap();
    let (other_key_pem, other_cert_pem) = SigningKey::generate("not trusted").unwrap();
    let other = SigningKey::from_pem(&other_key_pem, &other_cert_pem).unwrap();
    let access = [Access {
        kind: "repository".into(),
        name: "demo/app".into(),
        actions: vec!["pull".into()],
    }];
    let head = |token: String| {
        let url = format!("http://{}/v2/demo/app/manifests/v1", s.host());
        async move {
            http()
                .head(url)
                .header("accept", ACCEPT)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let t = now();
    let good =
        mint::registry_token(&key, REGISTRY_ISSUER, SERVICE, "x", &access, t, 60, "j1").unwrap();
    assert_eq!(head(good).await, 200, "control: a fresh token works");
    let expired = mint::registry_token(
        &key,
        REGISTRY_ISSUER,
        SERVICE,
        "x",
        &access,
        t - 3600,
        60,
        "j2",
    )
    .unwrap();
    assert_eq!(head(expired).await, 401, "expired");
    let untrusted =
        mint::registry_token(&other, REGISTRY_ISSUER, SERVICE, "x", &access, t, 60, "j3").unwrap();
    assert_eq!(head(untrusted).await, 401, "signed by another key");
    let wrong_aud = mint::registry_token(
        &key,
        REGISTRY_ISSUER,
        "another-registry",
        "x",
        &access,
        t,
        60,
        "j4",
    )
    .unwrap();
    assert_eq!(head(wrong_aud).await, 401, "another audience");
    let wrong_iss =
        mint::registry_token(&key, "someone-else", SERVICE, "x", &access, t, 60, "j5").unwrap();
    assert_eq!(head(wrong_iss).await, 401, "another issuer");

    // An expired broker credential gets no registry token at all.
    let stale = BrokerCredential {
        ns: "team-a".into(),
        sa: "app".into(),
        cred: "corp".into(),
        iat: t - 7200,
        exp: t - 3600,
    }
    .seal(&key);
    let resp = get_token(&s.url, "pullbroker", &stale, "repository:demo/app:pull").await;
    assert_eq!(resp.status().as_u16(), 401);
}

fn access_of(token_response: &Value) -> Value {
    let jwt = token_response["token"].as_str().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        claims["aud"], SERVICE,
        "aud is a string, as registry 2.8 requires"
    );
    assert!(claims["exp"].is_i64() && claims["nbf"].is_i64() && claims["iat"].is_i64());
    claims["access"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_never_widens_scopes() {
    let s = start().await;
    let (user, pass) = exchange_ok(&s, &s.image("demo/app:v1")).await;
    let ask = |scopes: Vec<&'static str>| {
        let (url, user, pass) = (s.url.clone(), user.clone(), pass.clone());
        async move {
            let mut q = vec![("service", SERVICE)];
            q.extend(scopes.into_iter().map(|sc| ("scope", sc)));
            let resp = http()
                .get(format!("{url}/token"))
                .query(&q)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let body: Value = resp.json().await.unwrap();
            assert!(
                body["access_token"] == body["token"],
                "both fields, for containerd and skopeo"
            );
            assert!(
                body["issued_at"].as_str().unwrap().ends_with('Z'),
                "RFC 3339"
            );
            access_of(&body)
        }
    };
    let pull_only = json!([{"type": "repository", "name": "demo/app", "actions": ["pull"]}]);
    assert_eq!(ask(vec!["repository:demo/app:pull,push"]).await, pull_only);
    assert_eq!(ask(vec!["repository:demo/app:*"]).await, pull_only);
    assert_eq!(ask(vec!["repository:demo/app:push"]).await, json!([]));
    assert_eq!(ask(vec!["repository:demo/app:delete"]).await, json!([]));
    assert_eq!(ask(vec!["repository:other/app:pull"]).await, json!([]));
    assert_eq!(ask(vec!["registry:catalog:*"]).await, json!([]));
    assert_eq!(
        ask(vec![
            "repository:demo/app:pull",
            "repository:other/app:pull"
        ])
        .await,
        pull_only,
        "partial grant"
    );
    assert_eq!(
        ask(vec!["repository:demo/app/../other:pull"]).await,
        json!([])
    );
    // The POST password grant, as containerd sends it (scopes space-separated).
    let resp = http()
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "password"),
            ("username", &user),
            ("password", &pass),
            ("service", SERVICE),
            ("client_id", "containerd-client"),
            (
                "scope",
                "repository:demo/app:pull repository:other/app:pull",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(access_of(&resp.json().await.unwrap()), pull_only);
    // Wrong password on POST: 401, so containerd falls back to GET and fails there too.
    let resp = http()
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "pullbroker"),
            ("password", "pbc1.forged.x"),
            ("service", SERVICE),
            ("scope", "repository:demo/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The OAuth2 refresh-token grant, with the broker credential as refresh token.
    let resp = http()
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &pass),
            ("service", SERVICE),
            ("client_id", "containerd-client"),
            ("scope", "repository:demo/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(access_of(&resp.json().await.unwrap()), pull_only);
    let resp = http()
        .post(format!("{}/token", s.url))
        .form(&[("grant_type", "client_credentials"), ("service", SERVICE)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "unsupported grant types are refused"
    );
    // An SA token works as the password too (audience-checked).
    let sa = s.issuer.token("team-a", "app", AUDIENCE);
    let resp = get_token(&s.url, "x", &sa, "repository:demo/app:pull").await;
    assert_eq!(access_of(&resp.json().await.unwrap()), pull_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_grant_revokes_at_the_next_request() {
    let s = start().await;
    let (user, pass) = exchange_ok(&s, &s.image("demo/app:v1")).await;
    s.write_config("");
    s.broker.reload().await.unwrap();
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let (status, body) = exchange(&s.url, &token, &s.image("demo/app:v1")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no PullGrant allows pull"),
        "{body}"
    );
    // The credential issued before: /token re-checks the grants, so it now yields nothing.
    let image = s.image("demo/app:v1");
    let err = blocking(move || skopeo::digest(&image, Some((&user, &pass))))
        .await
        .unwrap_err();
    assert!(
        err.contains("unauthorized") || err.contains("denied"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_on_behalf_is_allowed_only_for_granted_namespaces() {
    let s = start().await;
    let controller = s.issuer.token("knative-serving", "controller", AUDIENCE);
    let resolve = |ns: &'static str, token: String, images: Vec<String>| {
        let url = s.url.clone();
        async move {
            let resp = http()
                .post(format!("{url}/v1/resolve"))
                .bearer_auth(token)
                .json(&json!({"namespace": ns, "images": images}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = resolve(
        "team-a",
        controller.clone(),
        vec![s.image("demo/app:v1"), s.image("other/app:v1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["digest"], s.layout.tags["v1"].as_str());
    assert_eq!(
        body["results"][0]["pinned"],
        format!("{}@{}", s.image("demo/app:v1"), s.layout.tags["v1"])
    );
    assert_eq!(
        body["results"][1]["error"]["class"], "denied",
        "outside the grant's repositories"
    );
    // Confused deputy: resolving for a namespace the controller is not granted for.
    let (_, body) = resolve("team-b", controller, vec![s.image("demo/app:v1")]).await;
    assert_eq!(body["results"][0]["error"]["class"], "denied", "{body}");
    // A workload of team-a is not a resolver for another namespace.
    let (_, body) = resolve(
        "team-b",
        s.issuer.token("team-a", "app", AUDIENCE),
        vec![s.image("demo/app:v1")],
    )
    .await;
    assert_eq!(body["results"][0]["error"]["class"], "denied");
    // A workload resolving in its own namespace needs only the resolve purpose.
    let (_, body) = resolve(
        "team-a",
        s.issuer.token("team-a", "app", AUDIENCE),
        vec![s.image("demo/app:v1")],
    )
    .await;
    assert_eq!(
        body["results"][0]["digest"],
        s.layout.tags["v1"].as_str(),
        "{body}"
    );
    let resp = http()
        .post(format!("{}/v1/resolve", s.url))
        .json(&json!({"namespace": "team-a", "images": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a caller token is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_credentials_are_returned_for_registries_that_do_not_trust_the_broker() {
    let s = start().await;
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let (status, body) = exchange(&s.url, &token, "static.example/tools/jq:1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "static");
    assert_eq!(body["username"], "bot");
    assert_eq!(body["password"], STATIC_PASSWORD);
    assert_eq!(body["authKey"], "static.example/tools/jq");
    assert!(
        body["cacheSeconds"].as_i64().unwrap() <= 15 * 60,
        "capped by the grant's default ttl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_keeps_the_last_good_config_on_a_bad_edit() {
    let s = start().await;
    let watcher = s.broker.spawn_watcher(Duration::from_millis(50));
    let health = || {
        let url = s.url.clone();
        async move {
            http()
                .get(format!("{url}/healthz"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // Wait (bounded) until the watcher reports `pred` on /healthz.
    let wait_for = |pred: fn(&Value) -> bool| async move {
        for _ in 0..400 {
            let h = health().await;
            if pred(&h) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("healthz never reached the expected state");
    };
    assert_eq!(health().await["configGeneration"], 1);
    write_atomically(&s.config_path, "kind: [broken\n");
    let h = wait_for(|h| !h["lastReloadError"].is_null()).await;
    assert!(
        h["lastReloadError"]
            .as_str()
            .unwrap()
            .contains("not valid YAML"),
        "{h}"
    );
    assert_eq!(h["configGeneration"], 1);
    // Still serving the last good configuration.
    exchange_ok(&s, &s.image("demo/app:v1")).await;
    // A good edit that adds a grant for another service account.
    let extra = "apiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {name: builder}\nspec:\n  credential: corp\n  subjects: {namespaces: [team-b], serviceAccounts: [builder]}\n  repositories: [other/app]\n  purposes: [pull]\n";
    s.write_config(&format!("{DEFAULT_GRANTS}---\n{extra}"));
    let h = wait_for(|h| h["configGeneration"] == 2).await;
    assert!(h["lastReloadError"].is_null(), "{h}");
    let (status, _) = exchange(
        &s.url,
        &s.issuer.token("team-b", "builder", AUDIENCE),
        &s.image("other/app:v1"),
    )
    .await;
    assert_eq!(status, 200);
    let page = metrics(&s.url).await;
    assert!(
        page.contains("pullbroker_config_reload_errors_total 1"),
        "{page}"
    );
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_cert_bundle_publishes_the_signing_certificate() {
    let s = start().await;
    let resp = http()
        .get(format!("{}/v1/credentials/corp/rootcertbundle", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), s.cert_pem);
    let resp = http()
        .get(format!("{}/v1/credentials/static/rootcertbundle", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        http()
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

/// Rotation: a new key signs, the previous one is still published and still
/// opens credentials issued before the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_publishes_both_and_signs_with_the_new() {
    let s = start().await;
    let (_, old_pass) = exchange_ok(&s, &s.image("demo/app:v1")).await;
    let (new_key, new_cert) = SigningKey::generate("pullbroker e2e, rotated").unwrap();
    std::fs::create_dir_all(s.dir.path().join("signer-new")).unwrap();
    std::fs::write(s.dir.path().join("signer-new/tls.key"), &new_key).unwrap();
    std::fs::write(s.dir.path().join("signer-new/tls.crt"), &new_cert).unwrap();
    let config = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace(
            "corp-signer: {tls.key: signer/tls.key, tls.crt: signer/tls.crt}",
            "corp-signer: {tls.key: signer-new/tls.key, tls.crt: signer-new/tls.crt}\n    corp-signer-old: {tls.key: signer/tls.key, tls.crt: signer/tls.crt}",
        )
        .replace(
            "signingKeySecretRef: {name: corp-signer}",
            "signingKeySecretRef: {name: corp-signer}\n      previousSigningKeySecretRef: {name: corp-signer-old}",
        );
    std::fs::write(&s.config_path, config).unwrap();
    s.broker.reload().await.unwrap();
    let bundle = http()
        .get(format!("{}/v1/credentials/corp/rootcertbundle", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        bundle.contains(new_cert.trim()) && bundle.contains(s.cert_pem.trim()),
        "both certificates are published"
    );
    assert!(
        bundle.find(new_cert.trim()) < bundle.find(s.cert_pem.trim()),
        "the signing certificate first"
    );
    // The credential from before the rotation still gets a token, signed by the new key.
    let resp = get_token(&s.url, "pullbroker", &old_pass, "repository:demo/app:pull").await;
    let body: Value = resp.json().await.unwrap();
    let header_b64 = body["token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
    assert_eq!(
        header["kid"],
        SigningKey::from_pem(&new_key, &new_cert).unwrap().kid
    );
}

/// With TokenReview on and the API server down, a valid token gets 503
/// (retry), not 401 `revoked`, on `/v1/exchange` and `/token`; the bodies
/// carry no URL of the API server.
#[tokio::test]
async fn token_review_outage_is_503_not_revoked() {
    let refused = pullbroker_testenv::net::RefusedPort::new();
    let dead = refused.host();
    let reviewer: std::sync::Arc<dyn pullbroker_broker::tokenreview::TokenReviewer> =
        std::sync::Arc::new(
            pullbroker_broker::tokenreview::HttpTokenReview::new(
                &format!("http://{dead}"),
                "reviewer-token".to_string().into(),
                None,
            )
            .unwrap(),
        );
    let s = start_with(Some(reviewer)).await;
    let sa = s.issuer.token("team-a", "app", AUDIENCE);
    let (status, body) = exchange(&s.url, &sa, &s.image("demo/app:v1")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["class"], "unavailable");
    assert!(!body.to_string().contains(&dead), "{body}");
    let resp = get_token(&s.url, "u", &sa, "repository:demo/app:pull").await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(!resp.text().await.unwrap().contains(&dead));
}
