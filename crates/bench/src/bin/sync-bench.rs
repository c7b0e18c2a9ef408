//! Sync-mode benchmark (issue 5): one grant selecting N namespaces × S
//! service accounts, against the fake API server running as its own process
//! (so this process's peak RSS is the controller's).
//!
//! Measures: time from grant creation to every secret and reference in
//! place; API writes per managed object; writes during a full resync with
//! nothing to change; peak RSS and CPU. Peer, in the same run: the same
//! writes sent straight to a second fake server at the same concurrency, with
//! no watching or deciding — the floor for this server on this machine.
//!
//! `scripts/bench-sync.sh [NAMESPACES] [SERVICE_ACCOUNTS]` (10000 2).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{stream, StreamExt};
use pullbroker_controller::{Metrics, Settings};
use pullbroker_credentials::keys::SigningKey;
use serde_json::{json, Value};

const CONCURRENCY: usize = 32;

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    ctype: &str,
    body: Value,
) -> Result<()> {
    let resp = http
        .request(method, url)
        .header("content-type", ctype)
        .body(body.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{}: {}",
        resp.status(),
        resp.text().await?
    );
    Ok(())
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<()> {
    send(http, reqwest::Method::POST, url, "application/json", body).await
}

/// System namespace, signing key, credential, N namespaces × S accounts.
async fn seed(http: &reqwest::Client, base: &str, n: usize, s: usize) -> Result<()> {
    let (key, cert) = SigningKey::generate("bench").map_err(anyhow::Error::msg)?;
    post(
        http,
        format!("{base}/api/v1/namespaces"),
        json!({"metadata": {"name": "pullbroker-system"}}),
    )
    .await?;
    post(
        http,
        format!("{base}/api/v1/namespaces/pullbroker-system/secrets"),
        json!({"metadata": {"name": "corp-signer"},
        "type": "kubernetes.io/tls", "stringData": {"tls.key": key, "tls.crt": cert}}),
    )
    .await?;
    post(http, format!("{base}/apis/pullbroker.dev/v1alpha1/registrycredentials"), json!({"apiVersion": "pullbroker.dev/v1alpha1",
        "kind": "RegistryCredential", "metadata": {"name": "corp"}, "spec": {"registries": ["registry.corp.example"],
        "source": {"tokenIssuer": {"signingKeySecretRef": {"name": "corp-signer"}, "service": "registry", "issuer": "pullbroker"}}}})).await?;
    let results: Vec<Result<()>> = stream::iter(0..n)
        .map(|i| async move {
            post(http, format!("{base}/api/v1/namespaces"), json!({"metadata": {"name": format!("tenant-{i}")}})).await?;
            for j in 0..s {
                post(http, format!("{base}/api/v1/namespaces/tenant-{i}/serviceaccounts"),
                    json!({"metadata": {"name": format!("sa-{j}")}, "imagePullSecrets": [{"name": "user-own"}]})).await?;
            }
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn writes(http: &reqwest::Client, base: &str) -> Result<BTreeMap<String, usize>> {
    Ok(http
        .get(format!("{base}/fake/writes"))
        .send()
        .await?
        .json()
        .await?)
}

fn managed_writes(w: &BTreeMap<String, usize>) -> usize {
    w.iter()
        .filter(|(k, _)| {
            (k.ends_with(" secrets") || k.ends_with(" serviceaccounts")) && !k.starts_with("create")
        })
        .map(|(_, v)| v)
        .sum()
}

/// (current, peak) resident set of this process, MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The peer: the same secret applies and account patches, sent directly.
async fn raw_writes(http: &reqwest::Client, base: &str, n: usize, s: usize) -> Result<Duration> {
    let start = Instant::now();
    let results: Vec<Result<()>> = stream::iter(0..n)
        .map(|i| async move {
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pullbroker-all",
                "labels": {"app.kubernetes.io/managed-by": "pullbroker"}}, "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": "e30="}});
            send(http, reqwest::Method::PATCH,
                format!("{base}/api/v1/namespaces/tenant-{i}/secrets/pullbroker-all?fieldManager=pullbroker&force=true"),
                "application/apply-patch+yaml", secret).await?;
            for j in 0..s {
                send(http, reqwest::Method::PATCH, format!("{base}/api/v1/namespaces/tenant-{i}/serviceaccounts/sa-{j}"),
                    "application/json-patch+json",
                    json!([{"op": "add", "path": "/imagePullSecrets", "value": [{"name": "user-own"}, {"name": "pullbroker-all"}]}])).await?;
            }
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;
    Ok(start.elapsed())
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    while !done().await? {
        anyhow::ensure!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(10_000);
    let s = args.get(1).copied().unwrap_or(2);
    let objects = n * (1 + s);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;

    // Peer first, on its own server.
    let peer = pullbroker_bench::FakeProcess::start()?;
    seed(&http, &peer.url, n, s).await?;
    let peer_time = raw_writes(&http, &peer.url, n, s).await?;
    drop(peer);

    let fake = pullbroker_bench::FakeProcess::start()?;
    let t = Instant::now();
    seed(&http, &fake.url, n, s).await?;
    eprintln!(
        "seeded {n} namespaces × {s} service accounts in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: f, cluster: {{server: '{}'}}}}]\ncontexts: [{{name: f, context: {{cluster: f, user: f}}}}]\ncurrent-context: f\nusers: [{{name: f, user: {{}}}}]\n",
        fake.url
    );
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let (rss_before, _) = rss_mb();
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cpu0 = pullbroker_bench::self_cpu();
    let controller = tokio::spawn(pullbroker_controller::run(
        client,
        Settings {
            concurrency: CONCURRENCY as u16,
            ..Settings::default()
        },
        metrics.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // The controller is up and has looked at every namespace once.
    let m = metrics.clone();
    wait_for("initial pass", Duration::from_secs(300), async || {
        Ok(m.reconciles.load(Ordering::Relaxed) as usize > n)
    })
    .await?;
    let before = writes(&http, &fake.url).await?;

    let start = Instant::now();
    post(&http, format!("{}/apis/pullbroker.dev/v1alpha1/pullgrants", fake.url), json!({"apiVersion": "pullbroker.dev/v1alpha1",
        "kind": "PullGrant", "metadata": {"name": "all"}, "spec": {"credential": "corp",
        "subjects": {"namespaces": ["tenant-*"], "serviceAccounts": ["*"]}, "repositories": ["**"], "purposes": ["sync"], "ttl": "1h"}})).await?;
    let (h, u) = (&http, &fake.url);
    wait_for(
        "all secrets and references",
        Duration::from_secs(600),
        async || {
            let w = writes(h, u).await?;
            Ok(w.get("apply secrets").copied().unwrap_or(0) >= n
                && w.get("patch serviceaccounts").copied().unwrap_or(0) >= n * s)
        },
    )
    .await?;
    let converge = start.elapsed();
    let (_, peak_converged) = rss_mb();
    let after = writes(&http, &fake.url).await?;
    let sync_writes = managed_writes(&after) - managed_writes(&before);

    // Steady state: a spec change that changes nothing reconciles every namespace.
    let r0 = metrics.reconciles.load(Ordering::Relaxed) as usize;
    send(
        &http,
        reqwest::Method::PATCH,
        format!("{}/apis/pullbroker.dev/v1alpha1/pullgrants/all", fake.url),
        "application/merge-patch+json",
        json!({"spec": {"repositories": ["**", "unused/**"]}}),
    )
    .await?;
    let m = metrics.clone();
    wait_for("resync", Duration::from_secs(300), async || {
        Ok(m.reconciles.load(Ordering::Relaxed) as usize > r0 + n)
    })
    .await?;
    let resync = managed_writes(&writes(&http, &fake.url).await?) - managed_writes(&after);
    let (rss_steady, peak) = rss_mb();
    let cpu = pullbroker_bench::self_cpu() - cpu0;
    let _ = stop_tx.send(());
    controller.await??;

    // Verify the state itself, not just the counts (after the memory figures:
    // these lists are the bench's, not the controller's).
    let secrets: Value = http
        .get(format!(
            "{}/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpullbroker",
            fake.url
        ))
        .send()
        .await?
        .json()
        .await?;
    let accounts: Value = http
        .get(format!("{}/api/v1/serviceaccounts", fake.url))
        .send()
        .await?
        .json()
        .await?;
    let n_secrets = secrets["items"].as_array().map_or(0, Vec::len);
    let n_refs = accounts["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            a["imagePullSecrets"]
                .as_array()
                .is_some_and(|l| l.len() == 2 && l[1]["name"] == "pullbroker-all")
        })
        .count();
    anyhow::ensure!(
        n_secrets == n && n_refs == n * s,
        "state: {n_secrets} secrets, {n_refs} references"
    );

    println!("sync-bench: {n} namespaces × {s} service accounts ({objects} managed objects), concurrency {CONCURRENCY}");
    println!(
        "  grant → all in place:     {:.1} s ({:.0} objects/s)",
        converge.as_secs_f64(),
        objects as f64 / converge.as_secs_f64()
    );
    println!(
        "  peer (raw writes, same server, same concurrency): {:.1} s → controller/peer {:.2}×",
        peer_time.as_secs_f64(),
        converge.as_secs_f64() / peer_time.as_secs_f64()
    );
    println!(
        "  API writes per object:    {:.3} ({sync_writes} writes)",
        sync_writes as f64 / objects as f64
    );
    println!(
        "  steady-state resync:      {resync} writes over {} reconciles",
        metrics.reconciles.load(Ordering::Relaxed) as usize - r0
    );
    println!("  process RSS before the controller started: {rss_before:.0} MB (seeding client)");
    println!("  peak RSS until all in place: {peak_converged:.0} MB; after the resync: RSS {rss_steady:.0} MB, peak {peak:.0} MB");
    println!(
        "  controller CPU:           {:.1} s ({:.0} µs per object)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / objects as f64
    );
    Ok(())
}
