//! A real forward proxy on loopback: Debian's `squid`, started per test.
//!
//! Clients never proxy loopback addresses (Go's rule, and ours), so a
//! registry on 127.0.0.1 is given a host name only the proxy resolves: its
//! `hosts_file` maps the names to 127.0.0.1. Every request it relays is one
//! line of its access log (`CONNECT host:port` for HTTPS), written when the
//! tunnel closes.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process;
use crate::registry::free_port;

pub struct Squid {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Squid {
    /// Starts squid resolving each of `names` to 127.0.0.1 (bounded: 20 s
    /// per attempt, three attempts if the port picked is taken).
    pub fn start(names: &[&str]) -> Result<Squid, String> {
        process::require_tools(&["squid"])?;
        let dir = tempfile::Builder::new()
            .prefix("squid-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let hosts: String = names.iter().map(|n| format!("127.0.0.1 {n}\n")).collect();
        std::fs::write(d.join("hosts"), hosts).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let conf = format!(
                "http_port {addr}\nhosts_file {d}/hosts\nhttp_access allow localhost\nhttp_access deny all\n\
                 cache deny all\naccess_log stdio:{d}/access.log\ncache_log {d}/cache.log\n\
                 pid_filename {d}/squid.pid\ncoredump_dir {d}\nbuffered_logs off\n\
                 shutdown_lifetime 0 seconds\n",
                d = d.display()
            );
            std::fs::write(d.join("squid.conf"), conf).map_err(|e| e.to_string())?;
            // squid drops privileges to `proxy`, which must write here.
            let chown = Command::new("chown")
                .args(["-R", "proxy:proxy"])
                .arg(d)
                .status()
                .map_err(|e| e.to_string())?;
            if !chown.success() {
                return Err(format!("chown proxy {}: {chown}", d.display()));
            }
            let mut child = Command::new("squid")
                .args(["-N", "-f"])
                .arg(d.join("squid.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run squid: {e}"))?;
            process::kill_at_exit(&child);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    last = format!("squid exited ({status}): {}", tail(&d.join("cache.log")));
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(Squid { addr, dir, child });
                }
                if Instant::now() > deadline {
                    last = format!("squid not listening: {}", tail(&d.join("cache.log")));
                    process::forget(&child);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last)
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log's lines so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Waits (at most `limit`) for a log line containing `needle`: squid
    /// logs a tunnel when it closes.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no access-log line with {needle:?} after {limit:?}: {:?}",
                    self.lines()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        process::forget(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
