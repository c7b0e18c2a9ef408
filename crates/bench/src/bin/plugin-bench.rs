//! Kubelet plugin benchmark: the real `pullbroker-credential-provider`
//! binary exec'd as kubelet does (request on stdin) against a warm broker on
//! loopback, ≥ 1,000 times. Reports exec-to-response latency (p50/p99), peak
//! RSS (from wait4's rusage), and the binary's size; as a peer measured in the
//! same run, `curl` performing the same exchange. Run with `scripts/bench-plugin.sh`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pullbroker_bench::{exec_measured, percentile, start_broker, write_broker_config};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir_exe = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let (broker_bin, plugin_bin) = (
        dir_exe.join("pullbroker"),
        dir_exe.join("pullbroker-credential-provider"),
    );
    ensure!(
        broker_bin.is_file() && plugin_bin.is_file(),
        "build first: cargo build --release -p pullbroker -p pullbroker-credential-provider"
    );
    pullbroker_testenv::process::require_tools(&["curl"]).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let addr = format!("127.0.0.1:{port}");
    let registry = "registry.bench.example:5000";
    let config = write_broker_config(dir.path(), registry, &issuer, port)?;
    let mut broker = start_broker(&broker_bin, &config, &addr)?;

    let token = issuer.token("team-a", "app", "pullbroker");
    let image = format!("{registry}/demo/app:v1");
    let request = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
        "image": image, "serviceAccountToken": token,
    })
    .to_string();
    let body = serde_json::json!({"token": token, "image": image}).to_string();
    let url = format!("http://{addr}");
    let plugin = || {
        let mut c = Command::new(&plugin_bin);
        c.env_clear().env("PULLBROKER_URL", &url);
        c
    };
    let curl = || {
        let mut c = Command::new("curl");
        c.args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{url}/v1/exchange"));
        c
    };
    // Warm up the broker (token verified once) and the page cache.
    for _ in 0..20 {
        exec_measured(&mut plugin(), request.as_bytes())?;
        exec_measured(&mut curl(), body.as_bytes())?;
    }
    let measure = |make: &dyn Fn() -> Command,
                   input: &[u8],
                   check: &dyn Fn(&[u8]) -> bool|
     -> Result<(Vec<Duration>, i64)> {
        let mut lat = Vec::with_capacity(runs);
        let mut rss = 0;
        for _ in 0..runs {
            let (d, r, out) = exec_measured(&mut make(), input)?;
            ensure!(
                check(&out),
                "unexpected output: {}",
                String::from_utf8_lossy(&out)
            );
            lat.push(d);
            rss = rss.max(r);
        }
        lat.sort();
        Ok((lat, rss))
    };
    let key = format!("\"{registry}/demo/app\"");
    let (plugin_lat, plugin_rss) = measure(&plugin, request.as_bytes(), &|o| {
        String::from_utf8_lossy(o).contains(&key)
    })?;
    let (curl_lat, curl_rss) = measure(&curl, body.as_bytes(), &|o| {
        String::from_utf8_lossy(o).contains("pbc1.")
    })?;
    let _ = Command::new("kill").arg(broker.id().to_string()).status();
    let _ = broker.wait();

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{runs} execs each against a warm `pullbroker serve` on loopback (request on stdin, as kubelet does)");
    println!();
    println!("{:<36} {:>9} {:>9} {:>12}", "", "p50", "p99", "peak RSS");
    println!(
        "{:<36} {:>6.2} ms {:>6.2} ms {:>9.1} MB",
        "pullbroker-credential-provider",
        ms(percentile(&plugin_lat, 0.5)),
        ms(percentile(&plugin_lat, 0.99)),
        plugin_rss as f64 / 1024.0
    );
    println!(
        "{:<36} {:>6.2} ms {:>6.2} ms {:>9.1} MB",
        "curl, same exchange (peer)",
        ms(percentile(&curl_lat, 0.5)),
        ms(percentile(&curl_lat, 0.99)),
        curl_rss as f64 / 1024.0
    );
    println!();
    println!(
        "plugin / curl p50: {:.2}x",
        ms(percentile(&plugin_lat, 0.5)) / ms(percentile(&curl_lat, 0.5))
    );
    println!(
        "binary size: {:.2} MB ({} bytes)",
        size(&plugin_bin) as f64 / 1e6,
        size(&plugin_bin)
    );
    println!("targets: p50 <= 3 ms, p99 <= 10 ms, peak RSS <= 10 MB");
    let _ = dir;
    Ok(())
}
