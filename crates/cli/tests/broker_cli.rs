//! `pullbroker serve`, `can-i` and `keygen` as a user runs them, on the
//! shipped example configuration.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/standalone/broker.yaml"
);

fn pullbroker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pullbroker"))
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn serve_runs_the_example_and_stops_gracefully_on_sigterm() {
    let mut child = pullbroker()
        .args(["serve", "--config", EXAMPLE, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read JSON log lines on a thread so the wait is bounded.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve did not report its address");
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        lines.push(line);
        if json["message"] == "pullbroker serving" {
            break json["address"].as_str().unwrap().to_string();
        }
    };
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 200);
    assert!(body.contains("\"configGeneration\":1"), "{body}");
    let (status, _) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    lines.extend(rx.iter());
    assert!(
        lines.iter().any(|l| l.contains("pullbroker stopped")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("change-me")),
        "the static password never reaches the log"
    );
}

#[test]
fn serve_refuses_an_invalid_config_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {name: b}\nspec:\n  serviceAccountIssuer: {issuer: x, jwksFile: missing.json}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {name: g}\nspec:\n  credential: nope\n  subjects: {namespaces: [a], serviceAccounts: ['*']}\n  repositories: ['**']\n  purposes: [pull]\n",
    )
    .unwrap();
    let out = pullbroker()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("credential \\\"nope\\\" does not exist")
            || err.contains("credential \"nope\" does not exist"),
        "{err}"
    );
    assert!(err.contains("jwksFile"), "{err}");
}

#[test]
fn can_i_answers_with_reason_and_exit_code() {
    let run = |args: &[&str]| {
        let out = pullbroker()
            .args(["can-i", "--config", EXAMPLE])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[
        "--as",
        "system:serviceaccount:team-a:web",
        "pull",
        "registry.corp.example/apps/team-a/web:1.0",
    ]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("yes — allowed by PullGrant \"team-a\""),
        "{out}"
    );
    let (code, out) = run(&[
        "--as",
        "system:serviceaccount:team-ab:web",
        "pull",
        "registry.corp.example/apps/team-a/web:1.0",
    ]);
    assert_eq!(code, Some(1));
    assert!(out.contains("namespace team-ab is not a subject"), "{out}");
    let (code, out) = run(&[
        "--as",
        "system:serviceaccount:b-prod:builder",
        "pull",
        "registry.corp.example/apps/team-b/tool:1",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["grant"], "tenant-b-builders");
    let (code, _) = run(&[
        "--as",
        "system:serviceaccount:knative-serving:controller",
        "--on-behalf-of",
        "team-a",
        "resolve",
        "registry.corp.example/apps/team-a/web:1.0",
    ]);
    assert_eq!(code, Some(0));
    let (code, out) = run(&[
        "--as",
        "system:serviceaccount:knative-serving:controller",
        "--on-behalf-of",
        "b-prod",
        "resolve",
        "registry.corp.example/apps/team-b/tool:1",
    ]);
    assert_eq!(code, Some(1), "{out}");
    let out = pullbroker()
        .args(["can-i", "--config", EXAMPLE, "--as", "alice", "pull", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a service account"));
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = pullbroker()
        .args(["keygen", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(dir.path().join("tls.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kid (libtrust): "));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
    let again = pullbroker()
        .args(["keygen", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "no silent overwrite");
}
