//! `pullbroker audit` and `pullbroker adopt` on a big cluster (issues 13
//! and 25): SECRETS secrets (a third of them pull secrets, a fifth of those
//! copies of one credential across 100 namespaces), ACCOUNTS service
//! accounts and PODS pods in 500 namespaces, served by the fake API server
//! in its own process. Measures wall time and peak RSS (wait4), against the
//! pull-secret guide's own recipe as the peer, in the same run: the same
//! list calls (curl, as kubectl would make them without discovery) and the
//! guide's jq steps — the registries of every dockerconfigjson secret and
//! the pods without imagePullSecrets — which answer far less. Adopt reads
//! what audit reads (plus Knative Services and /version) and is compared
//! with audit.
//!
//! `scripts/bench-audit.sh [SECRETS] [ACCOUNTS] [PODS]` (10000 20000 50000).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use futures::{stream, StreamExt};
use pullbroker_bench::exec_measured;
use serde_json::{json, Value};

const NAMESPACES: usize = 500;
const CONCURRENCY: usize = 32;
const RUNS: usize = 3;

/// Makes object `i`: its collection path and body (with a base64 encoder).
type Make = fn(usize, &dyn Fn(&str) -> String) -> (String, Value);

async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<()> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{}", resp.text().await?);
    Ok(())
}

async fn seed(
    http: &reqwest::Client,
    base: &str,
    secrets: usize,
    accounts: usize,
    pods: usize,
) -> Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let all = |n: usize, make: Make| {
        let b64 = &b64;
        stream::iter(0..n)
            .map(move |i| {
                let (path, body) = make(i, b64);
                post(http, format!("{base}{path}"), body)
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<Result<()>>>()
    };
    for r in all(NAMESPACES, |i, _| {
        (
            "/api/v1/namespaces".into(),
            json!({"metadata": {"name": format!("ns-{i}")}}),
        )
    })
    .await
    {
        r?;
    }
    for r in all(secrets, |i, b64| {
        let ns = i % NAMESPACES;
        let path = format!("/api/v1/namespaces/ns-{ns}/secrets");
        if i % 3 == 0 {
            // Every 5th pull secret is a copy of one shared credential.
            let user = if i % 15 == 0 { "shared".to_string() } else { format!("user-{i}") };
            let config = json!({"auths": {"registry.corp.example": {"username": user, "password": format!("pw-{}", if user == "shared" { 0 } else { i })}}});
            (path, json!({"metadata": {"name": format!("pull-{i}")}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(&config.to_string())}}))
        } else {
            (path, json!({"metadata": {"name": format!("opaque-{i}")}, "type": "Opaque", "data": {"k": b64("value")}}))
        }
    })
    .await
    {
        r?;
    }
    for r in all(accounts, |i, _| {
        let ns = i % NAMESPACES;
        let secrets: Vec<Value> = if i % 2 == 0 {
            vec![json!({"name": own_secret(ns)})]
        } else {
            vec![]
        };
        (
            format!("/api/v1/namespaces/ns-{ns}/serviceaccounts"),
            json!({"metadata": {"name": format!("sa-{i}")}, "imagePullSecrets": secrets}),
        )
    })
    .await
    {
        r?;
    }
    for r in all(pods, |i, _| {
        let ns = i % NAMESPACES;
        let secrets: Vec<Value> = if i % 3 != 0 { vec![json!({"name": own_secret(ns)})] } else { vec![] };
        (format!("/api/v1/namespaces/ns-{ns}/pods"), json!({"metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("app-{}", i % 50)}},
            "spec": {"serviceAccountName": format!("sa-{}", i % 20), "imagePullSecrets": secrets,
                "containers": [{"name": "app", "image": format!("registry.corp.example/apps/app-{}:1.{}", i % 50, i % 7)},
                               {"name": "proxy", "image": "docker.io/library/nginx:1.27"}]}}))
    })
    .await
    {
        r?;
    }
    Ok(())
}

/// The namespace's own pull secret: the first `pull-{i}` created in `ns`.
fn own_secret(ns: usize) -> String {
    let i = (0..3)
        .map(|k| ns + NAMESPACES * k)
        .find(|i| i % 3 == 0)
        .unwrap_or(ns);
    format!("pull-{i}")
}

fn median(mut v: Vec<(Duration, i64)>) -> (Duration, i64) {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (secrets, accounts, pods) = (arg(1, 10_000), arg(2, 20_000), arg(3, 50_000));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = pullbroker_bench::FakeProcess::start()?;
    let base = fake.url.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let seeded = std::time::Instant::now();
    runtime.block_on(seed(
        &reqwest::Client::new(),
        &base,
        secrets,
        accounts,
        pods,
    ))?;
    eprintln!("seeded {secrets} secrets, {accounts} service accounts, {pods} pods in {NAMESPACES} namespaces in {:.1?}", seeded.elapsed());

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"{base}\"}}\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\nusers:\n- name: b\n  user: {{}}\n"
    ))?;
    let pullbroker = std::env::current_exe()?.with_file_name("pullbroker");
    let audit = || {
        let mut c = Command::new(&pullbroker);
        c.args(["audit", "-A", "-o", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        c
    };
    let adopt = || {
        let mut c = Command::new(&pullbroker);
        c.args(["adopt", "-o", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        c
    };
    let recipe = format!(
        "curl -sf '{base}/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson' \
         | jq -r '[.items[].data[\".dockerconfigjson\"] | @base64d | fromjson | .auths | keys[]] | unique | .[]' >/dev/null \
         && curl -sf '{base}/api/v1/pods' \
         | jq -r '.items[] | select(.spec.imagePullSecrets == null) | \"\\(.metadata.namespace)/\\(.metadata.name)\"' >/dev/null"
    );
    let peer = || {
        let mut c = Command::new("bash");
        c.args(["-o", "pipefail", "-c", &recipe]);
        c
    };
    // Warm-up (and a check of what audit answers).
    let (_, _, out) = exec_measured(&mut audit(), b"")?;
    let report: Value = serde_json::from_slice(&out).context("audit output")?;
    exec_measured(&mut peer(), b"")?;
    let (_, _, out) = exec_measured(&mut adopt(), b"")?;
    let plan: Value = serde_json::from_slice(&out).context("adopt output")?;
    let (mut a, mut p, mut o) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (d, rss, _) = exec_measured(&mut audit(), b"")?;
        a.push((d, rss));
        let (d, rss, _) = exec_measured(&mut peer(), b"")?;
        p.push((d, rss));
        let (d, rss, _) = exec_measured(&mut adopt(), b"")?;
        o.push((d, rss));
    }
    let ((ad, ar), (pd, pr), (od, or)) = (median(a), median(p), median(o));
    println!("cluster: {secrets} secrets ({} pull secrets), {accounts} service accounts, {pods} pods, {NAMESPACES} namespaces; median of {RUNS}", report["scanned"]["pullSecrets"]);
    println!("{:<34} {:>9} {:>12}", "", "wall", "peak RSS");
    println!(
        "{:<34} {:>8.2}s {:>9} MiB",
        "pullbroker audit -A -o json",
        ad.as_secs_f64(),
        ar / 1024
    );
    println!(
        "{:<34} {:>8.2}s {:>9} MiB",
        "pullbroker adopt -o json",
        od.as_secs_f64(),
        or / 1024
    );
    println!(
        "{:<34} {:>8.2}s {:>9} MiB",
        "guide recipe (curl + jq)",
        pd.as_secs_f64(),
        pr / 1024
    );
    println!(
        "ratio audit/recipe: wall {:.2}x, RSS {:.2}x",
        ad.as_secs_f64() / pd.as_secs_f64(),
        ar as f64 / pr as f64
    );
    println!(
        "ratio adopt/audit: wall {:.2}x, RSS {:.2}x",
        od.as_secs_f64() / ad.as_secs_f64(),
        or as f64 / ar as f64
    );
    println!(
        "adopt planned {} credential(s), {} grant(s), proved {} (pod, image) pair(s) ({} broken), {} clean-up steps",
        plan["credentials"].as_array().map_or(0, Vec::len),
        plan["grants"].as_array().map_or(0, Vec::len),
        plan["proof"]["checked"],
        plan["proof"]["broken"].as_array().map_or(0, Vec::len),
        plan["cleanup"].as_array().map_or(0, Vec::len),
    );
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    for f in report["findings"].as_array().into_iter().flatten() {
        *by_code
            .entry(f["code"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!(
        "audit answered {} findings {by_code:?}; the recipe lists registries and the pods without imagePullSecrets",
        report["findings"].as_array().map_or(0, Vec::len),
    );
    Ok(())
}
