//! A real `docker-registry serve` (distribution 2.8) on 127.0.0.1.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TlsFiles;
use crate::process;

/// How the registry authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    /// `auth.htpasswd` with this file.
    Htpasswd(PathBuf),
    /// `auth.token` trusting this issuer.
    Token(TokenAuth),
}

#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub rootcertbundle: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub name: String,
    pub auth: Auth,
    pub tls: Option<TlsFiles>,
    /// Errors only and no access log (for benchmarks).
    pub quiet: bool,
    /// Storage to use instead of a fresh directory (shared with another instance).
    pub data_dir: Option<PathBuf>,
}

pub struct Registry {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub tls: bool,
    child: Child,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it accepts
    /// connections (bounded: 20 s).
    pub fn start(opts: RegistryOptions) -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("registry-{}-", opts.name))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log_path = dir.path().join("registry.log");
        let mut last_error = String::new();
        // A port picked free can be taken before the registry binds it: retry.
        for _ in 0..3 {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = dir.path().join("config.yml");
            std::fs::write(&config, config_yaml(&opts, dir.path(), addr))
                .map_err(|e| e.to_string())?;
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run docker-registry: {e}"))?;
            process::kill_at_exit(&child);
            match wait_ready(&mut child, addr, &log_path, Duration::from_secs(20)) {
                Ok(()) => {
                    return Ok(Registry {
                        addr,
                        dir,
                        tls: opts.tls.is_some(),
                        child,
                    })
                }
                Err(e) => {
                    last_error = e;
                    process::forget(&child);
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        Err(last_error)
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The last lines of the registry's log (for failure messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("registry.log"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry process id (to read its CPU time in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the registry now.
    pub fn stop(&mut self) {
        process::forget(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until `addr` accepts connections, the child exits, or `limit` passes.
fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "docker-registry exited ({status}): {}",
                log_tail(log)
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "docker-registry not listening after {limit:?}: {}",
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// An htpasswd file with one bcrypt (`$2y$`) entry, as `htpasswd -B` writes.
pub fn write_htpasswd(path: &Path, user: &str, password: &str) -> std::io::Result<()> {
    let hash = bcrypt::hash_with_result(password, 5)
        .map_err(std::io::Error::other)?
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(path, format!("{user}:{hash}\n"))
}

fn config_yaml(opts: &RegistryOptions, dir: &Path, addr: SocketAddr) -> String {
    let data = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
    let log = if opts.quiet {
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
    } else {
        "log:\n  level: info\n  formatter: text\n"
    };
    let tls = match &opts.tls {
        Some(t) => format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            t.cert.display(),
            t.key.display()
        ),
        None => String::new(),
    };
    let auth = match &opts.auth {
        Auth::Anonymous => String::new(),
        Auth::Htpasswd(path) => format!("auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n", path.display()),
        Auth::Token(t) => format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            t.realm,
            t.service,
            t.issuer,
            t.rootcertbundle.display()
        ),
    };
    format!(
        "version: 0.1\n{log}storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: {addr}\n  secret: pullbroker-test-{}\n  headers:\n    X-Content-Type-Options: [nosniff]\n{tls}{auth}",
        data.display(),
        opts.name
    )
}
