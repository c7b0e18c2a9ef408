//! `pullbroker` — the command line. It only wires: arguments are parsed here,
//! work is done by the core and the adapters.

mod cmd;
mod keychain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pullbroker",
    version,
    about = "A registry-credential broker for Kubernetes",
    long_about = "pullbroker keeps registry credentials in one place and hands out \
                  digests and short-lived pull credentials according to operator-owned grants.\n\n\
                  Exit codes: 0 success, 1 a requested operation failed, 2 usage error."
)]
struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `debug`, `pullbroker_registry=debug`).
    #[arg(long, global = true, env = "PULLBROKER_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Resolve image references to digests (IMAGE@sha256:…).
    Resolve(cmd::resolve::Args),
    /// Create, inspect and validate pull secrets (kubernetes.io/dockerconfigjson).
    #[command(subcommand)]
    Secret(cmd::secret::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Resolve(args) => cmd::resolve::run(args),
        Command::Secret(c) => cmd::secret::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
