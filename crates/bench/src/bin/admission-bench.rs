//! Admission pinning benchmark, in one run on loopback:
//!
//! - warm cache: AdmissionReview round trips over TLS (a Pod with 3
//!   containers, the captured v1.32 request shape) at a fixed rate (default
//!   500/s), open loop — each latency counts from its *scheduled* send time,
//!   so queueing cannot hide — and the peak rate, closed loop;
//! - cold cache: one Pod with 50 containers of 50 never-resolved tags, against
//!   the peer measured just before it in the same run: the same 50 HEAD
//!   manifest requests sent straight to the registry at once by a plain
//!   client (the slowest of them, and the batch's wall time), and one HEAD on
//!   its own.
//!
//! The broker is the real release binary (`pullbroker serve`, TLS), the
//! registry a real `docker-registry`. Run with `scripts/bench-admission.sh`;
//! `SLOW=1` also prints every warm request over 8 ms with its scheduled
//! time (how the TLS listener's missing `TCP_NODELAY` was found).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pullbroker_bench::{median, percentile, push_blob, put_manifest, start_broker};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::{admission, fixtures, Auth, Registry, RegistryOptions};
use serde_json::{json, Value};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const COLD_ROUNDS: usize = 5;
const BATCH: usize = 50;

struct Opts {
    duration: u64,
    rate: f64,
    connections: usize,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        duration: 10,
        rate: 500.0,
        connections: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--duration" => o.duration = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--connections" => o.connections = val()?.parse()?,
            "-h" | "--help" => {
                println!("admission-bench [--duration 10] [--rate 500] [--connections 16]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(o)
}

/// The captured user Pod with `images` as its containers.
fn pod_review(images: &[String]) -> Value {
    let mut review = admission::review("pod-create-by-user", "team-a", &[]);
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "IfNotPresent"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    review
}

fn tls_client(ca: &[u8]) -> Result<reqwest::Client> {
    pullbroker_broker::http_client(Some(ca)).map_err(anyhow::Error::msg)
}

async fn pin(client: &reqwest::Client, url: &str, body: &str, want: usize) -> Result<()> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    ensure!(resp.status().is_success(), "status {}", resp.status());
    let v: Value = resp.json().await?;
    ensure!(v["response"]["allowed"] == true, "denied: {v}");
    let pinned = v["response"]["auditAnnotations"]["pinned"]
        .as_str()
        .unwrap_or("")
        .matches("@sha256:")
        .count();
    ensure!(pinned == want, "pinned {pinned} of {want}: {v}");
    Ok(())
}

/// Open-loop load at `rate` for `duration` over `conns` TLS connections.
async fn open_loop(
    url: &str,
    body: Arc<String>,
    ca: &[u8],
    o: &Opts,
) -> Result<(Vec<Duration>, usize)> {
    let start = tokio::time::Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs(o.duration);
    let interval = Duration::from_secs_f64(o.connections as f64 / o.rate);
    let mut tasks = Vec::new();
    for k in 0..o.connections {
        let (url, body, client) = (url.to_string(), body.clone(), tls_client(ca)?);
        let conns = o.connections;
        tasks.push(tokio::spawn(async move {
            // Handshake before the clock starts, as a long-lived API server connection would.
            let _ = pin(&client, &url, &body, 3).await;
            let (mut lat, mut errors, mut n) = (Vec::new(), 0usize, 0u32);
            loop {
                let scheduled = start + interval.mul_f64(k as f64 / conns as f64) + interval * n;
                if scheduled >= end {
                    break;
                }
                tokio::time::sleep_until(scheduled).await;
                if pin(&client, &url, &body, 3).await.is_err() {
                    errors += 1;
                }
                let took = tokio::time::Instant::now() - scheduled;
                if std::env::var_os("SLOW").is_some() && took > Duration::from_millis(8) {
                    eprintln!("slow {:?} at {:?}", took, scheduled - start);
                }
                lat.push(took);
                n += 1;
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    Ok((all, errors))
}

/// Closed loop: `workers` back-to-back requests for `duration`; requests/s.
async fn peak(
    url: &str,
    body: Arc<String>,
    ca: &[u8],
    workers: usize,
    duration: Duration,
) -> Result<(f64, usize)> {
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, body, client) = (url.to_string(), body.clone(), tls_client(ca)?);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            while Instant::now() < end {
                match pin(&client, &url, &body, 3).await {
                    Ok(()) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ok += o;
        errors += e;
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), errors))
}

/// The peer: `tags` HEADs sent to the registry at once by a fresh plain client;
/// (slowest single HEAD, batch wall time).
async fn raw_heads(base: &str, tags: &[String]) -> Result<(Duration, Duration)> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let futs = tags.iter().map(|tag| {
        let (client, url) = (
            client.clone(),
            format!("{base}/v2/demo/app/manifests/{tag}"),
        );
        async move {
            let t = Instant::now();
            let resp = client.head(url).header("accept", ACCEPT).send().await?;
            ensure!(
                resp.headers().contains_key("docker-content-digest"),
                "no digest"
            );
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    });
    let times = futures::future::try_join_all(futs).await?;
    let wall = started.elapsed();
    Ok((times.into_iter().max().unwrap_or_default(), wall))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let o = opts()?;
    let bin = std::env::current_exe()?.with_file_name("pullbroker");
    ensure!(
        bin.exists(),
        "build the release binaries first (scripts/bench-admission.sh)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let registry = Registry::start(RegistryOptions {
        name: "bench-admission".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: None,
    })
    .map_err(anyhow::Error::msg)?;
    let base = format!("http://{}", registry.host());
    let cold_tags: Vec<String> = (0..COLD_ROUNDS * BATCH * 2)
        .map(|i| format!("t{i}"))
        .collect();
    rt.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::new();
        let img = fixtures::image("amd64", "admission bench\n", None);
        push_blob(&http, &base, "demo/app", &img.layer).await?;
        push_blob(&http, &base, "demo/app", &img.config).await?;
        for tag in ["v1", "v2", "v3"]
            .iter()
            .map(|s| s.to_string())
            .chain(cold_tags.iter().cloned())
        {
            put_manifest(&http, &base, "demo/app", &tag, &img.manifest).await?;
        }
        Ok::<(), anyhow::Error>(())
    })?;

    let serving = pullbroker_broker::tls::make_serving_cert(&["127.0.0.1".into()], 1)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), &serving.key_pem)?;
    std::fs::write(
        dir.path().join("jwks.json"),
        TestIssuer::rsa(KUBE_ISSUER).jwks(),
    )?;
    let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let host = registry.host();
    let config = format!(
        r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: bench}}
spec:
  listen: 127.0.0.1:{port}
  tls: {{certFile: tls.crt, keyFile: tls.key}}
  serviceAccountIssuer: {{issuer: "{KUBE_ISSUER}", jwksFile: jwks.json}}
---
apiVersion: v1
kind: Secret
metadata: {{name: auth, namespace: pullbroker-system}}
stringData: {{.dockerconfigjson: '{{"auths":{{"{host}":{{"username":"bench","password":"bench"}}}}}}'}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: reg}}
spec: {{registries: ["{host}"], source: {{secretRef: {{name: auth}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: pin}}
spec: {{credential: reg, subjects: {{namespaces: [team-a], serviceAccounts: ['*']}}, repositories: ['**'], purposes: [resolve]}}
"#
    );
    let config_path = dir.path().join("broker.yaml");
    std::fs::write(&config_path, config)?;
    let addr = format!("127.0.0.1:{port}");
    let mut broker = start_broker(&bin, &config_path, &addr)?;
    let url = format!("https://{addr}/v1/admission/pin?timeout=10s");
    let ca = serving.ca_pem.as_bytes().to_vec();

    let result = rt.block_on(async {
        // Cold: a 50-container Pod of never-resolved tags vs the raw HEADs.
        let client = tls_client(&ca)?;
        client.get(format!("https://{addr}/healthz")).send().await?;
        let single = {
            let c = reqwest::Client::builder().no_proxy().build()?;
            let t = Instant::now();
            c.head(format!("{base}/v2/demo/app/manifests/v1"))
                .header("accept", ACCEPT)
                .send()
                .await?;
            t.elapsed()
        };
        let mut ratios = Vec::new();
        let mut rows = Vec::new();
        for round in 0..COLD_ROUNDS {
            let peer_tags = &cold_tags[round * 2 * BATCH..round * 2 * BATCH + BATCH];
            let our_tags = &cold_tags[round * 2 * BATCH + BATCH..(round + 1) * 2 * BATCH];
            let (slowest, wall) = raw_heads(&base, peer_tags).await?;
            let images: Vec<String> = our_tags
                .iter()
                .map(|t| format!("{host}/demo/app:{t}"))
                .collect();
            let body = pod_review(&images).to_string();
            let t = Instant::now();
            pin(&client, &url, &body, BATCH).await?;
            let ours = t.elapsed();
            ratios.push(ours.as_secs_f64() / slowest.as_secs_f64());
            rows.push((slowest, wall, ours));
        }

        // Warm: a 3-container Pod, every tag cached after the first request.
        let images: Vec<String> = ["v1", "v2", "v3"]
            .iter()
            .map(|t| format!("{host}/demo/app:{t}"))
            .collect();
        let body = Arc::new(pod_review(&images).to_string());
        pin(&client, &url, &body, 3).await?;
        let (lat, errors) = open_loop(&url, body.clone(), &ca, &o).await?;
        let (peak_rps, peak_errors) = peak(&url, body, &ca, 32, Duration::from_secs(5)).await?;
        Ok::<_, anyhow::Error>((single, rows, ratios, lat, errors, peak_rps, peak_errors))
    });
    let _ = broker.kill();
    let _ = broker.wait();
    let (single, rows, ratios, lat, errors, peak_rps, peak_errors) = result?;

    println!("admission-bench: broker (release, TLS) + docker-registry 2.8 on loopback, 2 cores shared with the load generator\n");
    println!("cold: Pod with {BATCH} never-resolved tags (median of {COLD_ROUNDS} rounds)");
    println!("  one HEAD on its own: {}", ms(single));
    for (i, (slowest, wall, ours)) in rows.iter().enumerate() {
        println!(
            "  round {}: peer {BATCH} HEADs at once: slowest {}, wall {} | pullbroker pin {} = {:.2}x slowest HEAD",
            i + 1,
            ms(*slowest),
            ms(*wall),
            ms(*ours),
            ratios[i]
        );
    }
    println!(
        "  ratio pin / slowest HEAD (median): {:.2}x (target <= 1.5x)",
        median(ratios.clone())
    );
    println!(
        "\nwarm: Pod with 3 containers, {:.0} req/s open loop for {} s over {} TLS connections",
        o.rate, o.duration, o.connections
    );
    println!(
        "  requests {} errors {} | p50 {} p90 {} p99 {} (target <= 10 ms) max {}",
        lat.len(),
        errors,
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.90)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );
    println!("  peak (closed loop, 32 workers, 5 s): {peak_rps:.0} req/s, errors {peak_errors}");
    Ok(())
}
