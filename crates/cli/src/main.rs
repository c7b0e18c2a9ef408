//! `pullbroker` — the command line. It only wires: arguments are parsed here,
//! work is done by the core and the adapters.

mod cluster_review;
mod cmd;
mod keychain;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Log filter on stderr (e.g. `debug`, `pullbroker_registry=debug`).
    /// Default: `info` for `serve` (audit events are info), `warn` otherwise.
    #[arg(long, global = true, env = "PULLBROKER_LOG")]
    log: Option<String>,
    /// Log format. Default: json for `serve`, text otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker from a standalone YAML configuration (the embedded default).
    Serve(cmd::serve::Args),
    /// Run the Kubernetes controller: synced short-lived pull secrets, statuses, leader election.
    Controller(cmd::controller::Args),
    /// Policy dry-run: may this service account pull/resolve/sync that image, and why?
    CanI(cmd::can_i::Args),
    /// Print the CustomResourceDefinitions (RegistryCredential, PullGrant).
    Crd(cmd::crd::Args),
    /// Generate a token-issuer signing key (EC P-256) and certificate.
    Keygen(cmd::keygen::Args),
    /// Mint a service-account-shaped token from a local development issuer.
    DevToken(cmd::dev_token::Args),
    /// Generate a CA and a serving certificate for the broker's TLS listener.
    TlsCert(cmd::tls_cert::Args),
    /// Print the MutatingWebhookConfiguration for admission digest pinning.
    WebhookConfig(cmd::webhook_config::Args),
    /// Find what is wrong with a cluster's pull secrets and grants (never printing a secret).
    Audit(cmd::audit::Args),
    /// From pull secrets copied across namespaces to central credentials and the narrowest grants: proven, with the clean-up order.
    Adopt(cmd::adopt::Args),
    /// Why a pod cannot pull its images (pod, deployment or ksvc): the cause, the credential that applies, the fix.
    Diagnose(cmd::diagnose::Args),
    /// Print the kubelet's CredentialProviderConfig for the KEP-4412 plugin (or, with --rbac, the nodes' RBAC).
    KubeletConfig(cmd::kubelet_config::Args),
    /// Resolve image references to digests (IMAGE@sha256:…).
    Resolve(cmd::resolve::Args),
    /// Create, inspect and validate pull secrets (kubernetes.io/dockerconfigjson).
    #[command(subcommand)]
    Secret(cmd::secret::Command),
}

fn main() -> ExitCode {
    // Run as the kubectl plugin, usage and errors name `kubectl pullbroker`.
    let mut command = Cli::command();
    if let Ok(name) = std::env::var("PULLBROKER_BIN_NAME") {
        command = command.bin_name(name);
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let serving = matches!(cli.command, Command::Serve(_) | Command::Controller(_));
    let filter = cli
        .log
        .clone()
        .unwrap_or_else(|| if serving { "info" } else { "warn" }.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into());
    let json = cli
        .log_format
        .map(|f| f == LogFormat::Json)
        .unwrap_or(serving);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::Controller(args) => cmd::controller::run(args),
        Command::CanI(args) => cmd::can_i::run(args),
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::DevToken(args) => cmd::dev_token::run(args),
        Command::Crd(args) => cmd::crd::run(args),
        Command::TlsCert(args) => cmd::tls_cert::run(args),
        Command::WebhookConfig(args) => cmd::webhook_config::run(args),
        Command::KubeletConfig(args) => cmd::kubelet_config::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Adopt(args) => cmd::adopt::run(args),
        Command::Diagnose(args) => cmd::diagnose::run(args),
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
