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

/// Starts `pullbroker serve --config CONFIG --listen 127.0.0.1:0`; returns the
/// child, its JSON log lines so far and the rest, and the address it reports.
fn serve(
    config: &str,
) -> (
    std::process::Child,
    Vec<String>,
    mpsc::Receiver<String>,
    String,
) {
    let mut child = pullbroker()
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
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
            .unwrap_or_else(|_| panic!("serve did not report its address: {lines:?}"));
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        lines.push(line);
        if json["message"] == "pullbroker serving" {
            break json["address"].as_str().unwrap().to_string();
        }
    };
    (child, lines, rx, addr)
}

#[test]
fn serve_runs_the_example_and_stops_gracefully_on_sigterm() {
    let (mut child, mut lines, rx, addr) = serve(EXAMPLE);
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 200);
    assert!(body.contains("\"configGeneration\":1"), "{body}");
    let (status, _) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    // SAFETY: signalling our own child.
    pullbroker_testenv::process::terminate(&child);
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

/// The example served over TLS with a certificate from `pullbroker tls-cert`;
/// plain HTTP is refused unless asked for, and only on loopback.
#[test]
fn serve_over_tls_with_a_certificate_from_tls_cert() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out = pullbroker()
        .args(["tls-cert", "--host", "127.0.0.1", "--out-dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tls.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let again = pullbroker()
        .args(["tls-cert", "--host", "127.0.0.1", "--out-dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(1),
        "never overwrites without --force"
    );

    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    std::fs::copy(
        std::path::Path::new(EXAMPLE).with_file_name("issuer-jwks.json"),
        dir.path().join("issuer-jwks.json"),
    )
    .unwrap();
    let with_tls = example.replace(
        "  insecurePlainHttp: true\n",
        "  tls: {certFile: tls/tls.crt, keyFile: tls/tls.key}\n",
    );
    assert_ne!(with_tls, example);
    let config = dir.path().join("broker.yaml");
    std::fs::write(&config, &with_tls).unwrap();
    let (mut child, _, rx, addr) = serve(config.to_str().unwrap());
    let ca = std::fs::read(tls.join("ca.crt")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let trusted = pullbroker_broker::http_client(Some(&ca)).unwrap();
        let resp = trusted
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let untrusted = pullbroker_broker::http_client(None).unwrap();
        assert!(
            untrusted
                .get(format!("https://{addr}/healthz"))
                .send()
                .await
                .is_err(),
            "a client that does not trust the CA is refused"
        );
    });
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(!String::from_utf8_lossy(&reply).contains("\"status\":\"ok\""));
    // The clients' pooled connections live on `rt`: gone with it, so the
    // graceful stop has nothing left to wait for.
    drop(rt);
    // SAFETY: signalling our own child.
    pullbroker_testenv::process::terminate(&child);
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.iter().collect();
    assert!(status.success(), "{status}: {rest:?}");

    // Neither tls nor insecurePlainHttp: refused, saying why.
    let neither = example.replace("  insecurePlainHttp: true\n", "");
    std::fs::write(&config, &neither).unwrap();
    let out = pullbroker()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs tls") && err.contains("insecurePlainHttp"),
        "{err}"
    );
    // insecurePlainHttp off loopback: refused.
    std::fs::write(&config, example.replace("127.0.0.1:8480", "0.0.0.0:8480")).unwrap();
    let out = pullbroker()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only allowed on loopback"));
    // --listen cannot move a plain listener off loopback either.
    std::fs::write(&config, &example).unwrap();
    let out = pullbroker()
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only served on loopback"));
}

#[test]
fn webhook_config_prints_what_the_api_server_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = pullbroker()
        .args([
            "tls-cert",
            "--host",
            "pullbroker.pullbroker-system.svc",
            "--out-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca = dir.path().join("ca.crt");
    let out = pullbroker()
        .args([
            "webhook-config",
            "--service",
            "pullbroker-system/pullbroker",
            "--ca-file",
        ])
        .arg(&ca)
        .args(["--timeout-seconds", "5", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "MutatingWebhookConfiguration");
    let w = &v["webhooks"][0];
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["matchPolicy"], "Equivalent");
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["clientConfig"]["service"]["path"], "/v1/admission/pin");
    let bundle = w["clientConfig"]["caBundle"].as_str().unwrap();
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .unwrap();
    assert_eq!(pem, std::fs::read(&ca).unwrap(), "caBundle is the CA file");
    let sel = w["namespaceSelector"]["matchExpressions"].to_string();
    assert!(
        sel.contains("pullbroker.dev/pin")
            && sel.contains("kube-system")
            && sel.contains("pullbroker-system"),
        "{sel}"
    );
    let resources: Vec<String> = w["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
        })
        .collect();
    for r in [
        "pods",
        "deployments",
        "cronjobs",
        "services",
        "configurations",
        "revisions",
        "pods/ephemeralcontainers",
    ] {
        assert!(resources.iter().any(|x| x == r), "{r} in {resources:?}");
    }
    let plain = pullbroker()
        .args([
            "webhook-config",
            "--url",
            "http://127.0.0.1:1/x",
            "--ca-file",
        ])
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("https://"));
    let neither = pullbroker()
        .args(["webhook-config", "--ca-file"])
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(
        neither.status.code(),
        Some(2),
        "--service or --url is required"
    );
}

/// `POST path` with a bearer token and a JSON body; (status, body).
fn http_post(addr: &str, path: &str, bearer: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
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

/// The README's walk-through, command for command: serve the example, mint a
/// token from its development issuer, exchange it, ask can-i.
#[test]
fn the_readme_walk_through_works_on_the_example() {
    let key = std::path::Path::new(EXAMPLE).with_file_name("dev-issuer.key");
    let (mut child, mut lines, rx, addr) = serve(EXAMPLE);
    let token = |ns: &str, sa: &str| {
        let out = pullbroker()
            .args(["dev-token", "--issuer-key"])
            .arg(&key)
            .args(["--namespace", ns, "--service-account", sa])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let web = token("team-a", "web");
    let (status, body) = http_post(
        &addr,
        "/v1/exchange",
        &web,
        r#"{"image":"registry.corp.example/apps/team-a/web:1.0"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["grant"].as_str(), v["username"].as_str()),
        (Some("team-a"), Some("ci-bot")),
        "{v}"
    );
    let (status, body) = http_post(
        &addr,
        "/v1/exchange",
        &web,
        r#"{"image":"registry.corp.example/apps/team-b/web:1.0"}"#,
    );
    assert_eq!(status, 403, "another team's repository: {body}");
    // A token the example's issuer did not sign is refused.
    let dir = tempfile::tempdir().unwrap();
    let other_key = dir.path().join("other.key");
    let out = pullbroker()
        .args(["dev-token", "--new-key"])
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pullbroker()
        .args([
            "dev-token",
            "--namespace",
            "team-a",
            "--service-account",
            "web",
            "--issuer-key",
        ])
        .arg(&other_key)
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (status, body) = http_post(
        &addr,
        "/v1/exchange",
        &forged,
        r#"{"image":"registry.corp.example/apps/team-a/web:1.0"}"#,
    );
    assert_eq!(
        status, 401,
        "signed by a key the broker does not trust: {body}"
    );
    let out = pullbroker()
        .args([
            "can-i",
            "--config",
            EXAMPLE,
            "--as",
            "system:serviceaccount:team-a:web",
            "pull",
            "registry.corp.example/apps/team-a/web:1.0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    pullbroker_testenv::process::terminate(&child);
    assert!(child.wait().unwrap().success());
    lines.extend(rx.iter());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a development issuer key is trusted")),
        "the broker warns about the development key: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(&web)),
        "no token in the log"
    );
}
