//! `skopeo`, the independent client: pushes fixtures and reports the digests
//! our resolver must agree with.

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    DockerV2,
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `skopeo copy oci:LAYOUT:TAG docker://DEST` over plain HTTP.
pub fn copy(
    layout: &Path,
    tag: &str,
    dest: &str,
    creds: Option<(&str, &str)>,
    format: Format,
    all: bool,
) -> Result<(), String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    if format == Format::DockerV2 {
        cmd.args(["--format", "v2s2"]);
    }
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd).map(drop)
}

/// Copy to a TLS registry whose certificate skopeo is told not to verify.
pub fn copy_tls(layout: &Path, tag: &str, dest: &str, (u, p): (&str, &str)) -> Result<(), String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{u}:{p}"))
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd).map(drop)
}

fn inspect_cmd(creds: Option<(&str, &str)>) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg("--creds").arg(format!("{u}:{p}"));
    }
    cmd
}

/// The digest `skopeo inspect` reports for `image` (an index's own digest for
/// multi-platform tags).
pub fn digest(image: &str, creds: Option<(&str, &str)>) -> Result<String, String> {
    let mut cmd = inspect_cmd(creds);
    cmd.args(["--no-tags", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}"));
    Ok(String::from_utf8_lossy(&run(&mut cmd)?).trim().to_string())
}

/// The raw manifest bytes `skopeo inspect --raw` returns.
pub fn raw(image: &str, creds: Option<(&str, &str)>) -> Result<Vec<u8>, String> {
    let mut cmd = inspect_cmd(creds);
    cmd.arg("--raw").arg(format!("docker://{image}"));
    run(&mut cmd)
}

/// The architecture `skopeo inspect` reports for `image`.
pub fn architecture(image: &str, creds: Option<(&str, &str)>) -> Result<String, String> {
    let mut cmd = inspect_cmd(creds);
    cmd.args(["--no-tags", "--format", "{{.Architecture}}"])
        .arg(format!("docker://{image}"));
    Ok(String::from_utf8_lossy(&run(&mut cmd)?).trim().to_string())
}
