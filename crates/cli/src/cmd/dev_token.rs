//! `pullbroker dev-token`: a service-account-shaped token from a local
//! development issuer, to try the standalone broker without a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pullbroker_core::policy::model::parse_duration;
use pullbroker_core::time::UnixTime;
use pullbroker_credentials::dev_issuer::{DevIssuer, DevToken};

#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
For development only: whoever holds the issuer key can mint a token for any service account, \
so a broker that trusts it (its kid starts with pullbroker-dev-) warns at start. A real cluster's \
tokens come from `kubectl create token SA --audience pullbroker`.\n\n\
Examples:\n  \
# a token the standalone example accepts (its key is checked in for this)\n  \
pullbroker dev-token --issuer-key examples/standalone/dev-issuer.key --namespace team-a --service-account web\n  \
# a new key, and the JWKS a broker's jwksFile needs to trust it\n  \
pullbroker dev-token --new-key dev.key && pullbroker dev-token --issuer-key dev.key --jwks > jwks.json")]
pub struct Args {
    /// The development issuer's private key (PKCS#8 PEM, P-256).
    #[arg(long, value_name = "FILE", required_unless_present = "new_key")]
    issuer_key: Option<PathBuf>,
    /// Write a new issuer key to FILE (mode 0600) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["issuer_key", "jwks"])]
    new_key: Option<PathBuf>,
    /// Print the key's JWKS (public) instead of a token.
    #[arg(long)]
    jwks: bool,
    /// The token's namespace.
    #[arg(long, short = 'n', required_unless_present_any = ["jwks", "new_key"])]
    namespace: Option<String>,
    /// The token's service account.
    #[arg(long, required_unless_present_any = ["jwks", "new_key"])]
    service_account: Option<String>,
    /// Bind the token to this pod (adds the `kubernetes.io.pod` claim).
    #[arg(long)]
    pod: Option<String>,
    /// The audience (the broker's `audience`).
    #[arg(long, default_value = "pullbroker")]
    audience: String,
    /// The issuer (`iss`; the broker's `serviceAccountIssuer.issuer`).
    #[arg(long, default_value = "https://kubernetes.default.svc")]
    issuer: String,
    /// Lifetime (at most 24h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    ttl: std::time::Duration,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(path) = &args.new_key {
        super::keygen::refuse_overwrite(
            path.parent().unwrap_or(std::path::Path::new(".")),
            &[path.as_path()],
            false,
        )?;
        let pem = DevIssuer::generate().map_err(anyhow::Error::msg)?;
        super::keygen::write_private(path, &pem)?;
        eprintln!("wrote {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let path = args
        .issuer_key
        .as_ref()
        .context("--issuer-key is required")?;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let issuer =
        DevIssuer::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if args.jwks {
        println!("{}", issuer.jwks());
        return Ok(ExitCode::SUCCESS);
    }
    let now = UnixTime::from_system(std::time::SystemTime::now()).0;
    let token = issuer
        .token(
            &DevToken {
                issuer: &args.issuer,
                audience: &args.audience,
                namespace: args.namespace.as_deref().unwrap_or_default(),
                service_account: args.service_account.as_deref().unwrap_or_default(),
                pod: args.pod.as_deref(),
                ttl_seconds: i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX),
            },
            now,
        )
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
