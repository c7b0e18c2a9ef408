//! Running `pullbroker serve` and `pullbroker controller` against the fake
//! API server as an operator would, for the tests that need them: JSON log
//! lines read on a thread to the end (the pipe never fills), and the
//! address each logs once it listens.
#![allow(dead_code)] // each test uses the part it needs

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use pullbroker_testenv::api_log;
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::KUBE_ISSUER;
use serde_json::Value;

/// A running pullbroker process, stopped (SIGTERM) when dropped.
pub struct Running {
    pub child: Child,
    pub url: String,
    pub logs: Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        pullbroker_testenv::process::terminate(&self.child);
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and waits (30 s at most) for its log line whose `message`
/// is `listening`; its `address` becomes the URL.
fn spawn(mut cmd: Command, listening: &str) -> Running {
    let mut child = cmd
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {listening:?} log line"));
        let json: Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == listening {
            break format!("http://{}", json["address"].as_str().unwrap());
        }
    };
    Running {
        child,
        url,
        logs: rx,
    }
}

/// `pullbroker serve` with the policy from the fake cluster, on loopback
/// HTTP, reviewing tokens over the cluster connection.
pub fn broker(fake: &FakeApi, dir: &std::path::Path) -> Running {
    broker_with_env(fake, dir, &[])
}

/// [`broker`] with extra environment variables (a proxy, say).
pub fn broker_with_env(fake: &FakeApi, dir: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let kubeconfig = dir.join("broker-kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_as(api_log::BROKER)).unwrap();
    std::fs::write(dir.join("sa-token"), api_log::BROKER).unwrap();
    let config = dir.join("broker.yaml");
    std::fs::write(&config, format!("apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer:\n    issuer: {KUBE_ISSUER}\n    jwksUrl: {}/openid/v1/jwks\n    tokenFile: sa-token\n", fake.url)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullbroker"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("KUBECONFIG", &kubeconfig)
        .envs(env.iter().copied());
    let b = spawn(cmd, "pullbroker serving");
    wait_for(&b.url, "/readyz", "the broker ready");
    b
}

/// `pullbroker controller` against the fake cluster, leading.
pub fn controller(fake: &FakeApi, dir: &std::path::Path) -> Running {
    let kubeconfig = dir.join("controller-kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_as(api_log::CONTROLLER)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullbroker"));
    cmd.args([
        "controller",
        "--identity",
        "test",
        "--health-address",
        "127.0.0.1:0",
    ])
    .env("KUBECONFIG", &kubeconfig);
    let c = spawn(cmd, "health and metrics");
    wait_for(&c.url, "/readyz", "the controller leading");
    c
}

/// Polls `base` + `path` until it answers 200 (30 s at most).
pub fn wait_for(base: &str, path: &str, what: &str) {
    let start = Instant::now();
    while http(base, "GET", path, "").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request over loopback: status and body.
pub fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(base, method, path, body, &[])
}

/// [`http`] with extra headers.
pub fn http_with(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
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

/// A token for `sa` bound to pod `pod`, as kubelet requests one.
pub fn pod_token(fake: &FakeApi, ns: &str, pod: &str, sa: &str) -> String {
    let (_, p) = http(
        &fake.url,
        "GET",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}"),
        "",
    );
    let p: Value = serde_json::from_str(&p).unwrap();
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["pullbroker"], "expirationSeconds": 600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": p["metadata"]["uid"]}}});
    let (status, out) = http(
        &fake.url,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
        &body.to_string(),
    );
    assert_eq!(status, 201, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

/// `POST /v1/exchange` of `token` for `image`.
pub fn exchange(broker: &str, token: &str, image: &str) -> (u16, String) {
    http(
        broker,
        "POST",
        "/v1/exchange",
        &serde_json::json!({"token": token, "image": image}).to_string(),
    )
}
