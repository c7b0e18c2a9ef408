//! Resolver benchmark: 1,000 distinct tags over 50 repositories of one local
//! registry 2.8, measured in one run as
//!
//! - (d) the registry's raw HEAD-manifest ceiling (`ab -k -i`),
//! - (a) `pullbroker resolve` cold: a fresh process, no tokens or digests cached,
//! - (b) the resolver warm: in-process, digest cache off, connections reused,
//! - (c) a `skopeo inspect` loop over a sample,
//!
//! and reported as absolutes and ratios. Every digest is checked against the
//! one computed when the manifest was pushed. With `--proxy`, (a) and (b) run
//! again through a real forward proxy (Debian `squid` on loopback, which alone
//! resolves the registry's name; `HTTP_PROXY` as an operator sets it), and
//! the ratios proxied/direct are reported. Run with `scripts/bench-resolve.sh`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use pullbroker_bench::{children_cpu, median, proc_cpu, push_blob, put_manifest, self_cpu};
use pullbroker_core::Reference;
use pullbroker_registry::{ClientSettings, RegistryClient, Resolver, ResolverOptions};
use pullbroker_testenv::{fixtures, Auth, Registry, RegistryOptions};

struct Opts {
    repos: usize,
    tags: usize,
    concurrency: usize,
    runs: usize,
    skopeo_sample: usize,
    ab_requests: usize,
    json: Option<PathBuf>,
    proxy: bool,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        repos: 50,
        tags: 20,
        concurrency: 32,
        runs: 3,
        skopeo_sample: 20,
        ab_requests: 6000,
        json: None,
        proxy: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a number"))
        };
        match a.as_str() {
            "--repos" => o.repos = num("--repos")?,
            "--tags" => o.tags = num("--tags")?,
            "--concurrency" => o.concurrency = num("--concurrency")?,
            "--runs" => o.runs = num("--runs")?.max(1),
            "--skopeo-sample" => o.skopeo_sample = num("--skopeo-sample")?.max(1),
            "--ab-requests" => o.ab_requests = num("--ab-requests")?,
            "--json" => o.json = Some(args.next().context("--json needs a path")?.into()),
            "--proxy" => o.proxy = true,
            "-h" | "--help" => {
                println!("resolve-bench [--repos 50] [--tags 20] [--concurrency 32] [--runs 3] [--skopeo-sample 20] [--ab-requests 6000] [--json FILE] [--proxy]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(o)
}

fn pullbroker_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PULLBROKER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join("pullbroker");
    ensure!(p.is_file(), "{} not found: build it with `cargo build --release -p pullbroker` (scripts/bench-resolve.sh does)", p.display());
    Ok(p)
}

/// Pushes `repos × tags` distinct manifests; returns reference → digest.
async fn seed(host: &str, o: &Opts) -> Result<Vec<(String, String)>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{host}");
    let work: Vec<usize> = (0..o.repos).collect();
    let results: Vec<Result<Vec<(String, String)>>> = futures::stream::iter(work)
        .map(|r| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let repo = format!("bench/r{r:02}");
                let mut out = Vec::new();
                for t in 0..o.tags {
                    let tag = format!("t{t:03}");
                    let img = fixtures::image(
                        "amd64",
                        "bench layer\n",
                        Some(serde_json::json!({"bench.tag": format!("{repo}:{tag}")})),
                    );
                    if t == 0 {
                        push_blob(&http, &base, &repo, &img.layer).await?;
                        push_blob(&http, &base, &repo, &img.config).await?;
                    }
                    put_manifest(&http, &base, &repo, &tag, &img.manifest).await?;
                    out.push((format!("{host}/{repo}:{tag}"), img.manifest.digest.clone()));
                }
                Ok(out)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort();
    Ok(all)
}

fn ab_ceiling(url: &str, o: &Opts, registry_pid: u32) -> Result<(f64, Duration)> {
    let accept = format!("Accept: {}", pullbroker_registry::manifest::ACCEPT);
    let cpu0 = proc_cpu(registry_pid);
    let out = Command::new("ab")
        .args([
            "-q",
            "-k",
            "-i",
            "-n",
            &o.ab_requests.to_string(),
            "-c",
            &o.concurrency.to_string(),
            "-H",
            &accept,
            url,
        ])
        .output()
        .context("cannot run ab (apt-get install apache2-utils)")?;
    let registry_cpu = proc_cpu(registry_pid) - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text
        .lines()
        .find(|l| l.starts_with("Failed requests:"))
        .unwrap_or("")
        .to_string();
    ensure!(failed.ends_with(" 0"), "ab saw failures: {failed}");
    let non2xx = text.lines().find(|l| l.starts_with("Non-2xx responses:"));
    ensure!(non2xx.is_none(), "ab saw {}", non2xx.unwrap_or(""));
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests per second:"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
        .context("ab printed no requests per second")?;
    Ok((rps, registry_cpu / o.ab_requests as u32))
}

struct Run {
    per_sec: f64,
    cpu_per_image: Duration,
    registry_cpu_per_image: Duration,
}

/// How a run reaches the registry: directly, or by a name only the proxy
/// resolves, through it.
struct Via {
    /// `(HTTP_PROXY, registry host as the proxy knows it)`.
    proxy: Option<(String, String)>,
}

fn cold_run(
    bin: &PathBuf,
    file: &std::path::Path,
    expected: &HashMap<String, String>,
    o: &Opts,
    registry_pid: u32,
    via: &Via,
) -> Result<Run> {
    let (cpu0, reg0) = (children_cpu(), proc_cpu(registry_pid));
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args([
        "resolve",
        "--no-default-config",
        "--no-progress",
        "--concurrency",
        &o.concurrency.to_string(),
    ]);
    if let Some((proxy, name)) = &via.proxy {
        cmd.env("HTTP_PROXY", proxy).args(["--plain-http", name]);
    }
    let out = cmd.arg("-f").arg(file).stdin(Stdio::null()).output()?;
    let wall = start.elapsed();
    let (cpu, reg) = (children_cpu() - cpu0, proc_cpu(registry_pid) - reg0);
    ensure!(
        out.status.success(),
        "pullbroker resolve failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in text.lines() {
        let (image, digest) = line.split_once('@').context("output line without digest")?;
        ensure!(
            expected.get(image) == Some(&digest.to_string()),
            "wrong digest for {image}: {digest}"
        );
        n += 1;
    }
    ensure!(n == expected.len(), "resolved {n} of {}", expected.len());
    Ok(Run {
        per_sec: n as f64 / wall.as_secs_f64(),
        cpu_per_image: cpu / n as u32,
        registry_cpu_per_image: reg / n as u32,
    })
}

async fn warm_runs(
    refs: &[Reference],
    expected: &HashMap<String, String>,
    o: &Opts,
    registry_pid: u32,
    via: &Via,
) -> Result<Vec<Run>> {
    let client = RegistryClient::new(ClientSettings {
        max_idle_per_host: o.concurrency,
        plain_http: via.proxy.iter().map(|(_, name)| name.clone()).collect(),
        proxy: via
            .proxy
            .as_ref()
            .map(|(url, _)| pullbroker_core::proxy::ProxyEnv {
                http_proxy: Some(url.clone()),
                ..Default::default()
            }),
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    let resolver = Resolver::new(
        client,
        Arc::new(pullbroker_core::keychain::Anonymous),
        ResolverOptions {
            concurrency: o.concurrency,
            cache_ttl: Duration::ZERO,
            platform: None,
        },
    );
    let check = |outcomes: Vec<
        Result<pullbroker_registry::Resolved, pullbroker_registry::RegistryError>,
    >|
     -> Result<()> {
        for (r, outcome) in refs.iter().zip(outcomes) {
            let got = outcome?.digest.to_string();
            let key = format!(
                "{}/{}:{}",
                r.registry(),
                r.repository(),
                r.tag().unwrap_or_default()
            );
            ensure!(expected.get(&key) == Some(&got), "wrong digest for {key}");
        }
        Ok(())
    };
    check(resolver.resolve_all(refs, |_, _| {}).await)?; // warm: connections + endpoint
    let mut runs = Vec::new();
    for _ in 0..o.runs {
        let (cpu0, reg0) = (self_cpu(), proc_cpu(registry_pid));
        let start = Instant::now();
        let outcomes = resolver.resolve_all(refs, |_, _| {}).await;
        let wall = start.elapsed();
        let (cpu, reg) = (self_cpu() - cpu0, proc_cpu(registry_pid) - reg0);
        check(outcomes)?;
        runs.push(Run {
            per_sec: refs.len() as f64 / wall.as_secs_f64(),
            cpu_per_image: cpu / refs.len() as u32,
            registry_cpu_per_image: reg / refs.len() as u32,
        });
    }
    Ok(runs)
}

fn skopeo_loop(sample: &[(String, String)]) -> Result<(f64, Duration)> {
    let cpu0 = children_cpu();
    let start = Instant::now();
    for (image, digest) in sample {
        let got = pullbroker_testenv::skopeo::digest(image, None).map_err(anyhow::Error::msg)?;
        ensure!(&got == digest, "skopeo disagrees on {image}");
    }
    let wall = start.elapsed();
    Ok((
        sample.len() as f64 / wall.as_secs_f64(),
        (children_cpu() - cpu0) / sample.len() as u32,
    ))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<()> {
    let o = opts()?;
    pullbroker_testenv::process::require_tools(&["docker-registry", "skopeo", "ab"])
        .map_err(anyhow::Error::msg)?;
    let bin = pullbroker_bin()?;
    let registry = Registry::start(RegistryOptions {
        name: "bench".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: None,
    })
    .map_err(anyhow::Error::msg)?;
    let host = registry.host();
    let pid = registry.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let seeded = rt.block_on(seed(&host, &o))?;
    let expected: HashMap<String, String> = seeded.iter().cloned().collect();
    let dir = tempfile_dir()?;
    let file = dir.join("tags.txt");
    std::fs::write(
        &file,
        seeded
            .iter()
            .map(|(r, _)| format!("{r}\n"))
            .collect::<String>(),
    )?;
    let refs: Vec<Reference> = seeded
        .iter()
        .map(|(r, _)| Reference::parse(r))
        .collect::<Result<_, _>>()?;
    println!(
        "seeded {} tags in {} repositories on {host} (registry 2.8, quiet logging)",
        seeded.len(),
        o.repos
    );

    let url = format!("http://{host}/v2/bench/r00/manifests/t000");
    let (ceiling, ab_reg_cpu) = ab_ceiling(&url, &o, pid)?;
    let direct = Via { proxy: None };
    let cold: Vec<Run> = (0..o.runs)
        .map(|_| cold_run(&bin, &file, &expected, &o, pid, &direct))
        .collect::<Result<_>>()?;
    let warm = rt.block_on(warm_runs(&refs, &expected, &o, pid, &direct))?;
    // The same tags by a name only squid resolves, through it.
    let proxied = if o.proxy {
        let name = "registry.bench.test";
        let squid = pullbroker_testenv::squid::Squid::start(&[name]).map_err(anyhow::Error::msg)?;
        let named = format!("{name}:{}", host.rsplit_once(':').map_or("", |(_, p)| p));
        let rename = |r: &str| r.replacen(&host, &named, 1);
        let file = dir.join("tags-proxied.txt");
        std::fs::write(
            &file,
            seeded
                .iter()
                .map(|(r, _)| format!("{}\n", rename(r)))
                .collect::<String>(),
        )?;
        let expected: HashMap<String, String> =
            seeded.iter().map(|(r, d)| (rename(r), d.clone())).collect();
        let refs: Vec<Reference> = seeded
            .iter()
            .map(|(r, _)| Reference::parse(&rename(r)))
            .collect::<Result<_, _>>()?;
        let via = Via {
            proxy: Some((squid.url(), named)),
        };
        let cold: Vec<Run> = (0..o.runs)
            .map(|_| cold_run(&bin, &file, &expected, &o, pid, &via))
            .collect::<Result<_>>()?;
        let warm = rt.block_on(warm_runs(&refs, &expected, &o, pid, &via))?;
        Some((cold, warm))
    } else {
        None
    };
    let step = (seeded.len() / o.skopeo_sample).max(1);
    let sample: Vec<(String, String)> = seeded
        .iter()
        .step_by(step)
        .take(o.skopeo_sample)
        .cloned()
        .collect();
    let (skopeo_rate, skopeo_cpu) = skopeo_loop(&sample)?;

    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let cold_rate = med(&cold, |r| r.per_sec);
    let warm_rate = med(&warm, |r| r.per_sec);
    let cold_cpu = med(&cold, |r| us(r.cpu_per_image));
    let warm_cpu = med(&warm, |r| us(r.cpu_per_image));
    let cold_reg = med(&cold, |r| us(r.registry_cpu_per_image));
    let warm_reg = med(&warm, |r| us(r.registry_cpu_per_image));

    println!();
    println!(
        "concurrency {}, median of {} runs, {} images per run",
        o.concurrency,
        o.runs,
        seeded.len()
    );
    println!(
        "{:<44} {:>10} {:>16} {:>18}",
        "", "images/s", "our CPU/image", "registry CPU/req"
    );
    println!(
        "{:<44} {:>10.0} {:>16} {:>15.0} µs",
        "(d) registry ceiling: ab -k -i HEAD",
        ceiling,
        "-",
        us(ab_reg_cpu)
    );
    println!(
        "{:<44} {:>10.0} {:>13.0} µs {:>15.0} µs",
        "(a) pullbroker resolve, cold process", cold_rate, cold_cpu, cold_reg
    );
    println!(
        "{:<44} {:>10.0} {:>13.0} µs {:>15.0} µs",
        "(b) resolver warm (no digest cache)", warm_rate, warm_cpu, warm_reg
    );
    println!(
        "{:<44} {:>10.1} {:>13.0} µs {:>18}",
        format!("(c) skopeo inspect loop ({} images)", sample.len()),
        skopeo_rate,
        us(skopeo_cpu),
        "-"
    );
    println!();
    let a_vs_c = cold_rate / skopeo_rate;
    let a_vs_d = cold_rate / ceiling;
    let b_vs_d = warm_rate / ceiling;
    let mut proxy_json = serde_json::Value::Null;
    if let Some((pcold, pwarm)) = &proxied {
        let (pc, pw) = (med(pcold, |r| r.per_sec), med(pwarm, |r| r.per_sec));
        println!(
            "{:<44} {:>10.0} {:>13.0} µs {:>15.0} µs",
            "(a') resolve, cold, through squid",
            pc,
            med(pcold, |r| us(r.cpu_per_image)),
            med(pcold, |r| us(r.registry_cpu_per_image))
        );
        println!(
            "{:<44} {:>10.0} {:>13.0} µs {:>15.0} µs",
            "(b') resolver warm, through squid",
            pw,
            med(pwarm, |r| us(r.cpu_per_image)),
            med(pwarm, |r| us(r.registry_cpu_per_image))
        );
        println!(
            "time through the proxy / direct: cold {:.2}x, warm {:.2}x   (target <= 1.3x)",
            cold_rate / pc,
            warm_rate / pw
        );
        proxy_json = serde_json::json!({"cold_images_per_s": pc, "warm_images_per_s": pw,
            "cold_time_ratio": cold_rate / pc, "warm_time_ratio": warm_rate / pw});
    }
    println!("(a) / (c) = {a_vs_c:.1}x   (target >= 20x)");
    println!("(a) / (d) = {:.0}%   (target >= 70%)", a_vs_d * 100.0);
    println!("(b) / (d) = {:.0}%   (target >= 85%)", b_vs_d * 100.0);
    if let Some(path) = &o.json {
        let json = serde_json::json!({
            "images": seeded.len(), "repositories": o.repos, "concurrency": o.concurrency, "runs": o.runs,
            "ceiling_rps": ceiling, "registry_cpu_us_per_request_ab": us(ab_reg_cpu),
            "cold_images_per_s": cold_rate, "cold_cpu_us_per_image": cold_cpu,
            "warm_images_per_s": warm_rate, "warm_cpu_us_per_image": warm_cpu,
            "skopeo_images_per_s": skopeo_rate, "skopeo_cpu_us_per_image": us(skopeo_cpu),
            "cold_vs_skopeo": a_vs_c, "cold_vs_ceiling": a_vs_d, "warm_vs_ceiling": b_vs_d,
            "proxy": proxy_json,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("resolve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
