//! The canary: run every broker flow — successes and failures — with
//! recognisable secret values, and assert none of them appears in any log
//! line (at debug level, every crate), error body, admission response, or metric.

mod support;

use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::logs::capture_all;
use pullbroker_testenv::skopeo;
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_metrics() {
    let capture = capture_all(
        "debug,pullbroker_broker=trace,pullbroker_credentials=trace,pullbroker_registry=trace",
    );

    let s = start().await;
    let sa = s.issuer.token("team-a", "app", AUDIENCE);
    let foreign = TestIssuer::rsa(KUBE_ISSUER).token("team-a", "app", AUDIENCE);
    let wrong_password = "wrong-CANARY-d00d";
    let mut observed: Vec<String> = Vec::new(); // everything that is not a credential hand-out

    // Exchange: success (the response carries the credential by design), then failures.
    let (status, ok) = exchange(&s.url, &sa, &s.image("demo/app:v1")).await;
    assert_eq!(status, 200);
    let broker_password = ok["password"].as_str().unwrap().to_string();
    let (_, static_ok) = exchange(&s.url, &sa, "static.example/x:1").await;
    assert_eq!(static_ok["password"], STATIC_PASSWORD);
    for (token, image) in [
        (&foreign, s.image("demo/app:v1")),
        (&sa, s.image("other/app:v1")),
        (&sa, "UPPER/case".to_string()),
    ] {
        let (status, body) = exchange(&s.url, token, &image).await;
        assert_ne!(status, 200);
        observed.push(body.to_string());
    }
    // The token in the wrong place of the body.
    let resp = http()
        .post(format!("{}/v1/exchange", s.url))
        .json(&json!({"token": {"nested": sa}, "image": 1}))
        .send()
        .await
        .unwrap();
    observed.push(resp.text().await.unwrap());

    // /token: success with broker credential and SA token, failures.
    let mut registry_tokens = Vec::new();
    for password in [broker_password.as_str(), sa.as_str()] {
        let resp = get_token(&s.url, "u", password, "repository:demo/app:pull").await;
        let body: Value = resp.json().await.unwrap();
        registry_tokens.push(body["token"].as_str().unwrap().to_string());
    }
    for password in [wrong_password, foreign.as_str()] {
        let resp = get_token(&s.url, "u", password, "repository:demo/app:pull").await;
        assert_eq!(resp.status().as_u16(), 401);
        observed.push(resp.text().await.unwrap());
    }
    let resp = http()
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "u"),
            ("password", wrong_password),
            ("service", SERVICE),
            ("scope", "repository:demo/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    observed.push(resp.text().await.unwrap());

    // A real client through the whole flow, and resolve-on-behalf.
    let (image, p) = (s.image("demo/app:v1"), broker_password.clone());
    blocking(move || skopeo::digest(&image, Some(("pullbroker", &p))))
        .await
        .unwrap();
    let controller = s.issuer.token("knative-serving", "controller", AUDIENCE);
    let resp = http()
        .post(format!("{}/v1/resolve", s.url))
        .bearer_auth(&controller)
        .json(&json!({"namespace": "team-b", "images": [s.image("demo/app:v1")]}))
        .send()
        .await
        .unwrap();
    observed.push(resp.text().await.unwrap());
    let resp = http()
        .post(format!("{}/v1/resolve", s.url))
        .bearer_auth(&controller)
        .json(&json!({"namespace": "team-a", "images": [s.image("demo/app:v1")]}))
        .send()
        .await
        .unwrap();
    observed.push(resp.text().await.unwrap());
    // Admission: a pin through the token-issuer credential, and a Deployment
    // whose image no grant covers.
    for (image, sa, pinned) in [
        (s.image("demo/app:v1"), "app", true),
        (s.image("other/app:v1"), "app", false),
    ] {
        let mut review = pullbroker_testenv::admission::review(
            "pod-create-by-user",
            "team-a",
            &[(pullbroker_testenv::admission::WEB, &image)],
        );
        pullbroker_testenv::admission::set_service_account(&mut review, "/spec", sa);
        let resp = http()
            .post(format!("{}/v1/admission/pin?timeout=10s", s.url))
            .json(&review)
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        assert_eq!(text.contains("\"patch\""), pinned, "{text}");
        observed.push(text);
    }
    observed.push(metrics(&s.url).await);
    observed.push(
        http()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let logs = capture.text();
    assert!(
        logs.contains("\"allowed\":true") && logs.contains("\"allowed\":false"),
        "audit events were captured"
    );
    let signature = |jwt: &str| jwt.rsplit('.').next().unwrap().to_string();
    let mut canaries = vec![
        sa.clone(),
        signature(&sa),
        foreign.clone(),
        signature(&foreign),
        controller.clone(),
        broker_password.clone(),
        broker_password.rsplit('.').next().unwrap().to_string(),
        STATIC_PASSWORD.to_string(),
        wrong_password.to_string(),
    ];
    canaries.extend(registry_tokens.iter().cloned());
    canaries.extend(registry_tokens.iter().map(|t| signature(t)));
    for canary in &canaries {
        assert!(
            !logs.contains(canary.as_str()),
            "a secret reached the log: …{}…",
            &canary[..8.min(canary.len())]
        );
        for text in &observed {
            assert!(
                !text.contains(canary.as_str()),
                "a secret reached a response: {text}"
            );
        }
    }
}
