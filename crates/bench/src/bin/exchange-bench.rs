//! Broker benchmark, in one run on loopback:
//!
//! - `/v1/exchange` peak throughput with RS256 service-account tokens and a
//!   warm JWKS (`wrk`, closed loop, 2,000 distinct tokens cycling);
//! - `/v1/exchange` latency at a fixed 10,000 requests/s (half the 20k target),
//!   open loop: each request's latency counts from its *scheduled* send time,
//!   so a stalled server cannot hide queueing (no coordinated omission);
//! - `/token` throughput (`wrk`) against the registry's own HEAD ceiling
//!   (`ab -k -i`) measured in the same run;
//! - the cost of one RS256 verification (the work a never-seen token costs);
//! - the TokenReview cache: `/v1/exchange` with `tokenReview` (against the
//!   fake API server's TokenReview, tokens from its TokenRequest) with the
//!   default cache, without a cache (`cacheTtl: 0s`), and offline only, in
//!   the same run; TokenReview calls per distinct token per minute against
//!   the cache's bound.
//!
//! - while the API server hangs (accepts, never answers): exchanges of
//!   recently reviewed tokens and of never-seen ones.
//!
//! The broker is the real release binary (`pullbroker serve`), over TLS as
//! it ships; the peak is also measured over plain HTTP from the same process
//! (`plainHttpListen`) for comparison. Run with `scripts/bench-broker.sh`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use pullbroker_bench::{
    percentile, proc_cpu, push_blob, put_manifest, serve_tls_too, start_broker,
    write_broker_config, write_exchange_lua, wrk, Opts, WrkResult, BENCH_SERVICE as SERVICE,
};
use pullbroker_broker::satoken::{IssuerSettings, JwksSource, Verifier};
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};
use pullbroker_testenv::{fixtures, Auth, Registry, RegistryOptions};

const TOKENS: usize = 2000;

/// The options, and `--versus BIN`: another `pullbroker` build to compare.
fn opts() -> Result<(Opts, Option<std::path::PathBuf>)> {
    let mut o = Opts {
        duration: 10,
        rate: 10_000.0,
        connections: 64,
    };
    let mut versus = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--duration" => o.duration = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--connections" => o.connections = val()?.parse()?,
            "--versus" => versus = Some(val()?.into()),
            "-h" | "--help" => {
                println!("exchange-bench [--duration 10] [--rate 10000] [--connections 64] [--versus OTHER_PULLBROKER_BINARY]\n\n\
                    --versus: only the TLS peak, of this build and of OTHER (another revision's release build),\n\
                    alternating over 3 rounds in this one run; prints each one's median and the ratio.");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok((o, versus))
}

/// `/v1/exchange` TLS peak of two builds on the same machine, registry and
/// tokens: each serves its own copy of the config on its own port; rounds
/// alternate so drift in the machine's load falls on both alike.
fn versus(
    builds: [&Path; 2],
    o: &Opts,
    registry: &str,
    issuer: &TestIssuer,
    tokens: &Path,
    lua: &Path,
    dir: &Path,
) -> Result<()> {
    let mut brokers = Vec::new();
    for (i, bin) in builds.iter().enumerate() {
        let sub = dir.join(format!("build-{i}"));
        std::fs::create_dir_all(&sub)?;
        let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
        let plain = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
        let config = write_broker_config(&sub, registry, issuer, port)?;
        serve_tls_too(&config, plain)?;
        let addr = format!("127.0.0.1:{port}");
        brokers.push((start_broker(bin, &config, &addr)?, addr));
    }
    let tokens = tokens.to_str().context("path")?;
    let run = |addr: &str, o: &Opts| {
        wrk(
            &format!("https://{addr}/v1/exchange"),
            Some(lua),
            &[],
            o,
            &[("TOKENS", tokens)],
        )
    };
    for (_, addr) in &brokers {
        run(addr, &Opts { duration: 2, ..*o })?;
    }
    let mut rps = [Vec::new(), Vec::new()];
    let mut cpu = [Duration::ZERO; 2];
    let mut requests = [0u64; 2];
    for _round in 0..3 {
        for (i, (child, addr)) in brokers.iter().enumerate() {
            let cpu0 = proc_cpu(child.id());
            let r = run(addr, o)?;
            cpu[i] += proc_cpu(child.id()) - cpu0;
            requests[i] += r.requests;
            rps[i].push(r.rps);
        }
    }
    for (mut child, _) in brokers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut rps[0]), median(&mut rps[1]));
    println!(
        "/v1/exchange peak over TLS, 3 alternating rounds of wrk -t2 -c{} -d{}s each",
        o.connections, o.duration
    );
    println!("{:<60} {:>10} {:>14}", "build", "req/s", "CPU/exchange");
    for (i, (bin, r)) in builds.iter().zip([a, b]).enumerate() {
        let per = cpu[i] / requests[i].max(1) as u32;
        println!(
            "{:<60} {:>10.0} {:>11.1} µs",
            bin.display(),
            r,
            per.as_secs_f64() * 1e6
        );
    }
    println!("ratio (this build / other): {:.3}", a / b);
    Ok(())
}

/// Open-loop load at `rate` for `duration`; latencies from scheduled times.
async fn open_loop(
    client: impl Fn() -> reqwest::ClientBuilder,
    url: String,
    bodies: Arc<Vec<String>>,
    rate: f64,
    duration: Duration,
    conns: usize,
) -> Result<(Vec<Duration>, usize)> {
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let mut tasks = Vec::new();
    for k in 0..conns {
        let (url, bodies) = (url.clone(), bodies.clone());
        let client = client().pool_max_idle_per_host(1).build()?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut n = 0u32;
            loop {
                let scheduled = start + interval.mul_f64(k as f64 / conns as f64) + interval * n;
                if scheduled >= end {
                    break;
                }
                tokio::time::sleep_until(scheduled).await;
                let body = bodies[(k + n as usize * conns) % bodies.len()].clone();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if !ok {
                    errors += 1;
                }
                lat.push(tokio::time::Instant::now() - scheduled);
                n += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    Ok((all, errors))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let (o, other) = opts()?;
    pullbroker_testenv::process::require_tools(&["docker-registry", "wrk", "ab"])
        .map_err(anyhow::Error::msg)?;
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("pullbroker");
    ensure!(
        bin.is_file(),
        "build pullbroker first: cargo build --release -p pullbroker"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;

    // A registry with one manifest, for the HEAD ceiling.
    let registry = Registry::start(RegistryOptions {
        name: "bench-ceiling".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: None,
    })
    .map_err(anyhow::Error::msg)?;
    rt.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://{}", registry.host());
        let img = fixtures::image("amd64", "bench\n", None);
        push_blob(&http, &base, "demo/app", &img.layer).await?;
        push_blob(&http, &base, "demo/app", &img.config).await?;
        put_manifest(&http, &base, "demo/app", "v1", &img.manifest).await
    })?;

    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let addr = format!("127.0.0.1:{port}");
    let config = write_broker_config(dir.path(), &registry.host(), &issuer, port)?;
    let plain_port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let ca = serve_tls_too(&config, plain_port)?;
    let ca_pem = std::fs::read(&ca)?;
    let tls_client = || {
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).expect("our CA")])
    };
    let image = format!("{}/demo/app:v1", registry.host());
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| issuer.token("team-a", &format!("app-{i}"), "pullbroker"))
        .collect();
    std::fs::write(dir.path().join("tokens.txt"), tokens.join("\n") + "\n")?;
    let lua = write_exchange_lua(&dir.path().join("exchange.lua"), &image)?;
    if let Some(other) = &other {
        ensure!(
            other.is_file(),
            "--versus {}: no such binary",
            other.display()
        );
        return versus(
            [&bin, other],
            &o,
            &registry.host(),
            &issuer,
            &dir.path().join("tokens.txt"),
            &lua,
            dir.path(),
        );
    }

    // The cost of verifying a never-seen token, in-process.
    let verify_cost = rt.block_on(async {
        let settings = IssuerSettings {
            issuer: KUBE_ISSUER.into(),
            audience: "pullbroker".into(),
            jwks: JwksSource::Static(issuer.jwks()),
            leeway: Duration::from_secs(30),
            fetch_token: None,
            ca_pem: None,
            min_refresh_interval: Duration::from_secs(10),
            keys_refresh_interval: Duration::from_secs(300),
            review_cache: Default::default(),
            dev_keys_allowed: false,
        };
        let v = Verifier::new(settings, None)
            .await
            .map_err(anyhow::Error::msg)?;
        let now = pullbroker_testenv::issuer::now();
        let started = Instant::now();
        for t in &tokens {
            v.verify(t, now).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok::<_, anyhow::Error>(started.elapsed() / tokens.len() as u32)
    })?;

    let mut broker = start_broker(&bin, &config, &addr)?;
    let pid = broker.id();
    let tokens_env = dir.path().join("tokens.txt");
    let tokens_env = tokens_env.to_str().context("path")?;
    // Warm-up: every token seen once (the broker remembers verified tokens).
    wrk(
        &format!("https://{addr}/v1/exchange"),
        Some(&lua),
        &[],
        &Opts { duration: 2, ..o },
        &[("TOKENS", tokens_env)],
    )?;

    let cpu0 = proc_cpu(pid);
    let peak = wrk(
        &format!("https://{addr}/v1/exchange"),
        Some(&lua),
        &[],
        &o,
        &[("TOKENS", tokens_env)],
    )?;
    let cpu_per_exchange = (proc_cpu(pid) - cpu0) / peak.requests.max(1) as u32;
    // The same broker process over plain HTTP, for comparison.
    let plain_peak = wrk(
        &format!("http://127.0.0.1:{plain_port}/v1/exchange"),
        Some(&lua),
        &[],
        &o,
        &[("TOKENS", tokens_env)],
    )?;

    let bodies: Arc<Vec<String>> = Arc::new(
        tokens
            .iter()
            .map(|t| format!(r#"{{"token":"{t}","image":"{image}"}}"#))
            .collect(),
    );
    let (lat, errors) = rt.block_on(open_loop(
        tls_client,
        format!("https://{addr}/v1/exchange"),
        bodies,
        o.rate,
        Duration::from_secs(o.duration),
        o.connections,
    ))?;
    ensure!(errors == 0, "{errors} exchanges failed under fixed load");
    let achieved = lat.len() as f64 / o.duration as f64;

    // /token with a broker credential, and the registry ceiling.
    let exchange: serde_json::Value = rt.block_on(async {
        tls_client()
            .build()?
            .post(format!("https://{addr}/v1/exchange"))
            .json(&serde_json::json!({"token": tokens[0], "image": image}))
            .send()
            .await?
            .json()
            .await
            .map_err(anyhow::Error::from)
    })?;
    let password = exchange["password"]
        .as_str()
        .context("exchange gave no password")?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("pullbroker:{password}"));
    let token_url =
        format!("https://{addr}/token?service={SERVICE}&scope=repository:demo/app:pull");
    let token = wrk(
        &token_url,
        None,
        &[format!("Authorization: Basic {basic}")],
        &o,
        &[],
    )?;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = broker.wait();

    let accept = format!("Accept: {}", pullbroker_registry::manifest::ACCEPT);
    let ab = Command::new("ab")
        .args([
            "-q",
            "-k",
            "-i",
            "-n",
            "20000",
            "-c",
            &o.connections.min(64).to_string(),
            "-H",
            &accept,
        ])
        .arg(format!(
            "http://{}/v2/demo/app/manifests/v1",
            registry.host()
        ))
        .output()?;
    let ab_text = String::from_utf8_lossy(&ab.stdout);
    let ceiling: f64 = ab_text
        .lines()
        .find(|l| l.starts_with("Requests per second:"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .context("ab printed no rate")?;

    println!("broker: pullbroker serve (release) over TLS (rustls, aws-lc-rs), {TOKENS} distinct RS256 SA tokens, warm JWKS, wrk -t2 -c{} -d{}s (keep-alive)", o.connections, o.duration);
    println!();
    println!("{:<52} {:>12} {:>10} {:>10}", "", "req/s", "p50", "p99");
    println!(
        "{:<52} {:>12.0} {:>10} {:>10}",
        "/v1/exchange peak over TLS (wrk, closed loop)", peak.rps, peak.p50, peak.p99
    );
    println!(
        "{:<52} {:>12.0} {:>10} {:>10}",
        "/v1/exchange peak over plain HTTP (same process)",
        plain_peak.rps,
        plain_peak.p50,
        plain_peak.p99
    );
    println!(
        "{:<52} {:>12.0} {:>10} {:>10}",
        format!("/v1/exchange at {:.0}/s (open loop)", o.rate),
        achieved,
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "{:<52} {:>12.0} {:>10} {:>10}",
        "/token with a broker credential (wrk)", token.rps, token.p50, token.p99
    );
    println!(
        "{:<52} {:>12.0} {:>10} {:>10}",
        "registry HEAD ceiling (ab -k -i, same run)", ceiling, "-", "-"
    );
    println!();
    println!("broker CPU per exchange at peak: {:.0} µs; one RS256 verification (never-seen token): {:.0} µs", cpu_per_exchange.as_secs_f64() * 1e6, verify_cost.as_secs_f64() * 1e6);
    println!(
        "exchange peak over TLS: {:.2}x the 40,000/s target; TLS / plain HTTP: {:.2}x",
        peak.rps / 40_000.0,
        peak.rps / plain_peak.rps
    );
    println!(
        "p99 at {:.0}/s: {} (target < 5 ms)",
        o.rate,
        ms(percentile(&lat, 0.99))
    );
    println!(
        "/token vs registry HEAD ceiling: {:.1}x (target >= 1x)",
        token.rps / ceiling
    );

    let (review, hung) = review_section(&rt, &bin, dir.path(), &registry.host(), &image, &o)?;
    println!();
    println!(
        "TokenReview: {TOKENS} distinct tokens from the fake API server's TokenRequest, wrk -t2 -c{} -d{}s each",
        o.connections, o.duration
    );
    println!(
        "{:<52} {:>12} {:>14} {:>18}",
        "", "exchanges/s", "TokenReviews", "per token per min"
    );
    for r in &review {
        println!(
            "{:<52} {:>12.0} {:>14} {:>18.2}",
            r.name, r.rps, r.reviews, r.per_token_minute
        );
    }
    let (offline, cached, uncached) = (&review[0], &review[1], &review[2]);
    println!(
        "cached tokenReview vs offline: {:.2}x (target >= 0.5x); vs uncached tokenReview: {:.2}x",
        cached.rps / offline.rps,
        cached.rps / uncached.rps
    );
    println!(
        "TokenReviews per distinct token per minute: {:.2} cached (bound {:.0}: one per {}s cacheTtl) vs {:.2} uncached",
        cached.per_token_minute,
        60.0 / REVIEW_TTL_SECS as f64,
        REVIEW_TTL_SECS,
        uncached.per_token_minute
    );
    println!();
    println!("API server hung (accepts connections, never answers), tokenReview cached as above:");
    println!(
        "  {TOKENS} tokens reviewed in the last minute (wrk 5 s): {:.0} exchanges/s, p50 {}, p99 {}, all 200 (stale verdicts served)",
        hung.recent.rps, hung.recent.p50, hung.recent.p99
    );
    println!(
        "  {UNSEEN} never-seen tokens at once: {} of {UNSEEN} answered 503, p50 {}, max {} (target p99 <= 3 s)",
        hung.unseen_503,
        ms(percentile(&hung.unseen, 0.5)),
        ms(*hung.unseen.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}

/// A wrk script posting `/v1/exchange` for `image`, cycling through the
/// tokens in the file named by `$TOKENS`.
/// The default positive TokenReview cache ttl, as configured below.
const REVIEW_TTL_SECS: u64 = 5;

struct ReviewRun {
    name: &'static str,
    rps: f64,
    reviews: usize,
    per_token_minute: f64,
}

/// Tokens kept for the hung-API measurement: never reviewed before it.
const UNSEEN: usize = 32;

/// `/v1/exchange` while the API server hangs.
struct HungRun {
    /// Tokens reviewed within the stale window: wrk's figures.
    recent: WrkResult,
    /// Never-seen tokens, all at once: each one's latency, and how many got 503.
    unseen: Vec<Duration>,
    unseen_503: usize,
}

/// `/v1/exchange` throughput offline, with cached and with uncached
/// TokenReview, against the fake API server, and the reviews it sent.
fn review_section(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    registry: &str,
    image: &str,
    o: &Opts,
) -> Result<(Vec<ReviewRun>, HungRun)> {
    use pullbroker_testenv::fakeapi::FakeApi;
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    let mut tokens: Vec<String> = rt.block_on(async {
        let http = reqwest::Client::new();
        let post = |path: String, body: serde_json::Value| {
            let http = http.clone();
            let url = format!("{}{path}", fake.url);
            async move {
                let v: serde_json::Value = http.post(url).json(&body).send().await?.json().await?;
                Ok::<_, anyhow::Error>(v)
            }
        };
        post("/api/v1/namespaces".into(), serde_json::json!({"metadata": {"name": "team-a"}})).await?;
        let mut tokens = Vec::with_capacity(TOKENS + UNSEEN);
        for i in 0..TOKENS + UNSEEN {
            let sa = format!("app-{i}");
            post(
                "/api/v1/namespaces/team-a/serviceaccounts".into(),
                serde_json::json!({"metadata": {"name": sa}}),
            )
            .await?;
            let v = post(
                format!("/api/v1/namespaces/team-a/serviceaccounts/{sa}/token"),
                serde_json::json!({"spec": {"audiences": ["pullbroker"], "expirationSeconds": 3600}}),
            )
            .await?;
            tokens.push(v["status"]["token"].as_str().context("no token")?.to_string());
        }
        Ok::<_, anyhow::Error>(tokens)
    })?;
    // Kept out of every run: the tokens the API server has never reviewed.
    let unseen = tokens.split_off(TOKENS);
    let tokens_file = dir.join("review-tokens.txt");
    std::fs::write(&tokens_file, tokens.join("\n") + "\n")?;
    std::fs::write(dir.join("reviewer-token"), "unused-by-the-fake\n")?;
    let lua = write_exchange_lua(&dir.join("review.lua"), image)?;
    let reviews = || {
        fake.writes()
            .get("create tokenreviews")
            .copied()
            .unwrap_or(0)
    };
    let modes: [(&str, Option<&str>); 3] = [
        ("offline verification only", None),
        ("tokenReview, cached (cacheTtl 5s, negative 2s)", Some("5s")),
        ("tokenReview, uncached (cacheTtl 0s)", Some("0s")),
    ];
    let mut out = Vec::new();
    let mut hung = None;
    for (name, ttl) in modes {
        let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
        let addr = format!("127.0.0.1:{port}");
        let written = write_broker_config(dir, registry, &TestIssuer::rsa(KUBE_ISSUER), port)?;
        let plain_port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
        let ca = serve_tls_too(&written, plain_port)?;
        let base = std::fs::read_to_string(written)?;
        let review = ttl.map_or(String::new(), |t| {
            format!(
                ", tokenReview: {{apiServer: \"{}\", tokenFile: reviewer-token, cacheTtl: {t}, negativeCacheTtl: {t}}}",
                fake.url
            )
        });
        let issuer = format!(
            "serviceAccountIssuer: {{issuer: \"{KUBE_ISSUER}\", jwksUrl: \"{}/openid/v1/jwks\"{review}}}",
            fake.url
        );
        let config = base.replace(
            &format!("serviceAccountIssuer: {{issuer: \"{KUBE_ISSUER}\", jwksFile: jwks.json}}"),
            &issuer,
        );
        ensure!(config.contains("jwksUrl"), "the bench config changed shape");
        let path = dir.join("review-broker.yaml");
        std::fs::write(&path, config)?;
        let mut broker = start_broker(bin, &path, &addr)?;
        let url = format!("https://{addr}/v1/exchange");
        let env = [("TOKENS", tokens_file.to_str().context("path")?)];
        // Warm-up: keys fetched, every token verified once.
        wrk(&url, Some(&lua), &[], &Opts { duration: 2, ..*o }, &env)?;
        let before = reviews();
        let run = wrk(&url, Some(&lua), &[], o, &env)?;
        let sent = reviews() - before;
        if ttl == Some("5s") {
            // The API server accepts connections and never answers.
            fake.set_hung(true);
            let measured = (|| {
                let recent = wrk(&url, Some(&lua), &[], &Opts { duration: 5, ..*o }, &env)?;
                let ca_pem = std::fs::read(&ca)?;
                let (unseen, unseen_503) = rt.block_on(async {
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem)?])
                        .build()?;
                    let calls = unseen.iter().map(|t| {
                        let (client, url) = (client.clone(), url.clone());
                        let body = serde_json::json!({"token": t, "image": image});
                        async move {
                            let started = Instant::now();
                            let status = client.post(url).json(&body).send().await?.status();
                            Ok::<_, anyhow::Error>((started.elapsed(), status.as_u16()))
                        }
                    });
                    let answers = futures::future::try_join_all(calls).await?;
                    let mut lat: Vec<Duration> = answers.iter().map(|a| a.0).collect();
                    lat.sort();
                    Ok::<_, anyhow::Error>((lat, answers.iter().filter(|a| a.1 == 503).count()))
                })?;
                Ok::<_, anyhow::Error>(HungRun {
                    recent,
                    unseen,
                    unseen_503,
                })
            })();
            fake.set_hung(false);
            hung = Some(measured?);
        }
        let _ = Command::new("kill").arg(broker.id().to_string()).status();
        let _ = broker.wait();
        out.push(ReviewRun {
            name,
            rps: run.rps,
            reviews: sent,
            per_token_minute: sent as f64 / TOKENS as f64 / (o.duration as f64 / 60.0),
        });
    }
    Ok((out, hung.context("the cached mode ran")?))
}
