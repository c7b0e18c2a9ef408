//! A real containerd (the runtime kubelet drives) for pull tests, started as
//! root with the native snapshotter, and `ctr` to drive it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd and waits (bounded: 30 s) until `ctr version` answers.
    pub fn start() -> Result<Containerd, String> {
        process::require_tools(&["containerd", "ctr"])?;
        let dir = tempfile::Builder::new()
            .prefix("containerd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = dir.path();
        let socket = root.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{root}/debug.sock"
  level = "info"
[plugins."io.containerd.service.v1.diff-service"]
  default = ["walking"]
"#,
            root = root.display(),
            sock = socket.display()
        );
        std::fs::write(root.join("config.toml"), config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(root.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run containerd: {e}"))?;
        process::kill_at_exit(&child);
        let mut c = Containerd { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("containerd exited ({status}): {}", c.log_tail()));
            }
            if c.socket.exists() && c.ctr(&["version"]).is_ok() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(format!("containerd not ready after 30s: {}", c.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Runs `ctr --address SOCKET ARGS…`; Ok(stdout) or Err(stderr).
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `ctr images pull --plain-http --snapshotter native [--user U:P] IMAGE`.
    pub fn pull(&self, image: &str, user: Option<(&str, &str)>) -> Result<String, String> {
        let creds = user.map(|(u, p)| format!("{u}:{p}"));
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if let Some(c) = &creds {
            args.extend(["--user", c.as_str()]);
        }
        args.push(image);
        self.ctr(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        process::forget(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
