//! Kubelet plugin benchmark: the real `pullbroker-credential-provider`
//! binary exec'd as kubelet does (request on stdin) against a warm broker on
//! loopback, ≥ 1,000 times — over TLS, as it ships (every exec is a new
//! process, so a full handshake), and over plain HTTP beside it, from the
//! same broker process. Reports exec-to-response latency (p50/p99), peak RSS
//! (from wait4's rusage), and the binary's size; as a peer measured in the
//! same run, `curl` performing the same exchange over each. Run with
//! `scripts/bench-plugin.sh`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pullbroker_bench::{
    exec_measured, percentile, serve_tls_too, start_broker, write_broker_config,
};
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
    let plain_port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let ca = serve_tls_too(&config, plain_port)?;
    let mut broker = start_broker(&broker_bin, &config, &addr)?;

    let token = issuer.token("team-a", "app", "pullbroker");
    let image = format!("{registry}/demo/app:v1");
    let request = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
        "image": image, "serviceAccountToken": token,
    })
    .to_string();
    let body = serde_json::json!({"token": token, "image": image}).to_string();
    let (tls_url, plain_url) = (
        format!("https://{addr}"),
        format!("http://127.0.0.1:{plain_port}"),
    );
    let plugin = |url: &str, tls: bool| {
        let mut c = Command::new(&plugin_bin);
        c.env_clear().env("PULLBROKER_URL", url);
        if tls {
            c.env("PULLBROKER_CA_FILE", &ca);
        }
        c
    };
    let curl = |url: &str, tls: bool| {
        let mut c = Command::new("curl");
        c.args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ]);
        if tls {
            c.arg("--cacert").arg(&ca);
        }
        c.arg(format!("{url}/v1/exchange"));
        c
    };
    // Warm up the broker (token verified once) and the page cache.
    for _ in 0..20 {
        for (url, tls) in [(&tls_url, true), (&plain_url, false)] {
            exec_measured(&mut plugin(url, tls), request.as_bytes())?;
            exec_measured(&mut curl(url, tls), body.as_bytes())?;
        }
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
    let plugin_ok = |o: &[u8]| String::from_utf8_lossy(o).contains(&key);
    // The broker's own credential for the image (username `pullbroker`).
    let curl_ok = |o: &[u8]| String::from_utf8_lossy(o).contains("\"username\":\"pullbroker\"");
    let rows = [
        (
            "plugin over TLS (as shipped)",
            measure(&|| plugin(&tls_url, true), request.as_bytes(), &plugin_ok)?,
        ),
        (
            "plugin over plain HTTP",
            measure(
                &|| plugin(&plain_url, false),
                request.as_bytes(),
                &plugin_ok,
            )?,
        ),
        (
            "curl over TLS, same exchange (peer)",
            measure(&|| curl(&tls_url, true), body.as_bytes(), &curl_ok)?,
        ),
        (
            "curl over plain HTTP (peer)",
            measure(&|| curl(&plain_url, false), body.as_bytes(), &curl_ok)?,
        ),
    ];
    let _ = Command::new("kill").arg(broker.id().to_string()).status();
    let _ = broker.wait();

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{runs} execs each against a warm `pullbroker serve` on loopback (request on stdin, as kubelet does)");
    println!();
    println!("{:<40} {:>9} {:>9} {:>12}", "", "p50", "p99", "peak RSS");
    for (name, (lat, rss)) in &rows {
        println!(
            "{:<40} {:>6.2} ms {:>6.2} ms {:>9.1} MB",
            name,
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            *rss as f64 / 1024.0
        );
    }
    let p50 = |i: usize| ms(percentile(&rows[i].1 .0, 0.5));
    println!();
    println!(
        "plugin TLS / plain p50: {:.2}x; plugin / curl p50: {:.2}x over TLS, {:.2}x over plain HTTP",
        p50(0) / p50(1),
        p50(0) / p50(2),
        p50(1) / p50(3)
    );
    println!(
        "binary size: {:.2} MB ({} bytes)",
        size(&plugin_bin) as f64 / 1e6,
        size(&plugin_bin)
    );
    println!("targets (over TLS): p50 <= 3 ms, p99 <= 10 ms, peak RSS <= 10 MB");
    let _ = dir;
    Ok(())
}
