//! `pullbroker crd`: the CustomResourceDefinitions, generated from the same
//! Rust types the policy core and the standalone file use.

use std::process::ExitCode;

use anyhow::Result;
use kube::CustomResourceExt;
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};

use super::output;

#[derive(clap::Args, Debug)]
#[command(after_long_help = "Example:\n  pullbroker crd | kubectl apply -f -")]
pub struct Args {
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: output::Manifest,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let crds = [RegistryCredential::crd(), PullGrant::crd()];
    output::print_objects(&crds, args.output)?;
    Ok(ExitCode::SUCCESS)
}
