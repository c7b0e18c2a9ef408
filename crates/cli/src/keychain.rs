//! Where the CLI finds registry credentials: `--docker-config`, `--secret`,
//! or Docker's own `config.json`; anonymous when none applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pullbroker_core::keychain::{Anonymous, Chain};
use pullbroker_core::secret::PullSecret;
use pullbroker_core::{DockerConfig, Keychain};

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
    let config = DockerConfig::parse(&bytes).with_context(|| format!("{}", path.display()))?;
    warn_helpers(path, &config);
    Ok(config)
}

fn warn_helpers(path: &Path, config: &DockerConfig) {
    for key in config.helper_entries() {
        tracing::warn!(
            file = %path.display(),
            registry = %key,
            "credentials for this registry are kept by a credential helper, which pullbroker does not run; it is treated as anonymous"
        );
    }
}

/// Builds the keychain: explicit files first (in the order given), then the default.
pub fn build(args: &CredentialArgs) -> Result<Arc<dyn Keychain>> {
    let mut chain: Vec<Box<dyn Keychain>> = Vec::new();
    for path in &args.secret {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let secret = PullSecret::parse(&text).with_context(|| format!("{}", path.display()))?;
        warn_helpers(path, &secret.config);
        chain.push(Box::new(secret.config));
    }
    for path in &args.docker_config {
        chain.push(Box::new(load_docker_config(path)?));
    }
    if chain.is_empty() && !args.no_default_config {
        if let Some(path) = default_config() {
            match load_docker_config(&path) {
                Ok(c) => chain.push(Box::new(c)),
                // A broken default config should not stop anonymous pulls, but say so.
                Err(e) => tracing::warn!("ignoring default docker config: {e:#}"),
            }
        }
    }
    if chain.is_empty() {
        return Ok(Arc::new(Anonymous));
    }
    if chain.len() == 1 {
        return Ok(Arc::from(chain.pop().expect("one")));
    }
    Ok(Arc::new(Chain(chain)))
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
