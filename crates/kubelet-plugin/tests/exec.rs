//! The built plugin, exec'd exactly as kubelet does (request JSON on stdin,
//! args and env from the CredentialProviderConfig), against a running broker
//! in front of a real token-auth registry.

#[path = "../../broker/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pullbroker_credentials::mint::BrokerCredential;
use pullbroker_testenv::containerd::Containerd;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::{process, skopeo};
use serde_json::Value;
use support::*;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// Runs the plugin with `stdin`, `args` and `env`, bounded to 20 s.
fn exec(stdin: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullbroker-credential-provider"));
    cmd.args(args).env_clear().envs(env.iter().copied());
    // A plugin that fails on its arguments exits before reading stdin: the helper allows that.
    let out = process::run_with_stdin(&mut cmd, stdin.as_bytes(), Duration::from_secs(20));
    (out, started.elapsed())
}

fn request(api: &str, image: &str, token: Option<&str>) -> String {
    let mut v = serde_json::json!({"apiVersion": format!("credentialprovider.kubelet.k8s.io/{api}"), "kind": "CredentialProviderRequest", "image": image});
    if let Some(t) = token {
        v["serviceAccountToken"] = t.into();
    }
    v.to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_responses_for_every_api_version() {
    let s = start().await;
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    for api in ["v1", "v1beta1", "v1alpha1"] {
        let req = std::fs::read_to_string(format!("{GOLDEN}/{api}-request.json"))
            .unwrap()
            .replace("{{IMAGE}}", &s.image("demo/app:v1"))
            .replace("{{TOKEN}}", &token);
        let (url, req2) = (s.url.clone(), req.clone());
        let (out, _) = blocking(move || exec(&req2, &[], &[("PULLBROKER_URL", &url)])).await;
        assert!(out.status.success(), "{api}: {}", stderr(&out));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = format!("{}/demo/app", s.host());
        let password = got["auth"][&key]["password"]
            .as_str()
            .unwrap_or_else(|| panic!("{api}: {got}"))
            .to_string();
        assert!(BrokerCredential::is_one(&password), "a broker credential");
        let duration = got["cacheDuration"].as_str().unwrap().to_string();
        let secs: u64 = duration.trim_end_matches('s').parse().unwrap();
        assert!(
            (500..=540).contains(&secs),
            "10 min credential minus the margin: {duration}"
        );
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{GOLDEN}/{api}-response.json"))
                .unwrap()
                .replace("{{REGISTRY}}", &s.host())
                .replace("{{PASSWORD}}", &password)
                .replace("{{CACHE_DURATION}}", &duration),
        )
        .unwrap();
        assert_eq!(got, want, "{api}");
        assert!(!stderr(&out).contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_credentials_pull_with_skopeo_and_containerd_until_the_grant_goes() {
    let s = start().await;
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let run = |image: String| {
        let (url, token) = (s.url.clone(), token.clone());
        blocking(move || {
            exec(
                &request("v1", &image, Some(&token)),
                &["--broker-url", &url, "--timeout-seconds", "5"],
                &[],
            )
        })
    };
    let (out, _) = run(s.image("demo/app:v1")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = &resp["auth"][format!("{}/demo/app", s.host())];
    let (user, pass) = (
        auth["username"].as_str().unwrap().to_string(),
        auth["password"].as_str().unwrap().to_string(),
    );

    let (image, u, p) = (s.image("demo/app:v1"), user.clone(), pass.clone());
    assert_eq!(
        blocking(move || skopeo::digest(&image, Some((&u, &p))))
            .await
            .unwrap(),
        s.layout.tags["v1"]
    );
    let (image, u, p) = (s.image("other/app:v1"), user.clone(), pass.clone());
    assert!(
        blocking(move || skopeo::digest(&image, Some((&u, &p))))
            .await
            .is_err(),
        "not granted"
    );

    let containerd = std::sync::Arc::new(blocking(Containerd::start).await.unwrap());
    let (c, image, u, p) = (
        containerd.clone(),
        s.image("demo/app:v1"),
        user.clone(),
        pass.clone(),
    );
    let pulled = blocking(move || c.pull(&image, Some((&u, &p)))).await;
    assert!(pulled.is_ok(), "{pulled:?}");
    let (c, image, u, p) = (containerd.clone(), s.image("other/app:v1"), user, pass);
    assert!(blocking(move || c.pull(&image, Some((&u, &p))))
        .await
        .is_err());

    // The plugin asked for another repository: the broker denies, the plugin fails.
    let (out, _) = run(s.image("other/app:v1")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("denied by pullbroker"),
        "{}",
        stderr(&out)
    );

    // The grant is removed: the next exec is refused.
    s.write_config("");
    s.broker.reload().await.unwrap();
    let (out, _) = run(s.image("demo/app:v1")).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("denied by pullbroker") && err.contains("no PullGrant allows pull"),
        "{err}"
    );
    assert!(!err.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_exits_non_zero_with_one_token_free_line() {
    let s = start().await;
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let image = s.image("demo/app:v1");
    let refused = pullbroker_testenv::net::RefusedPort::new();
    let down = format!("http://{}", refused.host());
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let foreign = TestIssuer::rsa(KUBE_ISSUER).token("team-a", "app", AUDIENCE);
    let wrong_aud = s.issuer.token("team-a", "app", "registry.example");
    let other_ns = s.issuer.token("team-b", "app", AUDIENCE);

    // (name, stdin, args, expected stderr fragment, secret that must not appear)
    type Case<'a> = (&'a str, String, Vec<String>, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("broker down", request("v1", &image, Some(&token)), vec!["--broker-url".into(), down], "cannot reach pullbroker", Some(&token)),
        ("broker hangs", request("v1", &image, Some(&token)), vec!["--broker-url".into(), hung_url, "--timeout-seconds".into(), "1".into()], "did not answer within 1s", Some(&token)),
        ("denied", request("v1", &image, Some(&other_ns)), vec!["--broker-url".into(), s.url.clone()], "denied by pullbroker", Some(&other_ns)),
        ("token of another cluster", request("v1", &image, Some(&foreign)), vec!["--broker-url".into(), s.url.clone()], "refused the service-account token (unknown_key)", Some(&foreign)),
        ("token for another audience", request("v1", &image, Some(&wrong_aud)), vec!["--broker-url".into(), s.url.clone()], "is not for audience \"pullbroker\"", Some(&wrong_aud)),
        ("no token", request("v1", &image, None), vec!["--broker-url".into(), s.url.clone()], "carries no service-account token", None),
        ("malformed JSON", format!("{{\"apiVersion\": \"credentialprovider.kubelet.k8s.io/v1\", \"serviceAccountToken\": \"{token}\""), vec!["--broker-url".into(), s.url.clone()], "not a valid CredentialProviderRequest", Some(&token)),
        ("unknown apiVersion", request("v2", &image, Some(&token)), vec!["--broker-url".into(), s.url.clone()], "unsupported apiVersion", Some(&token)),
        ("bad image", request("v1", "Not/Valid:", Some(&token)), vec!["--broker-url".into(), s.url.clone()], "invalid_reference", Some(&token)),
        ("no broker URL", request("v1", &image, Some(&token)), vec![], "--broker-url", Some(&token)),
    ];
    for (name, stdin, args, want, secret) in cases {
        let (out, took) = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            exec(&stdin, &args, &[])
        })
        .await;
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{name} succeeded");
        assert!(
            out.stdout.is_empty(),
            "{name}: no partial response on stdout"
        );
        assert!(err.contains(want), "{name}: {err}");
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
        if let Some(t) = secret {
            assert!(!err.contains(t), "{name}: the token reached stderr");
            assert!(
                !err.contains(t.rsplit('.').next().unwrap()),
                "{name}: the token's signature reached stderr"
            );
        }
        if name != "no broker URL" {
            assert_eq!(err.trim_end().lines().count(), 1, "{name}: one line: {err}");
        }
    }
    drop(hung);

    // Explicitly allowed: no token → no credentials (kubelet tries others), nothing cached.
    let (url, req) = (s.url.clone(), request("v1beta1", &image, None));
    let (out, _) =
        blocking(move || exec(&req, &["--broker-url", &url, "--allow-missing-token"], &[])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resp["auth"], serde_json::json!({}));
    assert_eq!(resp["cacheDuration"], "0s");
    assert_eq!(
        resp["apiVersion"],
        "credentialprovider.kubelet.k8s.io/v1beta1"
    );
}

/// The plugin against the broker's TLS listener: trusting the broker's CA
/// (`--ca-file`) it gets credentials; without it, or told to use plain HTTP
/// to a non-loopback broker, it fails with one token-free line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_https_with_the_broker_ca_and_refuses_plain_http_off_loopback() {
    let s = start().await;
    let made = pullbroker_broker::tls::make_serving_cert(&["127.0.0.1".into()], 1).unwrap();
    let tls = pullbroker_broker::config::TlsSpec {
        cert_file: s.dir.path().join("serving.crt"),
        key_file: s.dir.path().join("serving.key"),
    };
    std::fs::write(&tls.cert_file, &made.cert_pem).unwrap();
    std::fs::write(&tls.key_file, &made.key_pem).unwrap();
    let ca = s.dir.path().join("ca.crt");
    std::fs::write(&ca, &made.ca_pem).unwrap();
    let cert = pullbroker_broker::tls::ReloadingCert::load(&tls).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = format!("https://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        s.broker
            .clone()
            .serve_tls(listener, cert, std::future::pending()),
    );
    let token = s.issuer.token("team-a", "app", AUDIENCE);
    let req = request("v1", &s.image("demo/app:v1"), Some(&token));
    let run = |args: Vec<String>| {
        let req = req.clone();
        blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            exec(&req, &args, &[])
        })
    };
    let (ok, _) = run(vec![
        "--broker-url".into(),
        https.clone(),
        "--ca-file".into(),
        ca.display().to_string(),
    ])
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let resp: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(BrokerCredential::is_one(
        resp["auth"][format!("{}/demo/app", s.host())]["password"]
            .as_str()
            .unwrap()
    ));

    let (untrusted, _) = run(vec!["--broker-url".into(), https.clone()]).await;
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(untrusted.stdout.is_empty());
    assert_eq!(
        stderr(&untrusted).lines().count(),
        1,
        "{}",
        stderr(&untrusted)
    );
    assert!(!stderr(&untrusted).contains(&token));

    let (plain, _) = run(vec![
        "--broker-url".into(),
        "http://pullbroker.example:8480".into(),
    ])
    .await;
    assert_eq!(plain.status.code(), Some(1));
    assert!(
        stderr(&plain).contains("must be https://"),
        "{}",
        stderr(&plain)
    );
    server.abort();
}
