//! Shared helpers for the benchmark binaries: CPU accounting, percentiles,
//! and seeding a registry through the distribution API.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pullbroker_credentials::keys::SigningKey;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};

/// The `service` of the benchmarks' token-issuer credential.
pub const BENCH_SERVICE: &str = "bench-registry";

/// User+system CPU time of this process or of its waited-for children.
pub fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub fn self_cpu() -> Duration {
    cpu(libc::RUSAGE_SELF)
}

pub fn children_cpu() -> Duration {
    cpu(libc::RUSAGE_CHILDREN)
}

/// CPU time (user+system) of another process, from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Uploads a blob to `repo` (monolithic upload: POST, then PUT with digest).
pub async fn push_blob(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    blob: &pullbroker_testenv::fixtures::Blob,
) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().as_u16() == 202,
        "upload start: {}",
        resp.status()
    );
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{url}{sep}digest={}", blob.digest))
        .body(blob.bytes.clone())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().as_u16() == 201,
        "upload finish: {}",
        resp.status()
    );
    Ok(())
}

/// Puts a manifest under `tag`.
pub async fn put_manifest(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    manifest: &pullbroker_testenv::fixtures::Blob,
) -> anyhow::Result<()> {
    let resp = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", pullbroker_testenv::fixtures::OCI_MANIFEST)
        .body(manifest.bytes.clone())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().as_u16() == 201,
        "manifest put: {}",
        resp.status()
    );
    Ok(())
}

/// A standalone broker config for benchmarks: one token-issuer credential for
/// `registry`, one grant for every service account of `team-a` on `demo/**`.
pub fn write_broker_config(
    dir: &Path,
    registry: &str,
    issuer: &TestIssuer,
    port: u16,
) -> Result<PathBuf> {
    std::fs::write(dir.join("jwks.json"), issuer.jwks())?;
    let (key, cert) = SigningKey::generate("bench").map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("tls.key"), key)?;
    std::fs::write(dir.join("tls.crt"), cert)?;
    let config = format!(
        r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: bench}}
spec:
  listen: 127.0.0.1:{port}
  insecurePlainHttp: true
  serviceAccountIssuer: {{issuer: "{KUBE_ISSUER}", jwksFile: jwks.json}}
  secretFiles:
    signer: {{tls.key: tls.key, tls.crt: tls.crt}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: corp}}
spec:
  registries: ["{registry}"]
  source: {{tokenIssuer: {{signingKeySecretRef: {{name: signer}}, service: {BENCH_SERVICE}, issuer: pullbroker}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: bench}}
spec:
  credential: corp
  subjects: {{namespaces: [team-a], serviceAccounts: ["*"]}}
  repositories: [demo/**]
  purposes: [pull, resolve]
"#
    );
    let path = dir.join("broker.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Serves `config` (from [`write_broker_config`]) as it ships: TLS on its
/// listener, with a serving certificate for 127.0.0.1 from a CA written
/// beside it (`ca.crt`), plus a loopback plain-HTTP listener on
/// `plain_port` — so one broker process is measured over both in the same
/// run. Returns the CA file's path.
pub fn serve_tls_too(config: &Path, plain_port: u16) -> Result<PathBuf> {
    let dir = config.parent().context("config dir")?;
    let pair = pullbroker_broker::tls::make_serving_cert(&["127.0.0.1".into()], 30)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("serving.crt"), &pair.cert_pem)?;
    std::fs::write(dir.join("serving.key"), &pair.key_pem)?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, &pair.ca_pem)?;
    let text = std::fs::read_to_string(config)?;
    ensure!(
        text.contains("  insecurePlainHttp: true\n"),
        "the bench config changed shape"
    );
    std::fs::write(
        config,
        text.replace(
            "  insecurePlainHttp: true\n",
            &format!("  tls: {{certFile: serving.crt, keyFile: serving.key}}\n  plainHttpListen: 127.0.0.1:{plain_port}\n"),
        ),
    )?;
    Ok(ca)
}

pub fn start_broker(bin: &Path, config: &Path, addr: &str) -> Result<Child> {
    // Its warnings go to a file beside the config, quoted if it fails to start.
    let log_path = config.with_extension("log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(bin)
        .args(["serve", "--log", "warn", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start pullbroker serve")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        let exited = child.try_wait()?;
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow::bail!("broker did not listen on {addr} ({exited:?}):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Spawns `cmd` with `stdin`, waits with wait4; returns (latency, max RSS in KiB, stdout).
pub fn exec_measured(cmd: &mut Command, stdin: &[u8]) -> Result<(Duration, i64, Vec<u8>)> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // A plugin that fails early exits before reading its input; its exit status says why.
    match child.stdin.take().context("stdin")?.write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().context("stdout")?, &mut out)?;
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    ensure!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "command failed (status {status})"
    );
    Ok((elapsed, usage.ru_maxrss, out))
}

/// The fake API server (`fake-apiserver`, built beside the bench binary) as
/// a process of its own, so a bench's RSS is not the server's; killed on drop.
pub struct FakeProcess {
    child: Child,
    pub url: String,
}

impl FakeProcess {
    pub fn start() -> Result<FakeProcess> {
        use std::io::BufRead;
        let bin = std::env::current_exe()?.with_file_name("fake-apiserver");
        let mut child = Command::new(&bin)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        Ok(FakeProcess {
            child,
            url: line.trim().to_string(),
        })
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
/// A load run's shape (`wrk` and the open loop).
pub struct Opts {
    pub duration: u64,
    pub rate: f64,
    pub connections: usize,
}

/// What one `wrk` run measured.
pub struct WrkResult {
    pub rps: f64,
    pub p50: String,
    pub p99: String,
    pub requests: u64,
}

/// `wrk` against `url` (closed loop, two threads); fails on any non-2xx.
pub fn wrk(
    url: &str,
    script: Option<&Path>,
    headers: &[String],
    o: &Opts,
    env: &[(&str, &str)],
) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{}", o.connections),
        &format!("-d{}s", o.duration),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url).envs(env.iter().copied());
    let out = cmd
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    let rps = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(WrkResult {
        rps,
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        requests,
    })
}

/// A wrk script posting `/v1/exchange` for `image` with the tokens of the
/// file named by `$TOKENS`, one a line, cycling.
pub fn write_exchange_lua(path: &Path, image: &str) -> Result<std::path::PathBuf> {
    std::fs::write(
        path,
        format!(
            r#"local tokens = {{}}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, nil, '{{"token":"' .. tokens[i] .. '","image":"{image}"}}')
end
"#
        ),
    )?;
    Ok(path.to_path_buf())
}
