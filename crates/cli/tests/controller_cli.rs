//! `pullbroker controller` as an operator runs it: against an API server
//! named by KUBECONFIG (the fake one), it syncs a grant and stops cleanly on
//! SIGTERM, giving up its lease.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pullbroker_testenv::api_log;
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};

fn request(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

fn post(base: &str, path: &str, body: &str) {
    let (status, out) = request(base, "POST", path, body);
    assert!(status < 300, "{path}: {status} {out}");
}

#[test]
fn controller_syncs_and_stops_on_sigterm() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let u = &fake.url;
    let (key, cert) = pullbroker_credentials::keys::SigningKey::generate("cli").unwrap();
    post(
        u,
        "/api/v1/namespaces",
        r#"{"metadata":{"name":"pullbroker-system"}}"#,
    );
    post(
        u,
        "/api/v1/namespaces/pullbroker-system/secrets",
        &serde_json::json!({"metadata": {"name": "signer"},
        "type": "kubernetes.io/tls", "stringData": {"tls.key": key, "tls.crt": cert}})
        .to_string(),
    );
    post(
        u,
        "/apis/pullbroker.dev/v1alpha1/registrycredentials",
        r#"{"apiVersion":"pullbroker.dev/v1alpha1","kind":"RegistryCredential","metadata":{"name":"corp"},"spec":{"registries":["registry.corp.example"],"source":{"tokenIssuer":{"signingKeySecretRef":{"name":"signer"},"service":"s","issuer":"i"}}}}"#,
    );
    post(u, "/api/v1/namespaces", r#"{"metadata":{"name":"team-a"}}"#);
    post(
        u,
        "/api/v1/namespaces/team-a/serviceaccounts",
        r#"{"metadata":{"name":"app"}}"#,
    );
    post(
        u,
        "/apis/pullbroker.dev/v1alpha1/pullgrants",
        r#"{"apiVersion":"pullbroker.dev/v1alpha1","kind":"PullGrant","metadata":{"name":"team-a"},"spec":{"credential":"corp","subjects":{"namespaces":["team-a"],"serviceAccounts":["app"]},"repositories":["**"],"purposes":["sync"]}}"#,
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_as(api_log::CONTROLLER)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args([
            "controller",
            "--identity",
            "cli-test",
            "--health-address",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Log lines are read on a thread to the end, so the pipe never fills.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let health = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("controller logs its health address");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        logs.push(line);
        if json["message"] == "health and metrics" {
            break format!("http://{}", json["address"].as_str().unwrap());
        }
    };
    let start = Instant::now();
    loop {
        let (status, sa) = request(
            u,
            "GET",
            "/api/v1/namespaces/team-a/serviceaccounts/app",
            "",
        );
        if status == 200 && sa.contains("pullbroker-team-a") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not synced: {sa}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "controller exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        request(
            u,
            "GET",
            "/api/v1/namespaces/team-a/secrets/pullbroker-team-a",
            ""
        )
        .0,
        200
    );
    // Probes and metrics: alive, ready as the leader, and the writes counted.
    assert_eq!(request(&health, "GET", "/healthz", "").0, 200);
    assert_eq!(
        request(&health, "GET", "/readyz", ""),
        (200, "leading".to_string())
    );
    let (_, metrics) = request(&health, "GET", "/metrics", "");
    for needle in [
        "pullbroker_controller_leader 1\n",
        "pullbroker_controller_writes_total{kind=\"Secret\",verb=\"apply\"} 1\n",
        "pullbroker_controller_writes_total{kind=\"ServiceAccount\",verb=\"patch\"} 1\n",
        "pullbroker_controller_secrets_issued_total{reason=\"new\"} 1\n",
        "pullbroker_controller_rotation_lag_seconds 0\n",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    // With the API server gone the leader steps down: not ready, saying why.
    fake.set_down(true);
    let start = Instant::now();
    loop {
        let (status, why) = request(&health, "GET", "/readyz", "");
        if status == 503 {
            assert!(why.contains("cannot reach"), "{why}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still ready: {why}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back: the same process leads again, then stops cleanly.
    fake.set_down(false);
    let start = Instant::now();
    while request(&health, "GET", "/readyz", "") != (200, "leading".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(60), "never led again");
        std::thread::sleep(Duration::from_millis(100));
    }
    pullbroker_testenv::process::terminate(&child);
    let status = child.wait().unwrap();
    logs.extend(rx.iter());
    let logs = logs.join("\n");
    assert!(status.success(), "exit after SIGTERM: {status}\n{logs}");
    assert!(logs.contains("\"leading\""), "JSON logs: {logs}");
    let (_, lease) = request(
        u,
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/pullbroker-system/leases/pullbroker-controller",
        "",
    );
    let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
}

#[test]
fn controller_help_teaches_and_bad_flags_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args(["controller", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "allowUpstreamCopy",
        "--rotate-after",
        "--recreate-stuck-pods",
        "--exec-source-dir",
        "Lease",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args(["controller", "--rotate-after", "0.99"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0.1 and 0.9"));
}

/// `pullbroker serve` with `policySource: kubernetes` reviews tokens over its
/// cluster connection by default: a deleted pod's or service account's token
/// is refused within ~15 s (the API server caches successes ~10 s, the broker
/// 5 s), TokenReview calls stay bounded by the cache, and with the API down a
/// never-reviewed token gets 503, not 401.
#[test]
fn serve_reviews_tokens_over_the_cluster_connection_by_default() {
    use std::io::BufRead;
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let u = &fake.url;
    let (key, cert) = pullbroker_credentials::keys::SigningKey::generate("cli").unwrap();
    for (path, body) in [
        ("/api/v1/namespaces", r#"{"metadata":{"name":"pullbroker-system"}}"#.to_string()),
        ("/api/v1/namespaces/pullbroker-system/secrets", serde_json::json!({"metadata": {"name": "signer"},
            "type": "kubernetes.io/tls", "stringData": {"tls.key": key, "tls.crt": cert}}).to_string()),
        ("/apis/pullbroker.dev/v1alpha1/registrycredentials", r#"{"apiVersion":"pullbroker.dev/v1alpha1","kind":"RegistryCredential","metadata":{"name":"corp"},"spec":{"registries":["registry.corp.example"],"source":{"tokenIssuer":{"signingKeySecretRef":{"name":"signer"},"service":"s","issuer":"i"}}}}"#.to_string()),
        ("/api/v1/namespaces", r#"{"metadata":{"name":"team-a"}}"#.to_string()),
        ("/api/v1/namespaces/team-a/serviceaccounts", r#"{"metadata":{"name":"app"}}"#.to_string()),
        ("/api/v1/namespaces/team-a/serviceaccounts", r#"{"metadata":{"name":"other"}}"#.to_string()),
        ("/api/v1/namespaces/team-a/pods", r#"{"metadata":{"name":"web-0"},"spec":{"nodeName":"node-1","serviceAccountName":"app","containers":[{"name":"c","image":"x"}]}}"#.to_string()),
        ("/apis/pullbroker.dev/v1alpha1/pullgrants", r#"{"apiVersion":"pullbroker.dev/v1alpha1","kind":"PullGrant","metadata":{"name":"team-a"},"spec":{"credential":"corp","subjects":{"namespaces":["team-a"],"serviceAccounts":["app","other"]},"repositories":["**"],"purposes":["pull"]}}"#.to_string()),
    ] {
        post(u, path, &body);
    }
    let (_, pod) = request(u, "GET", "/api/v1/namespaces/team-a/pods/web-0", "");
    let pod: serde_json::Value = serde_json::from_str(&pod).unwrap();
    let token = |sa: &str, bound: serde_json::Value| {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["pullbroker"], "expirationSeconds": 600, "boundObjectRef": bound}});
        let (status, out) = request(
            u,
            "POST",
            &format!("/api/v1/namespaces/team-a/serviceaccounts/{sa}/token"),
            &body.to_string(),
        );
        assert_eq!(status, 201, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["status"]["token"].as_str().unwrap().to_string()
    };
    let pod_token = token(
        "app",
        serde_json::json!({"kind": "Pod", "apiVersion": "v1", "name": "web-0", "uid": pod["metadata"]["uid"]}),
    );
    let other_token = token("other", serde_json::Value::Null);
    let unseen_token = token("app", serde_json::Value::Null);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_as(api_log::BROKER)).unwrap();
    let config = dir.path().join("broker.yaml");
    // The issuer as deploy/base/broker-config.yaml has it: the JWKS through
    // the API server, with the broker's own token.
    std::fs::write(dir.path().join("sa-token"), api_log::BROKER).unwrap();
    std::fs::write(&config, format!("apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer:\n    issuer: {KUBE_ISSUER}\n    jwksUrl: {u}/openid/v1/jwks\n    tokenFile: sa-token\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Log lines are read on a thread to the end, so the pipe never fills.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let broker = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve logs its address");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        if json["message"] == "pullbroker serving" {
            break format!("http://{}", json["address"].as_str().unwrap());
        }
    };
    let wait = |what: &str, limit: Duration, mut ok: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    };
    wait(
        "ready",
        Duration::from_secs(30),
        Box::new(|| request(&broker, "GET", "/readyz", "").0 == 200),
    );
    let exchange = |t: &str| {
        request(
            &broker,
            "POST",
            "/v1/exchange",
            &serde_json::json!({"token": t, "image": "registry.corp.example/apps/web:1"})
                .to_string(),
        )
    };
    assert_eq!(exchange(&pod_token).0, 200);
    assert_eq!(exchange(&other_token).0, 200);
    let reviews = || {
        fake.writes()
            .get("create tokenreviews")
            .copied()
            .unwrap_or(0)
    };
    let before = reviews();

    // Revoke both: the pod and the other service account are deleted.
    for path in [
        "/api/v1/namespaces/team-a/pods/web-0",
        "/api/v1/namespaces/team-a/serviceaccounts/other",
    ] {
        let (status, out) = request(u, "DELETE", path, "");
        assert!(status < 300, "{out}");
    }
    let revoked = |t: &str| {
        let (status, body) = exchange(t);
        status == 401 && body.contains("revoked")
    };
    // Each within 20 s of the deletion: the API server's ~10 s success
    // cache plus the broker's 5 s, and 5 s to spare for a loaded machine.
    let deleted = Instant::now();
    let took = wait(
        "the pod's token refused",
        Duration::from_secs(20),
        Box::new(|| revoked(&pod_token)),
    );
    wait(
        "the account's token refused",
        Duration::from_secs(20).saturating_sub(deleted.elapsed()),
        Box::new(|| revoked(&other_token)),
    );
    let took2 = deleted.elapsed() - took;
    // ~10 exchanges a second for up to 15 s per token: the cache keeps the
    // reviews to about one per 5 s per token.
    let sent = reviews() - before;
    let bound = 2 * ((took + took2).as_secs() as usize / 5 + 3);
    assert!(sent <= bound, "{sent} TokenReviews > {bound}");

    fake.set_down(true);
    let (status, body) = exchange(&unseen_token);
    assert_eq!(status, 503, "no verdict while TokenReview is down: {body}");
    assert!(body.contains("unavailable"), "{body}");
    fake.set_down(false);
    assert_eq!(exchange(&unseen_token).0, 200);

    pullbroker_testenv::process::terminate(&child);
    assert!(child.wait().unwrap().success());
    eprintln!("revoked after {took:?} (pod) and {took2:?} (service account); {sent} TokenReviews");
}
