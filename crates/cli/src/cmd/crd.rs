//! `pullbroker crd`: the CustomResourceDefinitions, generated from the same
//! Rust types the policy core and the standalone file use.

use std::process::ExitCode;

use anyhow::Result;
use kube::CustomResourceExt;
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};

#[derive(clap::Args, Debug)]
#[command(after_long_help = "Example:\n  pullbroker crd | kubectl apply -f -")]
pub struct Args {
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    Yaml,
    Json,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let crds = [RegistryCredential::crd(), PullGrant::crd()];
    match args.output {
        Format::Yaml => {
            for crd in &crds {
                print!("---\n{}", serde_yaml::to_string(crd)?);
            }
        }
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": crds});
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
