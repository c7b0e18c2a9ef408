//! `pullbroker keygen`: a token-issuer signing key and certificate.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pullbroker_credentials::keys::SigningKey;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Writes tls.key (mode 0600) and tls.crt. Put tls.crt in the registry's \
auth.token.rootcertbundle and both files in the Secret (or secretFiles) named by tokenIssuer.signingKeySecretRef."
)]
pub struct Args {
    /// Directory to write tls.key and tls.crt into (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Certificate subject common name.
    #[arg(long, default_value = "pullbroker token issuer")]
    common_name: String,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let (key_path, cert_path) = (args.out_dir.join("tls.key"), args.out_dir.join("tls.crt"));
    refuse_overwrite(&args.out_dir, &[&key_path, &cert_path], args.force)?;
    let (key, cert) = SigningKey::generate(&args.common_name).map_err(anyhow::Error::msg)?;
    let kid = SigningKey::from_pem(&key, &cert)
        .map_err(anyhow::Error::msg)?
        .kid;
    write_private(&key_path, &key)?;
    std::fs::write(&cert_path, cert)?;
    println!("wrote {} and {}", key_path.display(), cert_path.display());
    println!("kid (libtrust): {kid}");
    Ok(ExitCode::SUCCESS)
}

/// Writes a private key readable by its owner only (0600).
pub fn write_private(path: &std::path::Path, pem: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// Refuses to overwrite any of `paths` unless `force`.
pub fn refuse_overwrite(
    dir: &std::path::Path,
    paths: &[&std::path::Path],
    force: bool,
) -> Result<()> {
    if !force && paths.iter().any(|p| p.exists()) {
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        bail!(
            "{} already holds {} (use --force to replace)",
            dir.display(),
            names.join(" or ")
        );
    }
    Ok(())
}
