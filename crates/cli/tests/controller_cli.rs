//! `pullbroker controller` as an operator runs it: against an API server
//! named by KUBECONFIG (the fake one), it syncs a grant and stops cleanly on
//! SIGTERM, giving up its lease.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .args(["controller", "--identity", "cli-test"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
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
        "allowStaticCopy",
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
