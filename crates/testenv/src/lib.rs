//! Real parts for tests: Debian's `docker-registry` (distribution 2.8) on
//! loopback in anonymous, htpasswd, TLS and token-auth setups, a small
//! token server for the token-auth registry, and OCI fixture images generated
//! here and pushed with `skopeo copy`.
//!
//! [`Env::shared`] starts one environment per test process, lazily; its
//! processes are killed when the process exits. The test command
//! (`scripts/test.sh`) installs the Debian packages this needs.

pub mod admission;
pub mod api_log;
pub mod aws;
pub mod containerd;
pub mod fakeapi;
pub mod fixtures;
pub mod issuer;
pub mod logs;
pub mod net;
pub mod pki;
pub mod process;
pub mod registry;
pub mod skopeo;
pub mod squid;
pub mod token_server;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use registry::{Auth, Registry, RegistryOptions};
pub use token_server::TokenServer;

/// The user and password every authenticated test registry accepts.
pub const USER: &str = "testuser";
/// A recognisable password: tests assert it never appears in output.
pub const PASSWORD: &str = "pw-CANARY-5ecr3t";

/// A running set of registries with fixture images pushed to each.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub anon: Registry,
    pub basic: Registry,
    pub tls: Registry,
    pub token: Registry,
    pub token_server: TokenServer,
    pub layout: PathBuf,
    /// Digests of the fixture tags as generated (`v1`, `multi`, …).
    pub fixtures: fixtures::Layout,
}

/// Tags pushed to every registry, and how: (tag in layout, pushed tag, format, all platforms).
pub const PUSHES: &[(&str, &str, skopeo::Format, bool)] = &[
    ("v1", "v1", skopeo::Format::Oci, false),
    ("multi", "multi", skopeo::Format::Oci, true),
    ("v1", "v1-docker", skopeo::Format::DockerV2, false),
    ("multi", "multi-docker", skopeo::Format::DockerV2, true),
];

/// The repository fixtures are pushed to.
pub const REPO: &str = "demo/app";

impl Env {
    /// The process-wide environment, started on first use.
    pub fn shared() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            Env::start().unwrap_or_else(|e| panic!("test environment failed to start: {e}"))
        })
    }

    fn start() -> Result<Env, String> {
        process::require_tools(&["docker-registry", "skopeo"])?;
        let dir = tempfile::Builder::new()
            .prefix("pullbroker-testenv-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        process::remove_at_exit(dir.path());
        let root = dir.path();
        let layout = root.join("oci");
        let fixtures = fixtures::build_layout(&layout).map_err(|e| format!("fixtures: {e}"))?;

        let token_server = TokenServer::start(root).map_err(|e| format!("token server: {e}"))?;
        let htpasswd = root.join("htpasswd");
        registry::write_htpasswd(&htpasswd, USER, PASSWORD).map_err(|e| e.to_string())?;
        let tls = pki::self_signed_server(root).map_err(|e| format!("tls: {e}"))?;

        let start = |name: &str, auth: Auth, tls: Option<pki::TlsFiles>| {
            Registry::start(RegistryOptions {
                name: name.to_string(),
                auth,
                tls,
                quiet: false,
                data_dir: None,
            })
            .map_err(|e| format!("{name} registry: {e}"))
        };
        let anon = start("anon", Auth::Anonymous, None)?;
        process::remove_at_exit(anon.dir.path());
        let basic = start("basic", Auth::Htpasswd(htpasswd.clone()), None)?;
        let tls_reg = start("tls", Auth::Htpasswd(htpasswd), Some(tls))?;
        let token = start("token", Auth::Token(token_server.registry_auth()), None)?;
        for r in [&basic, &tls_reg, &token] {
            process::remove_at_exit(r.dir.path());
        }

        let creds = Some((USER, PASSWORD));
        let targets = [(&anon, None), (&basic, creds), (&token, creds)];
        std::thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|(reg, creds)| {
                    let layout = &layout;
                    s.spawn(move || {
                        for (src, dst, format, all) in PUSHES {
                            let dest = format!("{}/{REPO}:{dst}", reg.host());
                            skopeo::copy(layout, src, &dest, *creds, *format, *all)?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("push thread panicked"))
        })?;
        // The TLS registry shares nothing with the others: push one tag over TLS.
        skopeo::copy_tls(
            &layout,
            "v1",
            &format!("{}/{REPO}:v1", tls_reg.host()),
            (USER, PASSWORD),
        )?;

        Ok(Env {
            dir,
            anon,
            basic,
            tls: tls_reg,
            token,
            token_server,
            layout,
            fixtures,
        })
    }

    /// A reference on `registry` to the fixture repository.
    pub fn image(&self, registry: &Registry, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", registry.host())
    }
}
