//! Where the CLI finds registry credentials: `--docker-config`, `--secret`,
//! or Docker's own `config.json` — including its credential helpers
//! (`credsStore`, `credHelpers`), run as Docker runs them; anonymous when
//! none applies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pullbroker_core::dockerconfig::HelperCall;
use pullbroker_core::keychain::{Anonymous, Chain};
use pullbroker_core::secret::PullSecret;
use pullbroker_core::{Credential, DockerConfig, Keychain, Reference};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CredentialArgs {
    /// Docker config JSON (`~/.docker/config.json` format). Default: Docker's own
    /// config ($DOCKER_CONFIG/config.json or ~/.docker/config.json) if present.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Vec<PathBuf>,
    /// A Kubernetes Secret manifest (YAML or JSON) of type kubernetes.io/dockerconfigjson.
    #[arg(long, value_name = "FILE")]
    pub secret: Vec<PathBuf>,
    /// Ignore Docker's default config; use only the files given (or none).
    #[arg(long)]
    pub no_default_config: bool,
}

/// Docker's default config path, as the docker CLI finds it.
fn default_config() -> Option<PathBuf> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    path.is_file().then_some(path)
}

fn load_docker_config(path: &Path) -> Result<DockerConfig> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    DockerConfig::parse(&bytes).with_context(|| format!("{}", path.display()))
}

/// The configs found, in the order they are consulted.
pub struct Configs(Vec<DockerConfig>);

/// Reads the configs: explicit files first (in the order given), then the default.
pub fn build(args: &CredentialArgs) -> Result<Configs> {
    let mut configs = Vec::new();
    for path in &args.secret {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let secret = PullSecret::parse(&text).with_context(|| format!("{}", path.display()))?;
        configs.push(secret.config);
    }
    for path in &args.docker_config {
        configs.push(load_docker_config(path)?);
    }
    if configs.is_empty() && !args.no_default_config {
        if let Some(path) = default_config() {
            match load_docker_config(&path) {
                Ok(c) => configs.push(c),
                // A broken default config should not stop anonymous pulls, but say so.
                Err(e) => tracing::warn!("ignoring default docker config: {e:#}"),
            }
        }
    }
    Ok(Configs(configs))
}

/// How long a credential helper may take (Docker waits indefinitely; a hung
/// helper must not hang a resolve of thousands of images).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

impl Configs {
    /// The keychain for `images`: each config in order, with what its
    /// credential helpers say for the images' registries (each helper run
    /// once per registry). A helper that fails, is missing or hangs is an
    /// error for the images it covers — never a silent anonymous fallback;
    /// those are returned by image index.
    pub async fn keychain(
        self,
        images: &[Reference],
        timeout: Duration,
    ) -> (Arc<dyn Keychain>, BTreeMap<usize, String>) {
        let mut calls: BTreeMap<HelperCall, Vec<usize>> = BTreeMap::new();
        for (i, image) in images.iter().enumerate() {
            // The first config that knows the image decides, as the chain does.
            let decides = self
                .0
                .iter()
                .find(|c| c.helper_for(image).is_some() || !c.candidates(image).is_empty());
            if let Some(call) = decides.and_then(|c| c.helper_for(image)) {
                calls.entry(call).or_default().push(i);
            }
        }
        let answers =
            futures::future::join_all(calls.keys().map(|call| run_helper(call.clone(), timeout)))
                .await;
        let mut failed = BTreeMap::new();
        let mut from_helpers: Vec<Box<dyn Keychain>> = Vec::new();
        for ((call, indexes), answer) in calls.into_iter().zip(answers) {
            match answer {
                Ok(Some(credential)) => match DockerConfig::single(&call.server, credential) {
                    Ok(c) => from_helpers.push(Box::new(c)),
                    Err(e) => {
                        for i in &indexes {
                            failed.insert(*i, format!("docker-credential-{}: {e}", call.helper));
                        }
                    }
                },
                Ok(None) => {
                    tracing::debug!(helper = %call.helper, server = %call.server, "the credential helper has no credentials for this registry")
                }
                Err(e) => {
                    for i in indexes {
                        failed.insert(i, e.clone());
                    }
                }
            }
        }
        // Helper answers first: they are what the configs say for those
        // registries (inline entries of the same config never coexist with them).
        let chain: Vec<Box<dyn Keychain>> = from_helpers
            .into_iter()
            .chain(self.0.into_iter().map(|c| Box::new(c) as Box<dyn Keychain>))
            .collect();
        let keychain: Arc<dyn Keychain> = match chain.len() {
            0 => Arc::new(Anonymous),
            _ => Arc::new(Chain(chain)),
        };
        (keychain, failed)
    }
}

/// Runs `docker-credential-<helper> get` with the server on stdin, as Docker,
/// crane and skopeo do. `Ok(None)`: the helper has no credentials for it
/// (its documented "credentials not found" answer).
async fn run_helper(call: HelperCall, timeout: Duration) -> Result<Option<Credential>, String> {
    use tokio::io::AsyncWriteExt as _;
    let program = format!("docker-credential-{}", call.helper);
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "credential helper {program} (configured for {}) is not on PATH",
                call.server
            ),
            _ => format!("cannot run credential helper {program}: {e}"),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let server = call.server.clone();
    let run = async move {
        // A helper may exit before reading its input: a broken pipe here is
        // not the failure, its exit status says what happened.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("credential helper {program} did not answer within {timeout:?}"))?
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // Only stderr's first line, shortened: stdout is the secret channel.
        let why: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(format!(
            "credential helper {program} failed for {} ({}){}",
            call.server,
            out.status,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        ));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        username: String,
        secret: String,
    }
    let a: Answer = serde_json::from_str(stdout.trim()).map_err(|_| {
        format!("credential helper {program} answered something other than {{\"Username\",\"Secret\"}} JSON")
    })?;
    Ok(Some(if a.username == "<token>" {
        // Docker's convention for an identity (refresh) token.
        Credential::IdentityToken {
            username: String::new(),
            token: a.secret.into(),
        }
    } else {
        Credential::Basic {
            username: a.username,
            password: a.secret.into(),
        }
    }))
}

/// Reads a file, or stdin for `-`.
pub fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read stdin")?;
        return Ok(s);
    }
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
