//! `pullbroker adopt`: the cluster read as `audit` reads it, the plan made
//! by `core::adopt` (central credentials, the narrowest grants, the proof,
//! the clean-up order), printed as a report, as JSON, or as manifests; with
//! `--apply`, the credentials and grants written by server-side apply —
//! never a delete.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use pullbroker_core::adopt::{self, Inputs, Options, Plan};
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};
use serde::Serialize;

use super::audit::{read, Inventory, Progress, Scanned};
use super::cluster::list_all;

/// The first minor version whose kubelets pass service-account tokens to
/// credential-provider plugins by default (KEP-4412 beta).
const KEP_4412_BETA: (u32, u32) = (1, 34);
const FIELD_MANAGER: &str = "pullbroker-adopt";

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "For each pull secret copied into several namespaces (the same credential, \
any Secret name) the plan has:\n\
  - a central Secret and RegistryCredential in the system namespace (one per distinct value: a rotation \
that reached only some copies gives two, the newest first);\n\
  - the narrowest PullGrants that keep every pod pulling that pulls with a copy today: the namespaces and \
service accounts that use it, the repositories their images use, purposes pull (+ sync without KEP-4412, \
+ resolve where Knative Services or digest-pinned pods are);\n\
  - the proof: every such (pod, image) decided against the cluster's policy with the plan added, as \
`pullbroker can-i` would answer once applied; a pod it would break makes the command exit 1;\n\
  - the clean-up, in an order that never leaves a pod without a credential: apply, wait for the grants, \
drop the copies from service accounts, recreate the pods that name one, delete the copies.\n\n\
Nothing is written without --apply, and --apply writes only the Secrets, RegistryCredentials and \
PullGrants (server-side apply, field manager pullbroker-adopt): the clean-up is yours to run.\n\n\
Examples:\n  pullbroker adopt                     # the report\n  pullbroker adopt -o yaml > adopt.yaml # \
manifests for GitOps (the Secrets hold the credentials: seal them)\n  pullbroker adopt --apply\n  \
kubectl pullbroker adopt --mode sync   # clusters older than 1.34"
)]
pub struct Args {
    /// Kubeconfig context.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// How pods will get credentials: `plugin` (the KEP-4412 kubelet plugin;
    /// grants allow pull), `sync` (short-lived synced secrets for clusters
    /// without it; grants also allow sync, copying the password), or `auto`
    /// (plugin from Kubernetes 1.34, else sync).
    #[arg(long, value_enum, default_value = "auto")]
    mode: Mode,
    /// The broker's system namespace, where the central Secrets go.
    #[arg(long, default_value = "pullbroker-system", value_name = "NAMESPACE")]
    system_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Write the Secrets, RegistryCredentials and PullGrants (only when the
    /// proof holds). Deletes nothing.
    #[arg(long)]
    apply: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Auto,
    Plugin,
    Sync,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Output {
    /// The plan for a person.
    Table,
    /// The plan as JSON (no secret value).
    Json,
    /// Manifests: the Secrets (with the credentials), RegistryCredentials
    /// and PullGrants, the proof and clean-up as comments.
    Yaml,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Out<'a> {
    mode: &'static str,
    mode_reason: &'a str,
    scanned: &'a Scanned,
    #[serde(flatten)]
    plan: &'a Plan,
}

/// What the cluster supports: `sync` when its version is older than KEP-4412 beta.
async fn choose_mode(client: &kube::Client, mode: Mode) -> (bool, String) {
    match mode {
        Mode::Plugin => (false, "--mode plugin".into()),
        Mode::Sync => (true, "--mode sync".into()),
        Mode::Auto => match client.apiserver_version().await {
            Ok(v) => {
                let minor: u32 = v
                    .minor
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(0);
                let major: u32 = v.major.parse().unwrap_or(0);
                if (major, minor) >= KEP_4412_BETA {
                    (false, format!("Kubernetes {} passes service-account tokens to kubelet plugins (KEP-4412)", v.git_version))
                } else {
                    (true, format!("Kubernetes {} has no KEP-4412 plugins by default: synced secrets", v.git_version))
                }
            }
            Err(e) => (
                true,
                format!("cannot read the server's version ({e}): synced secrets, which every version supports"),
            ),
        },
    }
}

/// Namespaces whose images are resolved to digests: those with Knative
/// Services (CRD absent: none), and those with pods pulling by digest.
async fn resolving_namespaces(client: &kube::Client, inv: &Inventory) -> Result<BTreeSet<String>> {
    let mut out: BTreeSet<String> = inv
        .pods
        .iter()
        .filter(|p| p.images.iter().any(|i| i.contains("@sha256:")))
        .map(|p| p.namespace.clone())
        .collect();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "serving.knative.dev",
        "v1",
        "Service",
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    match list_all(&api, ListParams::default(), &|_| {}, |s: DynamicObject| {
        s.metadata.namespace
    })
    .await
    {
        Ok(ns) => out.extend(ns.into_iter().flatten()),
        Err(e)
            if e.downcast_ref::<kube::Error>()
                .is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 404)) => {}
        Err(e) => {
            return Err(e).context(super::cluster::cannot_list("services.serving.knative.dev"))
        }
    }
    Ok(out)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode> {
    let client = super::kube_client(args.context.clone()).await?;
    let progress = Progress::new();
    let inv = read(&client, None, &progress).await?;
    progress.done();
    let resolving = resolving_namespaces(&client, &inv).await?;
    let (sync, mode_reason) = choose_mode(&client, args.mode).await;
    let plan = adopt::plan(&Inputs {
        secrets: &inv.secrets,
        accounts: &inv.accounts,
        pods: &inv.pods,
        policy: inv.policy.as_ref(),
        resolving_namespaces: &resolving,
        options: Options {
            system_namespace: args.system_namespace.clone(),
            sync,
        },
    });
    let mode = if sync { "sync" } else { "plugin" };
    match args.output {
        Output::Table => print_report(&plan, mode, &mode_reason, &inv.scanned),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                mode,
                mode_reason: &mode_reason,
                scanned: &inv.scanned,
                plan: &plan,
            })?
        ),
        Output::Yaml => print!("{}", manifests(&plan, &args.system_namespace, mode)?),
    }
    if !plan.is_safe() {
        eprintln!(
            "error: the plan would leave {} (pod, image) pair(s) without a credential (listed above): nothing {}",
            plan.proof.broken.len(),
            if args.apply { "applied" } else { "to apply" }
        );
        return Ok(ExitCode::FAILURE);
    }
    if args.apply {
        apply(&client, &plan, &args.system_namespace).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn secret(plan_credential: &adopt::PlannedCredential, namespace: &str) -> Result<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": plan_credential.name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/created-by": FIELD_MANAGER},
        },
        "type": "kubernetes.io/dockerconfigjson",
    }))
    .map(|mut s: Secret| {
        s.data = Some(
            [(
                ".dockerconfigjson".to_string(),
                ByteString(plan_credential.config_json_exposing_secrets().into_bytes()),
            )]
            .into(),
        );
        s
    })?)
}

fn documents(
    plan: &Plan,
    namespace: &str,
) -> Result<(Vec<Secret>, Vec<RegistryCredential>, Vec<PullGrant>)> {
    let secrets = plan
        .credentials
        .iter()
        .map(|c| secret(c, namespace))
        .collect::<Result<_>>()?;
    let creds = plan
        .credentials
        .iter()
        .map(|c| RegistryCredential::new(&c.name, c.spec.clone()))
        .collect();
    let grants = plan
        .grants
        .iter()
        .map(|g| PullGrant::new(&g.name, g.spec.clone()))
        .collect();
    Ok((secrets, creds, grants))
}

/// Server-side apply of every document: reruns converge, and a field
/// another manager owns is a conflict reported, not overwritten.
async fn apply(client: &kube::Client, plan: &Plan, namespace: &str) -> Result<()> {
    let (secrets, creds, grants) = documents(plan, namespace)?;
    let params = PatchParams::apply(FIELD_MANAGER);
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for s in &secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        secrets_api
            .patch(&name, &params, &Patch::Apply(s))
            .await
            .with_context(|| format!("cannot apply Secret {namespace}/{name}"))?;
        println!("applied Secret {namespace}/{name}");
    }
    let creds_api: Api<RegistryCredential> = Api::all(client.clone());
    for c in &creds {
        let name = c.metadata.name.clone().unwrap_or_default();
        creds_api
            .patch(&name, &params, &Patch::Apply(c))
            .await
            .with_context(|| format!("cannot apply RegistryCredential {name}"))?;
        println!("applied RegistryCredential {name}");
    }
    let grants_api: Api<PullGrant> = Api::all(client.clone());
    for g in &grants {
        let name = g.metadata.name.clone().unwrap_or_default();
        grants_api
            .patch(&name, &params, &Patch::Apply(g))
            .await
            .with_context(|| format!("cannot apply PullGrant {name}"))?;
        println!("applied PullGrant {name}");
    }
    println!("done: nothing was deleted; the clean-up above is yours to run, in its order");
    Ok(())
}

/// Manifests for GitOps, the proof and the clean-up as comments.
fn manifests(plan: &Plan, namespace: &str, mode: &str) -> Result<String> {
    let (secrets, creds, grants) = documents(plan, namespace)?;
    let mut out = format!(
        "# pullbroker adopt ({mode}): {} credential(s), {} grant(s); proof: {} (pod, image) pair(s), {} broken.\n\
         # The Secrets below hold the upstream credentials: seal or encrypt them before committing.\n",
        plan.credentials.len(),
        plan.grants.len(),
        plan.proof.checked,
        plan.proof.broken.len()
    );
    for b in &plan.proof.broken {
        out.push_str(&format!(
            "# BROKEN: Pod {} image {}: {}\n",
            b.pod, b.image, b.reason
        ));
    }
    for s in &secrets {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(s)?);
    }
    for c in &creds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(c)?);
    }
    for g in &grants {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(g)?);
    }
    out.push_str("---\n# Clean-up, in this order, once applied:\n");
    for (i, step) in plan.cleanup.iter().enumerate() {
        out.push_str(&format!("# {}. {step}\n", i + 1));
    }
    for n in &plan.notes {
        out.push_str(&format!("# {} {}: {}\n", n.severity, n.code, n.message));
    }
    Ok(out)
}

fn print_report(plan: &Plan, mode: &str, reason: &str, scanned: &Scanned) {
    println!(
        "pullbroker adopt — mode {mode} ({reason}); read {} secrets ({} pull secrets), {} service accounts, {} pods\n",
        scanned.secrets, scanned.pull_secrets, scanned.service_accounts, scanned.pods
    );
    if plan.credentials.is_empty() {
        println!("No pull secret is copied into several namespaces and used: nothing to adopt.");
    }
    for c in &plan.credentials {
        println!(
            "RegistryCredential {} (Secret of the same name): registries {}{}; replaces {} cop{}",
            c.name,
            c.spec.registries.join(", "),
            c.username
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            c.copies.len(),
            if c.copies.len() == 1 { "y" } else { "ies" }
        );
    }
    for g in &plan.grants {
        let s = &g.spec;
        let purposes: Vec<String> = s.purposes.iter().map(ToString::to_string).collect();
        println!(
            "PullGrant {} → {}: {} namespace(s) [{}], service accounts [{}], repositories [{}], purposes [{}]; {} pod(s)",
            g.name,
            s.credential,
            s.subjects.namespaces.len(),
            abbreviate(&s.subjects.namespaces),
            s.subjects.service_accounts.join(", "),
            s.repositories.join(", "),
            purposes.join(", "),
            g.pods
        );
    }
    println!(
        "\nProof: {} (pod, image) pair(s) that pull with a copy today, each decided with the plan applied: {}",
        plan.proof.checked,
        if plan.is_safe() {
            "every one allowed".to_string()
        } else {
            format!("{} NOT allowed", plan.proof.broken.len())
        }
    );
    for b in &plan.proof.broken {
        println!("  BROKEN Pod {} image {}: {}", b.pod, b.image, b.reason);
    }
    if !plan.notes.is_empty() {
        println!("\nNotes:");
        for n in &plan.notes {
            println!(
                "  {:<7} {:<20} {} — {}",
                n.severity, n.code, n.message, n.fix
            );
            println!("          {}", abbreviate(&n.objects));
        }
    }
    if !plan.cleanup.is_empty() {
        println!("\nClean-up, in this order (each step keeps every pod with a credential):");
        for (i, step) in plan.cleanup.iter().enumerate() {
            println!("  {:>4}. {step}", i + 1);
        }
    }
}

fn abbreviate(items: &[String]) -> String {
    const SHOWN: usize = 8;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            items[..SHOWN].join(", "),
            items.len() - SHOWN
        )
    }
}
