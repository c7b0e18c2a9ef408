//! The broker's limits: beyond `maxConcurrentRequests` a request is answered
//! 503 at once (probes still answer), and one that outlives `requestTimeout`
//! is answered 503 and its handler dropped (an exec source's run goes on in
//! the refresher's own task, for the callers that follow). The slow work is a real exec source
//! that waits until the test releases it, so nothing here depends on timing
//! beyond the timeout itself.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pullbroker_broker::{config, Broker};
use pullbroker_registry::ClientSettings;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use support::metrics;

struct Running {
    url: String,
    token: String,
    dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(limits: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::ec(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks()).unwrap();
    std::fs::create_dir(dir.path().join("sources")).unwrap();
    let source = dir.path().join("sources/slow");
    std::fs::write(&source, support::SLOW_SOURCE).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("broker.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: b}}
spec:
  insecurePlainHttp: true
  execSourceDir: sources
  limits: {limits}
  serviceAccountIssuer: {{issuer: {KUBE_ISSUER}, jwksFile: jwks.json}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: cloud}}
spec:
  registries: [r.example]
  source: {{exec: {{command: slow}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: team-a}}
spec:
  credential: cloud
  subjects: {{namespaces: [team-a], serviceAccounts: [app]}}
  repositories: ['**']
  purposes: [pull]
"#
        ),
    )
    .unwrap();
    let broker = Broker::new(
        config::load(&path).unwrap(),
        Some(path),
        ClientSettings::default(),
        None,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        broker
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
    Running {
        url,
        token: issuer.token("team-a", "app", "pullbroker"),
        dir,
        server,
    }
}

async fn exchange(r: &Running) -> reqwest::Response {
    http()
        .post(format!("{}/v1/exchange", r.url))
        .json(&serde_json::json!({"token": r.token, "image": "r.example/apps/web:v1"}))
        .send()
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    // Outlives the 40 s requestTimeout below, so the broker, not the client,
    // ends a held request; still bounded, so a hung broker fails the test.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(45))
        .build()
        .unwrap()
}

async fn metric(r: &Running, line_start: &str) -> Option<String> {
    metrics(&r.url)
        .await
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

fn release(dir: &Path) {
    std::fs::write(dir.join("sources/release"), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_refused_at_once_and_probes_still_answer() {
    let r = start("{maxConcurrentRequests: 2, requestTimeout: 40s}").await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (url, token) = (r.url.clone(), r.token.clone());
            tokio::spawn(async move {
                let resp = http()
                    .post(format!("{url}/v1/exchange"))
                    .json(&serde_json::json!({"token": token, "image": "r.example/apps/web:v1"}))
                    .send()
                    .await
                    .unwrap();
                resp.status().as_u16()
            })
        })
        .collect();
    // Both are inside the limit, waiting for the exec source.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&r, "pullbroker_in_flight_requests ")
        .await
        .as_deref()
        != Some("pullbroker_in_flight_requests 2")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "two requests never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let third = exchange(&r).await;
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["class"], "unavailable", "{body}");
    let healthz = http()
        .get(format!("{}/healthz", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200, "probes are outside the limit");
    assert_eq!(
        metric(
            &r,
            r#"pullbroker_limited_requests_total{reason="overloaded"}"#
        )
        .await
        .as_deref(),
        Some(r#"pullbroker_limited_requests_total{reason="overloaded"} 1"#)
    );
    // The refusal is an exchange answered 503, counted as any answer is.
    assert_eq!(
        metric(
            &r,
            r#"pullbroker_requests_total{endpoint="exchange",code="503"}"#
        )
        .await
        .as_deref(),
        Some(r#"pullbroker_requests_total{endpoint="exchange",code="503"} 1"#)
    );

    release(r.dir.path());
    for h in held {
        assert_eq!(
            h.await.unwrap(),
            200,
            "the held requests complete once released"
        );
    }
    assert_eq!(
        metric(&r, "pullbroker_in_flight_requests ")
            .await
            .as_deref(),
        Some("pullbroker_in_flight_requests 0")
    );
    assert_eq!(exchange(&r).await.status(), 200, "capacity is back");
    // Each allow is counted for its grant and purpose (the refused one is no
    // decision at all), and when it happened, for `audit --broker-url`.
    assert_eq!(
        metric(&r, "pullbroker_grant_allows_total").await.as_deref(),
        Some(r#"pullbroker_grant_allows_total{grant="team-a",purpose="pull"} 3"#)
    );
    let last = metric(&r, "pullbroker_grant_last_allowed_timestamp_seconds{")
        .await
        .unwrap();
    let started = metric(&r, "pullbroker_started_timestamp_seconds ")
        .await
        .unwrap();
    let value = |line: &str| -> i64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(value(&last) >= value(&started), "{last} / {started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_is_answered_503_and_its_work_dropped() {
    let r = start("{requestTimeout: 1s}").await;
    let resp = exchange(&r).await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "the request took too long",
        "{body}"
    );
    assert_eq!(
        metric(&r, r#"pullbroker_limited_requests_total{reason="timeout"}"#)
            .await
            .as_deref(),
        Some(r#"pullbroker_limited_requests_total{reason="timeout"} 1"#)
    );
    assert_eq!(
        metric(
            &r,
            r#"pullbroker_requests_total{endpoint="exchange",code="503"}"#
        )
        .await
        .as_deref(),
        Some(r#"pullbroker_requests_total{endpoint="exchange",code="503"} 1"#),
        "a timed-out request is counted too"
    );
    assert_eq!(
        metric(&r, "pullbroker_in_flight_requests ")
            .await
            .as_deref(),
        Some("pullbroker_in_flight_requests 0"),
        "the timed-out handler was dropped"
    );
    // The dropped run left nothing behind: released, the source answers.
    release(r.dir.path());
    assert_eq!(exchange(&r).await.status(), 200);
}

#[test]
fn limits_out_of_range_are_refused_with_their_name() {
    for (limits, expect) in [
        ("{requestTimeout: 0s}", "limits.requestTimeout"),
        ("{requestTimeout: 2h}", "between 1s and 10m"),
        ("{maxConcurrentRequests: 0}", "limits.maxConcurrentRequests"),
        ("{burst: 3}", "unknown field"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("jwks.json"),
            TestIssuer::ec(KUBE_ISSUER).jwks(),
        )
        .unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(
            &path,
            format!("apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  limits: {limits}\n  serviceAccountIssuer: {{issuer: {KUBE_ISSUER}, jwksFile: jwks.json}}\n"),
        )
        .unwrap();
        let problems = match config::load(&path) {
            Err(pullbroker_broker::Error::Invalid { problems, .. }) => problems,
            Err(e) => panic!("{limits}: refused for another reason: {e}"),
            Ok(_) => panic!("{limits} was accepted"),
        };
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{limits}: {problems:?}"
        );
    }
}
