//! `pullbroker tls-cert`: a CA and a serving certificate for the broker's
//! TLS listener (tests, labs, the admission webhook's `caBundle`). In a
//! cluster prefer cert-manager; this is for everything before that.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::keygen::{refuse_overwrite, write_private};

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Writes ca.crt (the CA to trust: kubelet plugin --ca-file, the webhook's caBundle, \
curl --cacert), tls.crt and tls.key (mode 0600; BrokerConfig.spec.tls certFile/keyFile). The CA's key is not kept: \
make a new pair to renew (the broker reloads the files when they change).\n\n\
Example:\n  pullbroker tls-cert --host pullbroker.pullbroker-system.svc --host 127.0.0.1 --out-dir tls/"
)]
pub struct Args {
    /// DNS name or IP address the certificate is for (repeat for several).
    #[arg(long = "host", value_name = "NAME|IP", required = true)]
    hosts: Vec<String>,
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=825))]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let (ca, cert, key) = (
        args.out_dir.join("ca.crt"),
        args.out_dir.join("tls.crt"),
        args.out_dir.join("tls.key"),
    );
    refuse_overwrite(&args.out_dir, &[&ca, &cert, &key], args.force)?;
    let made = pullbroker_broker::tls::make_serving_cert(&args.hosts, args.days)
        .map_err(anyhow::Error::msg)?;
    write_private(&key, &made.key_pem)?;
    std::fs::write(&cert, &made.cert_pem)?;
    std::fs::write(&ca, &made.ca_pem)?;
    println!(
        "wrote {}, {} and {} for {}",
        ca.display(),
        cert.display(),
        key.display(),
        args.hosts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
