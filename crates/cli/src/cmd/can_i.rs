//! `pullbroker can-i`: the policy dry-run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use pullbroker_broker::config;
use pullbroker_core::policy::{Purpose, Request, Subject, Target};
use pullbroker_core::Reference;

use super::output;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Exit code 0 when allowed, 1 when denied.\n\nExamples:\n  \
pullbroker can-i --as system:serviceaccount:team-a:web pull registry.corp.example/apps/team-a/web:1.0\n  \
pullbroker can-i --as system:serviceaccount:knative-serving:controller --on-behalf-of team-a resolve registry.corp.example/apps/team-a/web:1.0\n  \
pullbroker can-i --from-cluster --as system:serviceaccount:team-a:web pull registry.corp.example/apps/team-a/web:1.0"
)]
pub struct Args {
    /// The service account asking: system:serviceaccount:NAMESPACE:NAME.
    #[arg(long = "as", value_name = "USER")]
    as_user: String,
    /// pull, resolve or sync.
    purpose: Purpose,
    image: String,
    /// Resolve on behalf of this namespace (a controller acting for workloads).
    #[arg(long, value_name = "NAMESPACE")]
    on_behalf_of: Option<String>,
    /// Repositories the workload's annotation narrows access to (comma-separated).
    #[arg(long, value_name = "GLOBS")]
    narrowed_to: Option<String>,
    /// The standalone configuration file.
    #[arg(
        long,
        env = "PULLBROKER_CONFIG",
        value_name = "FILE",
        default_value = "/etc/pullbroker/config.yaml"
    )]
    config: PathBuf,
    /// Decide from the cluster's PullGrants and RegistryCredentials (the
    /// kubeconfig's, as kubectl finds it) instead of --config: the answer
    /// the in-cluster broker gives.
    #[arg(long, conflicts_with = "config")]
    from_cluster: bool,
    /// Kubeconfig context (with --from-cluster).
    #[arg(long, value_name = "NAME", requires = "from_cluster")]
    context: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: output::Report,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let subject = Subject::parse_username(&args.as_user).map_err(|e| anyhow!("--as: {e}"))?;
    let image = Reference::parse(&args.image)?;
    let policy = if args.from_cluster {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = super::kube_client(args.context.clone()).await?;
            super::cluster::policy(&client, &|_| {})
                .await?
                .map(|c| std::sync::Arc::new(c.policy))
                .ok_or_else(|| anyhow!("pullbroker's CRDs are not installed in this cluster"))
        })?
    } else {
        config::load(&args.config)
            .map_err(anyhow::Error::msg)?
            .policy
    };
    let narrowed: Option<Vec<String>> = args
        .narrowed_to
        .as_deref()
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
    let decision = policy.decide(&Request {
        subject: &subject,
        purpose: args.purpose,
        target: Target::Image {
            registry: image.registry(),
            repository: image.repository(),
        },
        on_behalf_of: args.on_behalf_of.as_deref(),
        narrowed_to: narrowed.as_deref(),
    });
    match args.output {
        output::Report::Text => println!(
            "{} — {}",
            if decision.is_allowed() { "yes" } else { "no" },
            decision.reason()
        ),
        output::Report::Json => println!(
            "{}",
            serde_json::json!({
                "allowed": decision.is_allowed(), "reason": decision.reason(),
                "grant": decision.allow().map(|a| &a.grant),
                "credential": decision.allow().map(|a| &a.credential),
                "ttlSeconds": decision.allow().map_or(0, |a| a.ttl.as_secs()),
                "subject": subject.to_string(), "purpose": args.purpose.to_string(), "image": image.to_string(),
            })
        ),
    }
    Ok(if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
