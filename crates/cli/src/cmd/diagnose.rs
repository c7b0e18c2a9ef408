//! `pullbroker diagnose`: why a pod cannot pull its images. Reads the pod's
//! status and Events, rebuilds the credentials kubelet would try in its
//! order (the pod's `imagePullSecrets`, then the kubelet plugin through
//! pullbroker's policy), re-tries each against the registry from here, and
//! prints the cause and the fix that `core::diagnose::verdict` finds. What
//! is not I/O — which pod, what kubelet reported, the candidates, whether
//! to re-check, the report — is `core::diagnose::gather`'s; this module
//! reads the cluster into its types, re-checks against registries and
//! prints.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::cluster;
use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Pod, Secret, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::Selector;
use pullbroker_core::diagnose::gather::{
    self, connect_failure, failure_notes, kubelet_report, recheck, secret_config, ContainerReport,
    ContainerState, EventNote, Gathered, PodOf, PodSummary, PullSecrets, Report,
};
use pullbroker_core::diagnose::{Candidate, Check, PluginAnswer, PullFailure, SecretProblem};
use pullbroker_core::policy::model::CaBundleSource;
use pullbroker_core::policy::Subject;
use pullbroker_core::{Credential, Reference};
use pullbroker_credentials::runtime;
use pullbroker_registry::{ClientSettings, RegistryClient, RegistryError, RegistryTls};

use super::output;

#[derive(clap::Args, Debug)]
#[command(after_long_help = "What it does, for each container of the pod:\n  \
1. reads what kubelet reported (waiting state and Events) and classifies it: unauthorized, forbidden, \
not found, TLS, DNS, refused, timeout, rate limited, invalid image name;\n  \
2. rebuilds the credentials kubelet tries, in its order: each entry of the pod's imagePullSecrets \
for the image's registry, then the kubelet plugin (pullbroker's PullGrants for the pod's service \
account, as the broker decides), else anonymous;\n  \
3. re-tries each against the registry from this machine (skip with --no-network) and names the \
one that applies;\n  \
4. spots the service-account admission race (the service account has the secret, the pod does not);\n  \
5. prints the cause and the exact fix.\n\n\
The re-checks run from here, not from the node: DNS, proxies and trusted CAs may differ. \
They trust what the broker trusts: each RegistryCredential's transport (its caBundle read from the \
Secret or ConfigMap in --system-namespace, or plainHttp), plus --ca-file. \
Never prints a secret.\n\n\
Exit code 0 when no container has a pull problem, 1 when one does (or on error).\n\n\
Examples:\n  pullbroker diagnose pod team-a/web-7d9f-x2x\n  pullbroker diagnose deployment web -n team-a\n  \
pullbroker diagnose ksvc hello -n team-a -o json\n  kubectl pullbroker diagnose pod/web-7d9f-x2x --no-network")]
pub struct Args {
    /// pod, deployment or ksvc (also `KIND/NAME`).
    #[arg(value_name = "KIND")]
    kind: String,
    /// NAME or NAMESPACE/NAME (omit when KIND is `KIND/NAME`).
    #[arg(value_name = "NAME")]
    name: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Kubeconfig context.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Do not contact registries: diagnose from the cluster's objects only.
    #[arg(long)]
    no_network: bool,
    /// Limit for each registry request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Trust the CA certificates in this PEM file as well as the system's
    /// (e.g. the CA the nodes trust for a private registry).
    #[arg(long, value_name = "PEM")]
    ca_file: Vec<PathBuf>,
    /// Reach this registry (host[:port]) over plain HTTP only.
    #[arg(long, value_name = "REGISTRY")]
    plain_http: Vec<String>,
    /// The broker's system namespace, where RegistryCredentials' CA bundles live.
    #[arg(long, value_name = "NAMESPACE", default_value = "pullbroker-system")]
    system_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: output::Report,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(diagnose(&args))?;
    match args.output {
        output::Report::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        output::Report::Text => print_text(&report),
    }
    Ok(
        if report.containers.iter().any(ContainerReport::has_problem) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

enum Kind {
    Pod,
    Deployment,
    KnativeService,
}

fn target(args: &Args) -> Result<(Kind, Option<String>, String)> {
    let (kind, name) = match (args.kind.split_once('/'), &args.name) {
        (Some((k, n)), None) => (k.to_string(), n.to_string()),
        (None, Some(n)) => (args.kind.clone(), n.clone()),
        (Some(_), Some(_)) => bail!("give KIND/NAME or KIND NAME, not both"),
        (None, None) => bail!("missing NAME: pullbroker diagnose {} NAME", args.kind),
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => Kind::Pod,
        "deployment" | "deployments" | "deploy" => Kind::Deployment,
        "ksvc" | "kservice" | "service.serving.knative.dev" => Kind::KnativeService,
        other => bail!("cannot diagnose a {other:?}: KIND is pod, deployment or ksvc"),
    };
    let (ns, name) = match name.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (args.namespace.clone(), name),
    };
    if name.is_empty() {
        bail!("empty NAME");
    }
    Ok((kind, ns, name))
}

/// The pod to look at among a workload's (`what`, its pods selected by
/// `selector`), as `core::diagnose::gather::pick` chooses; with a line
/// saying which was picked.
async fn pick(pods: &Api<Pod>, selector: &str, what: &str) -> Result<(Pod, Option<String>)> {
    let mut found = cluster::list_all(pods, ListParams::default().labels(selector), &|_| {}, |p| p)
        .await
        .with_context(|| cluster::cannot_list("pods"))?;
    let summaries: Vec<PodSummary> = found.iter().map(summary).collect();
    let i = gather::pick(&summaries).ok_or_else(|| anyhow!("{what} has no pods"))?;
    let pod = found.swap_remove(i);
    let picked = format!(
        "pod {} of {what}",
        pod.metadata.name.as_deref().unwrap_or("")
    );
    Ok((pod, Some(picked)))
}

fn summary(p: &Pod) -> PodSummary {
    let status = p.status.as_ref();
    PodSummary {
        name: p.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()),
        waiting_reasons: status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .collect(),
    }
}

async fn find_pod(
    client: &kube::Client,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Result<(Pod, Option<String>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    match kind {
        Kind::Pod => {
            let pod = pods
                .get_opt(name)
                .await
                .with_context(|| format!("cannot get pod {ns}/{name}"))?
                .ok_or_else(|| anyhow!("pod {ns}/{name} not found"))?;
            Ok((pod, None))
        }
        Kind::Deployment => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .with_context(|| format!("cannot get deployment {ns}/{name}"))?
                .ok_or_else(|| anyhow!("deployment {ns}/{name} not found"))?;
            let selector = d
                .spec
                .map(|s| s.selector)
                .ok_or_else(|| anyhow!("deployment {ns}/{name} has no spec"))?;
            let selector = Selector::try_from(selector)
                .map_err(|e| anyhow!("deployment {ns}/{name}: its selector: {e}"))?
                .to_string();
            pick(
                &pods,
                &selector,
                &format!("deployment {ns}/{name} (selector {selector})"),
            )
            .await
        }
        Kind::KnativeService => {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"),
                "services",
            );
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
                .get_opt(name)
                .await
                .with_context(|| {
                    format!("cannot get ksvc {ns}/{name} (is Knative Serving installed?)")
                })?
                .ok_or_else(|| anyhow!("ksvc {ns}/{name} not found"))?;
            let selector = format!("serving.knative.dev/service={name}");
            pick(
                &pods,
                &selector,
                &format!("ksvc {ns}/{name} (pods {selector})"),
            )
            .await
        }
    }
}

fn event_note(e: Event) -> EventNote {
    EventNote {
        type_: e.type_,
        reason: e.reason,
        message: e.message,
        field_path: e.involved_object.field_path,
        when: e
            .last_timestamp
            .map(|t| t.0.as_second())
            .or(e.event_time.map(|t| t.0.as_second())),
    }
}

fn state_of(status: Option<&ContainerStatus>) -> ContainerState {
    let Some(state) = status.and_then(|s| s.state.as_ref()) else {
        return ContainerState::Unknown;
    };
    if let Some(w) = &state.waiting {
        ContainerState::Waiting {
            reason: w.reason.clone(),
            message: w.message.clone(),
        }
    } else if state.running.is_some() {
        ContainerState::Running
    } else if let Some(t) = &state.terminated {
        ContainerState::Terminated {
            reason: t.reason.clone(),
        }
    } else {
        ContainerState::Unknown
    }
}

/// A registry error as the class kubelet's message would have.
fn failure_of(e: &RegistryError) -> PullFailure {
    match e {
        RegistryError::Unauthorized { .. } => PullFailure::Unauthorized,
        RegistryError::Denied { .. } => PullFailure::Forbidden,
        RegistryError::NotFound { .. } => PullFailure::NotFound,
        RegistryError::Timeout { .. } => PullFailure::Timeout,
        RegistryError::RateLimited { .. } => PullFailure::RateLimited,
        RegistryError::Connect { detail, .. } => connect_failure(detail),
        _ => PullFailure::Unknown,
    }
}

/// A pull secret as `core::diagnose::gather` reads it.
fn pull_secret(secret: &Secret) -> Result<pullbroker_core::DockerConfig, String> {
    secret_config(secret.type_.as_deref(), |key| {
        Some(secret.data.as_ref()?.get(key)?.0.as_slice())
    })
}

/// Re-tries each candidate that can be tried from here; asks whether the
/// repository exists when a manifest was not found.
async fn check(
    client: &RegistryClient,
    image: &Reference,
    candidates: &mut [(Candidate, Option<Credential>)],
) -> Option<bool> {
    let mut not_found_with: Option<Credential> = None;
    for (c, credential) in candidates.iter_mut() {
        let Some(credential) = credential else {
            continue;
        };
        c.check = match client
            .head_manifest(image, std::slice::from_ref(credential))
            .await
        {
            Ok(info) => Check::Pulled {
                digest: info.digest.to_string(),
            },
            Err(e) => {
                let failure = failure_of(&e);
                if failure == PullFailure::NotFound && not_found_with.is_none() {
                    not_found_with = Some(credential.clone());
                }
                Check::Failed {
                    failure,
                    detail: e.to_string(),
                }
            }
        };
    }
    let credential = not_found_with?;
    client
        .repository_exists(image, &credential)
        .await
        .ok()
        .flatten()
}

async fn diagnose(args: &Args) -> Result<Report> {
    let (kind, ns, name) = target(args)?;
    let client = super::kube_client(args.context.clone()).await?;
    let ns = ns.unwrap_or_else(|| client.default_namespace().to_string());
    let (pod, picked) = find_pod(&client, kind, &ns, &name).await?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_secrets: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect();

    let mut selector = format!("involvedObject.kind=Pod,involvedObject.name={pod_name}");
    if let Some(uid) = &pod.metadata.uid {
        selector.push_str(&format!(",involvedObject.uid={uid}"));
    }
    let events = cluster::list_all(
        &Api::<Event>::namespaced(client.clone(), &ns),
        ListParams::default().fields(&selector),
        &|_| {},
        |e| e,
    )
    .await
    .with_context(|| cluster::cannot_list("events"))?;
    let notes = failure_notes(events.into_iter().map(event_note));

    let account_secrets: Vec<String> = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get_opt(&account)
        .await
        .with_context(|| format!("cannot get serviceaccount {ns}/{account}"))?
        .and_then(|a| a.image_pull_secrets)
        .into_iter()
        .flatten()
        .map(|r| r.name)
        .collect();
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut secrets = PullSecrets::new();
    let wanted: BTreeSet<&String> = pod_secrets.iter().chain(&account_secrets).collect();
    for s in wanted {
        let got = secrets_api.get_opt(s).await.with_context(|| {
            format!("cannot get secret {ns}/{s} (kubectl auth can-i get secrets -n {ns})")
        })?;
        secrets.insert(s.clone(), got.as_ref().map(pull_secret));
    }
    let policy = cluster::policy(&client, &|_| {}).await?;

    let mut trust_notes = Vec::new();
    let registry = if args.no_network {
        None
    } else {
        let mut ca_pems = Vec::new();
        for path in &args.ca_file {
            ca_pems.push(
                std::fs::read(path)
                    .with_context(|| format!("cannot read CA file {}", path.display()))?,
            );
        }
        let registry = RegistryClient::new(ClientSettings {
            timeout: args.timeout,
            connect_timeout: args.timeout.min(Duration::from_secs(5)),
            // One answer per candidate is what is asked; kubelet backs off itself.
            retries: 0,
            plain_http: args.plain_http.clone(),
            ca_pems,
            // From where it runs, as docker or skopeo there would go.
            ..ClientSettings::from_env()
        })
        .map_err(anyhow::Error::msg)?;
        if let Some(p) = &policy {
            let (tls, unread) = cluster_trust(&client, &p.policy, &args.system_namespace).await;
            trust_notes.extend(unread);
            // Each bundle was checked to hold a certificate when read.
            registry
                .set_registry_tls(tls)
                .map_err(anyhow::Error::msg)
                .context("a CA bundle of a RegistryCredential is unusable")?;
        }
        Some(registry)
    };

    let status = pod.status.clone().unwrap_or_default();
    let statuses: Vec<ContainerStatus> = status
        .init_container_statuses
        .into_iter()
        .flatten()
        .chain(status.container_statuses.into_iter().flatten())
        .collect();
    let subject = Subject::new(&ns, &account);
    let cluster_policy = policy.as_ref().map(|p| gather::ClusterPolicy {
        policy: &p.policy,
        states: &p.states,
    });
    let of = PodOf {
        namespace: &ns,
        pod: &pod_name,
        service_account: &account,
    };
    let mut containers = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let image = c.image.clone().unwrap_or_default();
        let state = state_of(statuses.iter().find(|s| s.name == c.name));
        let (message, reported) = kubelet_report(&state, notes.get(&c.name).map(String::as_str));
        // An invalid reference has no candidates: kubelet never pulls it.
        let mut gathered = Gathered::default();
        let mut repository_exists = None;
        if let Ok(r) = Reference::parse(&image) {
            gathered = gather::gather(
                &r,
                &pod_secrets,
                &secrets,
                &account_secrets,
                &subject,
                cluster_policy,
            );
            match (recheck(registry.is_some(), reported), &registry) {
                (Ok(()), Some(client)) => {
                    repository_exists = check(client, &r, &mut gathered.candidates).await;
                }
                (why, _) => {
                    let why = why.err().unwrap_or("--no-network");
                    for (cand, credential) in &mut gathered.candidates {
                        if credential.is_some() {
                            cand.check = Check::NotChecked { why: why.into() };
                        }
                    }
                }
            }
        }
        containers.push(ContainerReport::new(
            of,
            (c.name.clone(), image),
            &state,
            (message, reported),
            gathered,
            repository_exists,
        ));
    }
    Ok(Report {
        pod: format!("{ns}/{pod_name}"),
        service_account: account,
        node: spec.node_name.clone(),
        picked,
        network_checked: registry.is_some(),
        notes: trust_notes,
        containers,
    })
}

fn label(f: PullFailure) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// The per-registry trust the broker has: each RegistryCredential's
/// `transport`, its CA bundle read from the system namespace and checked by
/// the broker's own code (`runtime::trust`). A bundle that cannot be read
/// (no right to, or missing) is left out with a note saying so: those
/// registries are then re-checked against the system's roots and
/// `--ca-file` only.
async fn cluster_trust(
    client: &kube::Client,
    policy: &pullbroker_core::policy::Policy,
    system_namespace: &str,
) -> (Vec<RegistryTls>, Vec<String>) {
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), system_namespace);
    let maps_api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    let (mut tls, mut notes) = (Vec::new(), Vec::new());
    for (name, spec) in policy.credentials() {
        let mut secrets = runtime::Secrets::new();
        let mut maps = runtime::ConfigMaps::new();
        match spec
            .transport
            .as_ref()
            .and_then(|t| t.ca_bundle.as_ref())
            .and_then(|b| b.source())
        {
            Some(CaBundleSource::Secret(n)) => match secrets_api.get_opt(n).await {
                Ok(Some(secret)) => {
                    secrets.insert(
                        n.to_string(),
                        (None, pullbroker_cluster::secret_data(&secret)),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    notes.push(format!("credential {name:?}: cannot read its CA bundle, Secret {system_namespace}/{n}: {e} (pass the CA with --ca-file)"));
                    continue;
                }
            },
            Some(CaBundleSource::ConfigMap(n)) => match maps_api.get_opt(n).await {
                Ok(Some(map)) => {
                    maps.insert(n.to_string(), pullbroker_cluster::config_map_data(&map));
                }
                Ok(None) => {}
                Err(e) => {
                    notes.push(format!("credential {name:?}: cannot read its CA bundle, ConfigMap {system_namespace}/{n}: {e} (pass the CA with --ca-file)"));
                    continue;
                }
            },
            None => {}
        }
        match runtime::trust(spec, &secrets, &maps) {
            Ok(Some(t)) => tls.push(pullbroker_broker::config::registry_tls(&t)),
            Ok(None) => {}
            Err(e) => notes.push(format!(
                "credential {name:?}: {e}; its registries are re-checked without it"
            )),
        }
    }
    (tls, notes)
}

fn print_text(r: &Report) {
    if let Some(p) = &r.picked {
        println!("{p}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    print!("Pod {} (service account {}", r.pod, r.service_account);
    if let Some(n) = &r.node {
        print!(", node {n}");
    }
    println!(")");
    for c in &r.containers {
        println!();
        println!(
            "container {}  image {}  ({})",
            c.container, c.image, c.state
        );
        match (c.reported, &c.message) {
            (Some(f), Some(m)) => println!("  kubelet reported: {}\n    {m}", label(f)),
            (Some(f), None) => println!("  kubelet reported: {}", label(f)),
            _ => println!("  kubelet reported no pull failure"),
        }
        for p in &c.secret_problems {
            match p {
                SecretProblem::Missing { secret } => {
                    println!("  imagePullSecrets: {secret} does not exist")
                }
                SecretProblem::Unusable { secret, why } => {
                    println!("  imagePullSecrets: {secret} is unusable: {why}")
                }
                SecretProblem::NoEntry { secret } => {
                    println!("  imagePullSecrets: {secret} has no entry for this registry")
                }
            }
        }
        if !c.admission_race.is_empty() {
            println!(
                "  service account has {} for this registry; the pod does not",
                c.admission_race.join(", ")
            );
        }
        match &c.plugin {
            PluginAnswer::NotInstalled => println!("  pullbroker: CRDs not installed"),
            PluginAnswer::Denied { reason } => println!("  pullbroker can-i pull: no — {reason}"),
            PluginAnswer::Granted {
                grant, credential, ..
            } => println!(
                "  pullbroker can-i pull: yes — PullGrant {grant}, RegistryCredential {credential}"
            ),
        }
        if !c.candidates.is_empty() {
            println!("  candidates, in kubelet's order:");
        }
        for (i, cand) in c.candidates.iter().enumerate() {
            let outcome = match &cand.check {
                Check::NotChecked { why } => format!("not checked ({why})"),
                Check::Pulled { digest } => format!("pulls ({digest})"),
                Check::Failed { failure, detail } => format!("{} — {detail}", label(*failure)),
            };
            let mark = if c.verdict.applies == Some(i) {
                " ← applies"
            } else {
                ""
            };
            println!("    {}. {}: {outcome}{mark}", i + 1, cand.source);
        }
        println!("  cause: {}", c.verdict.cause);
        println!("  fix:   {}", c.verdict.fix);
    }
    if r.network_checked {
        println!(
            "\n(re-checked from this machine; the node's DNS, proxy and trusted CAs may differ)"
        );
    }
}
