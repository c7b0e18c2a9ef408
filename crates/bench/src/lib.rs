//! Shared helpers for the benchmark binaries: CPU accounting, percentiles,
//! and seeding a registry through the distribution API.

use std::time::Duration;

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
