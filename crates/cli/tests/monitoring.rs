//! `deploy/components/monitoring`: the alerts pass `promtool check rules`
//! and their unit tests (`promtool test rules`: each fires, and stays quiet
//! before its `for` and on a healthy cluster); each has a runbook section;
//! the dashboard's queries parse as PromQL; and every metric the rules and
//! the dashboard name is exposed by a running broker and controller.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use serde_json::{json, Value};

#[path = "support/procs.rs"]
mod procs;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/components/monitoring")
}

/// The PrometheusRule's rule groups, as a Prometheus rules file.
fn rule_groups() -> Value {
    let text = std::fs::read_to_string(monitoring().join("prometheusrule.yaml")).unwrap();
    let rule: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    json!({"groups": rule["spec"]["groups"]})
}

fn alerts() -> Vec<Value> {
    rule_groups()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerts_pass_promtools_checks_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_saphyr::to_string(&rule_groups()).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        monitoring().join("rules-test.yaml"),
        dir.path().join("rules-test.yaml"),
    )
    .unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(
        checked.contains(&format!("{} rules found", alerts().len())),
        "{checked}"
    );
    promtool(dir.path(), &["test", "rules", "rules-test.yaml"]);
}

#[test]
fn every_alert_fires_and_stays_quiet_in_a_test_and_has_a_runbook() {
    let tests: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(monitoring().join("rules-test.yaml")).unwrap(),
    )
    .unwrap();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let operations = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        let of = |fires: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name
                    && c["exp_alerts"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() != fires)
            })
        };
        assert!(of(true), "{name}: no test where it fires");
        assert!(of(false), "{name}: no test where it stays quiet");
        assert!(
            ["warning", "critical"].contains(&alert["labels"]["severity"].as_str().unwrap()),
            "{name}: severity"
        );
        let runbook = alert["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            runbook.ends_with(&format!("operations.md#{}", name.to_lowercase())),
            "{name}: {runbook}"
        );
        assert!(
            operations.contains(&format!("\n### {name}\n")),
            "{name}: no runbook section in docs/operations.md"
        );
    }
}

/// The dashboard's queries, Grafana's `$__rate_interval` filled in.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap(),
    )
    .unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
        })
        .collect()
}

#[test]
fn the_dashboards_queries_parse_as_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10);
    // promtool parses every expression of a rules file: one recording rule each.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("pullbroker:dashboard_query_{i}"), "expr": q}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dashboard-queries.yaml"),
        serde_saphyr::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))
            .unwrap(),
    )
    .unwrap();
    promtool(dir.path(), &["check", "rules", "dashboard-queries.yaml"]);
}

/// A registry that answers `/v2/` and rate-limits everything else.
async fn rate_limited_registry() -> String {
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { "{}" }))
        .fallback(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "60")],
                "",
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    host
}

/// `pullbroker_…` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("pullbroker_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer identifier (a recording rule's `x:pullbroker_…`).
        if i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b':'
        {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Metric families in a /metrics text (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn exposed(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|f| families.contains(f)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_name_is_exposed() {
    let mut wanted: BTreeSet<String> = alerts()
        .iter()
        .flat_map(|a| metric_names(a["expr"].as_str().unwrap()))
        .collect();
    wanted.extend(dashboard_queries().iter().flat_map(|q| metric_names(q)));
    assert!(wanted.len() >= 15, "{wanted:?}");

    // A cluster with a grant, a broker that has answered an exchange and a
    // resolution a registry rate-limited, and a controller that has synced it.
    let limited = rate_limited_registry().await;
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let (key, cert) = pullbroker_credentials::keys::SigningKey::generate("m").unwrap();
    for (path, body) in [
        (
            "/api/v1/namespaces",
            json!({"metadata": {"name": "pullbroker-system"}}),
        ),
        (
            "/api/v1/namespaces/pullbroker-system/secrets",
            json!({"metadata": {"name": "signer"},
            "type": "kubernetes.io/tls", "stringData": {"tls.key": key, "tls.crt": cert}}),
        ),
        (
            "/apis/pullbroker.dev/v1alpha1/registrycredentials",
            json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": "corp"}, "spec": {"registries": ["registry.corp.example", limited],
            "source": {"tokenIssuer": {"signingKeySecretRef": {"name": "signer"}, "service": "s", "issuer": "i"}}}}),
        ),
        (
            "/api/v1/namespaces",
            json!({"metadata": {"name": "team-a"}}),
        ),
        (
            "/api/v1/namespaces/team-a/serviceaccounts",
            json!({"metadata": {"name": "app"}}),
        ),
        (
            "/api/v1/namespaces/team-a/pods",
            json!({"metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "app",
            "containers": [{"name": "c", "image": "registry.corp.example/apps/web:1"}]}}),
        ),
        (
            "/apis/pullbroker.dev/v1alpha1/pullgrants",
            json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "PullGrant",
            "metadata": {"name": "team-a"}, "spec": {"credential": "corp", "subjects": {"namespaces": ["team-a"],
            "serviceAccounts": ["app"]}, "repositories": ["apps/**"], "purposes": ["pull", "sync", "resolve"]}}),
        ),
    ] {
        let (status, out) = procs::http(&fake.url, "POST", path, &body.to_string());
        assert!(status < 300, "{path}: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let controller = procs::controller(&fake, dir.path());
    let broker = procs::broker(&fake, dir.path());
    let token = procs::pod_token(&fake, "team-a", "web-0", "app");
    let (status, body) = procs::exchange(&broker.url, &token, "registry.corp.example/apps/web:1");
    assert_eq!(status, 200, "{body}");
    let (status, body) = procs::http_with(
        &broker.url,
        "POST",
        "/v1/resolve",
        &json!({"namespace": "team-a", "images": [format!("{limited}/apps/web:1")]}).to_string(),
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert!(
        status == 200 && body.contains("rate_limited"),
        "{status} {body}"
    );
    // Two scrapes: the first is timed into the second.
    procs::http(&broker.url, "GET", "/metrics", "");
    let mut found = families(&procs::http(&broker.url, "GET", "/metrics", "").1);
    found.extend(families(
        &procs::http(&controller.url, "GET", "/metrics", "").1,
    ));
    let missing: Vec<&String> = wanted.iter().filter(|n| !exposed(n, &found)).collect();
    assert!(
        missing.is_empty(),
        "named but not exposed: {missing:?}\nexposed: {found:?}"
    );
}
