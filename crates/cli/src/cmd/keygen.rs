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
    if !args.force && (key_path.exists() || cert_path.exists()) {
        bail!(
            "{} already holds tls.key or tls.crt (use --force to replace)",
            args.out_dir.display()
        );
    }
    let (key, cert) = SigningKey::generate(&args.common_name).map_err(anyhow::Error::msg)?;
    let kid = SigningKey::from_pem(&key, &cert)
        .map_err(anyhow::Error::msg)?
        .kid;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)?;
    f.write_all(key.as_bytes())?;
    std::fs::write(&cert_path, cert)?;
    println!("wrote {} and {}", key_path.display(), cert_path.display());
    println!("kid (libtrust): {kid}");
    Ok(ExitCode::SUCCESS)
}
