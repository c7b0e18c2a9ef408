//! `pullbroker audit` against the fake API server holding a cluster of a few
//! hundred namespaces: every kind of finding present at least once, found
//! with its severity and objects, and nothing flagged among the clean
//! objects; `--fail-on` gates; no secret value in any output format.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};
use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

const CLEAN: usize = 260;
const CANARY: &str = "CANARY-audit-7f3e";

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{b64, config, Cluster};

/// An unsigned JWT-shaped password expiring at `exp` (audit reads expiry unverified).
fn jwt(exp: i64) -> String {
    let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{CANARY}sig",
        enc(json!({"alg": "RS256"})),
        enc(json!({"exp": exp, "sub": "ci"}))
    )
}

/// A pod created as the fixture `case` (a real kubelet 1.32's report of a
/// failing pull) shows it: its image, and its container's `state.waiting`.
async fn failing_pod(c: &Cluster, ns: &str, name: &str, case: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/kubelet-events-v1.32")
        .join(format!("{case}.json"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // The fixture's pod whose container kubelet reported waiting.
    let pod = fixture["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerStatuses"][0]["state"]["waiting"].is_object())
        .unwrap();
    c.pod(ns, name, "default", pod["image"].as_str().unwrap(), &[])
        .await;
    Api::<Pod>::namespaced(c.client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Pending", "containerStatuses": pod["containerStatuses"]}})),
        )
        .await
        .unwrap();
}

async fn cluster() -> Cluster {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let c = Cluster {
        client: fake.client().await,
        fake,
    };
    let now = chrono::Utc::now().timestamp();

    // Clean namespaces: a pull secret of its own (a credential no one else
    // has, a JWT far from expiry in some), an Opaque secret, a service
    // account using the secret, a pod pulling with it and a public image.
    for i in 0..CLEAN {
        let ns = format!("clean-{i}");
        c.ns(&ns).await;
        let password = if i % 2 == 0 {
            jwt(now + 90 * 86_400)
        } else {
            format!("{CANARY}-{i}")
        };
        c.pull_secret(
            &ns,
            "pull",
            &config("registry.corp.example", &format!("user-{i}"), &password),
        )
        .await;
        c.secret(
            &ns,
            "app-config",
            "Opaque",
            json!({"k": b64("v")}),
            json!({}),
        )
        .await;
        c.sa(&ns, "app", &["pull"]).await;
        c.pod(
            &ns,
            "app-0",
            "app",
            "registry.corp.example/apps/app:1",
            &["pull"],
        )
        .await;
        c.pod(&ns, "web-0", "default", "nginx:1.27", &[]).await;
    }
    // A legacy kubernetes.io/dockercfg secret (the auths map at top level),
    // used by its pod: clean too.
    c.ns("legacy").await;
    let legacy =
        json!({"registry.corp.example": {"auth": b64(&format!("old-bot:{CANARY}-legacy"))}})
            .to_string();
    c.secret(
        "legacy",
        "old",
        "kubernetes.io/dockercfg",
        json!({".dockercfg": b64(&legacy)}),
        json!({}),
    )
    .await;
    c.pod(
        "legacy",
        "old-0",
        "default",
        "registry.corp.example/apps/old:1",
        &["old"],
    )
    .await;
    // Findings.
    c.ns("broken").await;
    c.secret(
        "broken",
        "not-json",
        "kubernetes.io/dockerconfigjson",
        json!({".dockerconfigjson": b64("{not json")}),
        json!({}),
    )
    .await;
    c.pull_secret(
        "broken",
        "merged",
        r#"{"auths":{"registry.corp.example":{"username":"","password":"","auth":""}}}"#,
    )
    .await;
    c.pull_secret(
        "broken",
        "expired",
        &config("registry.corp.example", "robot", &jwt(now - 3600)),
    )
    .await;
    c.pull_secret(
        "broken",
        "expiring",
        &config("registry.corp.example", "robot2", &jwt(now + 86_400)),
    )
    .await;
    c.sa("broken", "app", &["does-not-exist"]).await;
    c.pod("broken", "app-0", "default", "nginx:1.27", &["gone"])
        .await;
    for i in 0..3 {
        let ns = format!("copy-{i}");
        c.ns(&ns).await;
        c.pull_secret(
            &ns,
            "corp",
            &config(
                "registry.corp.example",
                "shared-bot",
                &format!("{CANARY}-shared"),
            ),
        )
        .await;
    }
    // Pods failing to pull right now, from a registry no credential of the
    // cluster names: only kubelet's own report tells.
    c.ns("failing").await;
    failing_pod(&c, "failing", "unauthorized-0", "a-unauthorized").await;
    failing_pod(&c, "failing", "backoff-0", "i-sa-race").await;
    c.ns("lonely").await;
    c.sa("lonely", "late", &["pull"]).await;
    c.pull_secret(
        "lonely",
        "pull",
        &config(
            "registry.corp.example",
            "lonely-bot",
            &format!("{CANARY}-lonely"),
        ),
    )
    .await;
    c.pod(
        "lonely",
        "nothing-0",
        "default",
        "registry.corp.example/apps/secret:1",
        &[],
    )
    .await;
    c.pod(
        "lonely",
        "raced-0",
        "late",
        "registry.corp.example/apps/secret:1",
        &[],
    )
    .await;
    c.pod(
        "lonely",
        "public-0",
        "default",
        "docker.io/library/busybox:1",
        &[],
    )
    .await;

    // pullbroker's objects.
    c.ns("pullbroker-system").await;
    c.pull_secret(
        "pullbroker-system",
        "grants-pull",
        &config(
            "grants.corp.example",
            "central",
            &format!("{CANARY}-central"),
        ),
    )
    .await;
    let creds: Api<RegistryCredential> = Api::all(c.client.clone());
    for (name, ready) in [("corp", false), ("good", true)] {
        creds
            .create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
                "metadata": {"name": name}, "spec": {"registries": [format!("{name}.grants.corp.example")], "source": {"secretRef": {"name": "grants-pull"}}}})).unwrap())
            .await
            .unwrap();
        let status = if ready { "True" } else { "False" };
        creds
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": status,
                "reason": if ready { "Available" } else { "SourceUnavailable" }, "message": "secret grants-pull: key .dockerconfigjson missing",
                "lastTransitionTime": "2026-12-01T00:00:00Z"}]}})))
            .await
            .unwrap();
    }
    let grants: Api<PullGrant> = Api::all(c.client.clone());
    for (name, spec) in [
        (
            "wide",
            json!({"credential": "corp", "subjects": {"namespaces": ["*"], "serviceAccounts": ["*"]}, "repositories": ["**"], "purposes": ["pull", "sync"], "allowUpstreamCopy": true}),
        ),
        (
            "team-a",
            json!({"credential": "good", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["web"]}, "repositories": ["apps/team-a/**"], "purposes": ["pull"]}),
        ),
    ] {
        grants
            .create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant", "metadata": {"name": name}, "spec": spec})).unwrap())
            .await
            .unwrap();
    }
    c.ns("team-a").await;
    c.sa("team-a", "web", &[]).await;
    c.pod(
        "team-a",
        "web-0",
        "web",
        "good.grants.corp.example/apps/team-a/web:1",
        &[],
    )
    .await;
    let managed = |grant: &str, iat: i64, exp: i64| {
        let t = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        json!({"labels": {"app.kubernetes.io/managed-by": "pullbroker", "pullbroker.dev/grant": grant},
               "annotations": {"pullbroker.dev/issued-at": t(iat), "pullbroker.dev/expires-at": t(exp)}})
    };
    let data = json!({".dockerconfigjson": b64(&config("good.grants.corp.example", "pullbroker", &format!("pbc1.{CANARY}")))});
    c.secret(
        "team-a",
        "pullbroker-gone",
        "kubernetes.io/dockerconfigjson",
        data.clone(),
        managed("gone", now - 60, now + 600),
    )
    .await;
    c.secret(
        "team-a",
        "pullbroker-team-a",
        "kubernetes.io/dockerconfigjson",
        data.clone(),
        managed("team-a", now - 60, now + 600),
    )
    .await;
    c.ns("team-b").await;
    c.secret(
        "team-b",
        "pullbroker-wide",
        "kubernetes.io/dockerconfigjson",
        data.clone(),
        managed("wide", now - 1200, now - 60),
    )
    .await;
    c.ns("team-c").await;
    c.secret(
        "team-c",
        "pullbroker-wide",
        "kubernetes.io/dockerconfigjson",
        data,
        managed("wide", now - 900, now + 60),
    )
    .await;
    c
}

fn audit(c: &Cluster, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.fake.kubeconfig()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .arg("audit")
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8(out.stdout).unwrap();
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(CANARY),
            "a secret value in the output:\n{text}"
        );
    }
    (out.status.code().unwrap(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_each_problem_once_with_its_severity_and_nothing_on_clean_objects() {
    let c = cluster().await;
    let c = tokio::task::spawn_blocking(move || {
        let (code, json_out) = audit(&c, &["-A", "-o", "json"]);
        assert_eq!(code, 0, "no --fail-on: informational");
        let report: Value = serde_json::from_str(&json_out).unwrap();
        let found: BTreeSet<(String, String, String)> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let objects: Vec<&str> = f["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap())
                    .collect();
                (
                    f["severity"].as_str().unwrap().into(),
                    f["code"].as_str().unwrap().into(),
                    objects.join(", "),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, String)> = [
            ("error", "secret.malformed", "Secret broken/not-json"),
            ("warning", "secret.empty-entry", "Secret broken/merged"),
            ("error", "secret.expired", "Secret broken/expired"),
            ("warning", "secret.expiring", "Secret broken/expiring"),
            (
                "warning",
                "secret.copied",
                "Secret copy-0/corp, Secret copy-1/corp, Secret copy-2/corp",
            ),
            (
                "warning",
                "serviceaccount.missing-secret",
                "ServiceAccount broken/app",
            ),
            ("warning", "pod.missing-secret", "Pod broken/app-0"),
            ("warning", "pod.no-credential", "Pod lonely/nothing-0"),
            ("error", "pod.pull-failing", "Pod failing/unauthorized-0"),
            ("error", "pod.pull-failing", "Pod failing/backoff-0"),
            ("warning", "pod.no-credential", "Pod lonely/raced-0"),
            ("warning", "grant.every-namespace", "PullGrant wide"),
            ("info", "grant.every-service-account", "PullGrant wide"),
            ("warning", "grant.every-repository", "PullGrant wide"),
            ("warning", "grant.static-copy", "PullGrant wide"),
            ("error", "credential.unavailable", "RegistryCredential corp"),
            ("warning", "managed.orphan", "Secret team-a/pullbroker-gone"),
            ("error", "managed.expired", "Secret team-b/pullbroker-wide"),
            (
                "warning",
                "managed.rotation-overdue",
                "Secret team-c/pullbroker-wide",
            ),
        ]
        .into_iter()
        .map(|(s, c, o)| (s.to_string(), c.to_string(), o.to_string()))
        .collect();
        let missing: Vec<_> = want.difference(&found).collect();
        let extra: Vec<_> = found.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing: {missing:#?}\nunexpected: {extra:#?}"
        );

        // The race case names the fix: recreate the pod.
        let raced = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["objects"][0] == "Pod lonely/raced-0")
            .unwrap();
        assert!(
            raced["fix"].as_str().unwrap().contains("recreate the pod"),
            "{raced}"
        );
        // A pod failing now: kubelet's reason, the class, and where to look.
        let failing = |object: &str| -> Value {
            report["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["objects"][0] == object)
                .unwrap()
                .clone()
        };
        let unauthorized = failing("Pod failing/unauthorized-0");
        let message = unauthorized["message"].as_str().unwrap();
        assert!(
            message.contains("ErrImagePull") && message.contains("unauthorized"),
            "{message}"
        );
        assert!(
            unauthorized["fix"]
                .as_str()
                .unwrap()
                .starts_with("pullbroker diagnose pod failing/unauthorized-0"),
            "{unauthorized}"
        );
        let backoff = failing("Pod failing/backoff-0");
        assert!(
            backoff["message"]
                .as_str()
                .unwrap()
                .contains("ImagePullBackOff"),
            "{backoff}"
        );
        let copied = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == "secret.copied")
            .unwrap();
        assert!(
            copied["fix"].as_str().unwrap().contains("PullGrant"),
            "{copied}"
        );

        // What was read, and the inventory (registries and users, no secrets).
        assert_eq!(report["scanned"]["pods"], CLEAN * 2 + 8);
        let old = report["pullSecrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "old")
            .unwrap();
        assert_eq!(old["type"], "kubernetes.io/dockercfg");
        assert_eq!(old["entries"][0]["username"], "old-bot");
        assert!(
            report["scanned"]["secrets"].as_u64().unwrap() > 500,
            "paged: {}",
            report["scanned"]
        );
        let inventory = report["pullSecrets"].as_array().unwrap();
        let expiring = inventory
            .iter()
            .find(|s| s["namespace"] == "broken" && s["name"] == "expiring")
            .unwrap();
        assert_eq!(expiring["entries"][0]["username"], "robot2");
        assert!(expiring["entries"][0]["expiresAt"].as_i64().is_some());
        assert_eq!(report["counts"]["error"], 6);

        // Gating, and the other formats (also canary-checked by `audit`).
        assert_eq!(audit(&c, &["-A", "--fail-on", "error"]).0, 1);
        let (code, table) = audit(&c, &["-A", "--warn-within", "1h"]);
        assert_eq!(code, 0);
        assert!(
            !table.contains("secret.expiring"),
            "1 day away is not within 1h:\n{table}"
        );
        assert!(
            table.contains("ERROR    secret.malformed  Secret broken/not-json"),
            "{table}"
        );
        assert!(
            table.contains("ERROR    pod.pull-failing  Pod failing/backoff-0"),
            "{table}"
        );
        let (_, yaml) = audit(&c, &["-A", "-o", "yaml"]);
        assert!(yaml.contains("code: secret.copied"), "{yaml}");
        // One namespace: its own objects only (the cluster-scoped grant findings stay).
        let (_, one) = audit(&c, &["-n", "clean-7", "-o", "json"]);
        let one: Value = serde_json::from_str(&one).unwrap();
        assert!(
            one["findings"].as_array().unwrap().iter().all(|f| {
                let o = f["objects"][0].as_str().unwrap();
                o.starts_with("PullGrant") || o.starts_with("RegistryCredential")
            }),
            "{one}"
        );
        assert_eq!(one["scanned"]["pods"], 2);
        grants_unused_per_broker(&c);
        page_in_a_browser(&c);
        c
    })
    .await
    .unwrap();
    drop(c);
}

/// `--broker-url`: the broker's own `/metrics` (rendered by its metrics
/// code, team-a's grant having allowed pulls) served on loopback; every
/// other grant and purpose is reported unused, except sync of an upstream
/// copy, which the broker cannot see.
fn grants_unused_per_broker(c: &Cluster) {
    use std::io::{Read, Write};
    let metrics = pullbroker_broker::metrics::Metrics::default();
    metrics
        .grant_allows
        .get_or_create(&pullbroker_broker::metrics::GrantLabels {
            grant: "team-a".into(),
            purpose: "pull".into(),
        })
        .inc_by(5);
    let body = metrics.render();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        // One scrape; bounded.
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut request = [0u8; 4096];
            let _ = s.read(&mut request);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (code, out) = audit(c, &["-A", "-o", "json", "--broker-url", &url]);
    server.join().unwrap();
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    let unused: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "grant.unused")
        .map(|f| {
            (
                f["objects"][0].as_str().unwrap().to_string(),
                f["message"]
                    .as_str()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        unused,
        [("PullGrant wide".to_string(), "pull".to_string())],
        "{out}"
    );
}

/// Headless Chromium (`--dump-dom` after the page's script ran), bounded.
fn chromium(dir: &std::path::Path, args: &[String]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium (scripts/test.sh installs it)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The `--html` page, loaded from disk by a real browser: it renders the
/// picture (lanes, chips, the curves between them), marks findings, filters
/// by image from `#q=`, fetches nothing and holds no secret.
fn page_in_a_browser(c: &Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("audit.html");
    let (_, _) = audit(c, &["-A", "--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains(CANARY), "a secret value in the page");
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "{external} in a self-contained page"
        );
    }
    let url = format!("file://{}", page.display());
    let dom = chromium(dir.path(), &["--dump-dom".into(), url.clone()]);
    assert!(
        dom.contains(r#"data-rendered="true""#),
        "the script ran: {}",
        &dom[..dom.len().min(2000)]
    );
    let lane = |ns: &str| -> String {
        let start = dom
            .find(&format!(r#"data-namespace="{ns}""#))
            .unwrap_or_else(|| panic!("lane {ns}"));
        let end = dom[start..].find("</section>").unwrap() + start;
        dom[start..end].to_string()
    };
    let team_a = lane("team-a");
    for want in [
        r#"data-id="sa:web""#,
        r#"data-id="grant:team-a""#,
        r#"data-id="cred:good""#,
        "good.grants.corp.example",
        r#"data-edge="sa:web&gt;grant:team-a""#,
        r#"data-edge="grant:team-a&gt;cred:good""#,
    ] {
        assert!(team_a.contains(want), "{want} in {team_a}");
    }
    let broken_start = dom.find(r#"data-namespace="broken""#).unwrap();
    let broken_tag = &dom[dom[..broken_start].rfind('<').unwrap()..broken_start];
    assert!(
        broken_tag.contains("flag-error"),
        "the broken namespace is marked: {broken_tag}"
    );
    assert!(lane("broken").contains("unusable"), "{}", lane("broken"));
    assert!(
        lane("clean-3").contains(r#"data-edge="sa:app&gt;secret:pull""#),
        "a legacy edge"
    );
    assert!(dom.contains(r#"data-code="secret.copied""#));
    assert!(
        dom.contains(r#"data-code="pod.pull-failing""#),
        "a pod failing to pull is on the page"
    );
    assert_eq!(
        dom.matches("class=\"lane hidden\"").count(),
        0,
        "nothing filtered without a query"
    );

    // Searching an image keeps the namespaces that can pull it.
    let filtered = chromium(
        dir.path(),
        &[
            "--dump-dom".into(),
            format!("{url}#q=good.grants.corp.example/apps/team-a/web:1"),
        ],
    );
    // team-a by its grant; team-b and team-c hold synced secrets for that registry.
    let body = &filtered[filtered.find("<body").unwrap()..][..160];
    assert!(filtered.contains(r#"data-visible="3""#), "{body}");
    let tag = |ns: &str| -> String {
        let at = filtered.find(&format!(r#"data-namespace="{ns}""#)).unwrap();
        filtered[filtered[..at].rfind('<').unwrap()..at].to_string()
    };
    for ns in ["team-a", "team-b", "team-c"] {
        assert!(!tag(ns).contains("hidden"), "{ns} shown: {}", tag(ns));
    }
    assert!(tag("clean-0").contains("hidden"), "{}", tag("clean-0"));
    assert!(
        filtered.contains(r#"class="chip grant hit""#),
        "the covering grant is highlighted"
    );
    let by_name = chromium(dir.path(), &["--dump-dom".into(), format!("{url}#q=copy-")]);
    assert!(by_name.contains(r#"data-visible="3""#));

    // A screenshot, kept as an artifact of the run.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        dir.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".into(),
            format!("{url}#q=team-"),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
