//! `pullbroker diagnose`: why a pod cannot pull its images. Reads the pod's
//! status and Events, rebuilds the credentials kubelet would try in its
//! order (the pod's `imagePullSecrets`, then the kubelet plugin through
//! pullbroker's policy), re-tries each against the registry from here, and
//! prints the cause and the fix that `core::diagnose::verdict` finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Pod, Secret, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::Selector;
use pullbroker_core::audit::{
    config_key, pull_secret_config, TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON,
};
use pullbroker_core::diagnose::{
    classify, verdict, Candidate, Check, Facts, PluginAnswer, PullFailure, SecretProblem, Source,
    Verdict,
};
use pullbroker_core::policy::model::CaBundleSource;
use pullbroker_core::policy::{Allowed, Decision, Purpose, Request, Subject, Target};
use pullbroker_core::{Credential, DockerConfig, Reference};
use pullbroker_credentials::runtime;
use pullbroker_registry::{ClientSettings, RegistryClient, RegistryError, RegistryTls};
use serde::Serialize;

use super::cluster::{self, ClusterPolicy};

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

const PULL_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// One container's image and what kubelet said about it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerReport {
    container: String,
    image: String,
    /// `running`, `waiting: REASON`, `terminated: REASON`, or `unknown`.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported: Option<PullFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    candidates: Vec<Candidate>,
    secret_problems: Vec<SecretProblem>,
    admission_race: Vec<String>,
    plugin: PluginAnswer,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository_exists: Option<bool>,
    verdict: Verdict,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    pod: String,
    service_account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    picked: Option<String>,
    network_checked: bool,
    /// What limited the re-checks (a CA bundle that could not be read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    containers: Vec<ContainerReport>,
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
    let problem = report
        .containers
        .iter()
        .any(|c| c.reported.is_some() || c.verdict.failure.is_some());
    Ok(if problem {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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

fn pull_failing(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|r| PULL_REASONS.contains(&r))
}

/// The pod to look at among a workload's (`what`, its pods selected by
/// `selector`): one failing to pull, else one not running, else the first;
/// with a line saying which was picked.
async fn pick(pods: &Api<Pod>, selector: &str, what: &str) -> Result<(Pod, Option<String>)> {
    let mut found = cluster::list_all(pods, ListParams::default().labels(selector), &|_| {}, |p| p)
        .await
        .with_context(|| cluster::cannot_list("pods"))?;
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let running = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Running" || ph == "Succeeded")
    };
    let i = found
        .iter()
        .position(pull_failing)
        .or_else(|| found.iter().position(|p| !running(p)))
        .or((!found.is_empty()).then_some(0))
        .ok_or_else(|| anyhow!("{what} has no pods"))?;
    let pod = found.swap_remove(i);
    let picked = format!(
        "pod {} of {what}",
        pod.metadata.name.as_deref().unwrap_or("")
    );
    Ok((pod, Some(picked)))
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

/// The newest pull-failure note kubelet recorded per container, from Events
/// whose `fieldPath` is `spec.containers{NAME}` (or `initContainers`).
fn failure_notes(events: Vec<Event>) -> BTreeMap<String, String> {
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for e in events {
        let is_pull_note = e.type_.as_deref() == Some("Warning")
            && matches!(e.reason.as_deref(), Some("Failed" | "InspectFailed"))
            && e.message
                .as_deref()
                .is_some_and(|m| !m.starts_with("Error: "));
        if !is_pull_note {
            continue;
        }
        let Some(path) = e.involved_object.field_path.as_deref() else {
            continue;
        };
        let Some(container) = path
            .split_once('{')
            .and_then(|(_, rest)| rest.strip_suffix('}'))
        else {
            continue;
        };
        let when = e
            .last_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .or(e.event_time.as_ref().map(|t| t.0.as_second()))
            .unwrap_or(0);
        let message = e.message.unwrap_or_default();
        match newest.get(container) {
            Some((t, _)) if *t > when => {}
            _ => {
                newest.insert(container.to_string(), (when, message));
            }
        }
    }
    newest.into_iter().map(|(k, (_, m))| (k, m)).collect()
}

fn state_of(status: Option<&ContainerStatus>) -> (String, Option<String>, Option<String>) {
    let Some(state) = status.and_then(|s| s.state.as_ref()) else {
        return ("unknown".into(), None, None);
    };
    if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        return (
            format!("waiting: {reason}"),
            Some(reason),
            w.message.clone(),
        );
    }
    if state.running.is_some() {
        return ("running".into(), None, None);
    }
    if let Some(t) = &state.terminated {
        return (
            format!("terminated: {}", t.reason.clone().unwrap_or_default()),
            None,
            None,
        );
    }
    ("unknown".into(), None, None)
}

/// A registry error as the class kubelet's message would have.
fn failure_of(e: &RegistryError) -> PullFailure {
    match e {
        RegistryError::Unauthorized { .. } => PullFailure::Unauthorized,
        RegistryError::Denied { .. } => PullFailure::Forbidden,
        RegistryError::NotFound { .. } => PullFailure::NotFound,
        RegistryError::Timeout { .. } => PullFailure::Timeout,
        RegistryError::RateLimited { .. } => PullFailure::RateLimited,
        RegistryError::Connect { detail, .. } => {
            let d = detail.to_ascii_lowercase();
            if d.contains("certificate") || d.contains("tls") || d.contains("handshake") {
                PullFailure::Tls
            } else if d.contains("refused") {
                PullFailure::Refused
            } else if d.contains("lookup") || d.contains("dns") || d.contains("name or service") {
                PullFailure::Dns
            } else if d.contains("timed out") {
                PullFailure::Timeout
            } else {
                PullFailure::Unknown
            }
        }
        _ => PullFailure::Unknown,
    }
}

/// The docker config of a pull secret, or why it is not one.
fn config_of(secret: &Secret) -> Result<DockerConfig, String> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != TYPE_DOCKERCONFIGJSON && type_ != TYPE_DOCKERCFG {
        return Err(format!("type {type_}, not {TYPE_DOCKERCONFIGJSON}"));
    }
    let bytes = secret.data.as_ref().and_then(|d| d.get(config_key(type_)));
    pull_secret_config(type_, bytes.map(|b| b.0.as_slice()))
}

/// What the cluster says about one image before any network check.
struct Gathered {
    candidates: Vec<(Candidate, Option<Credential>)>,
    secret_problems: Vec<SecretProblem>,
    admission_race: Vec<String>,
    plugin: PluginAnswer,
}

fn gather(
    image: &Reference,
    pod_secrets: &[String],
    secrets: &BTreeMap<String, Option<Secret>>,
    account_secrets: &[String],
    subject: &Subject,
    policy: Option<&ClusterPolicy>,
) -> Gathered {
    let mut candidates = Vec::new();
    let mut secret_problems = Vec::new();
    for name in pod_secrets {
        let config = match secrets.get(name).and_then(Option::as_ref) {
            None => {
                secret_problems.push(SecretProblem::Missing {
                    secret: name.clone(),
                });
                continue;
            }
            Some(s) => match config_of(s) {
                Ok(c) => c,
                Err(why) => {
                    secret_problems.push(SecretProblem::Unusable {
                        secret: name.clone(),
                        why,
                    });
                    continue;
                }
            },
        };
        let entries = config.candidates(image);
        if entries.is_empty() {
            secret_problems.push(SecretProblem::NoEntry {
                secret: name.clone(),
            });
        }
        for e in entries {
            let username = match e.credential() {
                Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                    Some(username.clone())
                }
                _ => None,
            };
            candidates.push((
                Candidate {
                    source: Source::PodSecret {
                        secret: name.clone(),
                        entry: e.key().to_string(),
                        username,
                    },
                    check: Check::NotChecked {
                        why: "not checked yet".into(),
                    },
                },
                Some(e.credential().clone()),
            ));
        }
    }
    let admission_race = account_secrets
        .iter()
        .filter(|s| !pod_secrets.contains(s))
        .filter(|s| {
            secrets
                .get(*s)
                .and_then(Option::as_ref)
                .and_then(|s| config_of(s).ok())
                .is_some_and(|c| !c.candidates(image).is_empty())
        })
        .cloned()
        .collect();
    let plugin = match policy {
        None => PluginAnswer::NotInstalled,
        Some(p) => {
            let d = p.policy.decide(&Request {
                subject,
                purpose: Purpose::Pull,
                target: Target::Image {
                    registry: image.registry(),
                    repository: image.repository(),
                },
                on_behalf_of: None,
                narrowed_to: None,
            });
            match d {
                Decision::Allow(Allowed {
                    grant, credential, ..
                }) => {
                    let state = p.state(&credential);
                    let ready = state.and_then(|s| s.ready);
                    candidates.push((
                        Candidate {
                            source: Source::Plugin {
                                grant: grant.clone(),
                                credential: credential.clone(),
                            },
                            check: Check::NotChecked {
                                why: format!(
                                    "the broker holds this credential; its RegistryCredential reports Ready={}",
                                    ready.map_or("unknown".to_string(), |r| if r { "True".into() } else { "False".into() })
                                ),
                            },
                        },
                        None,
                    ));
                    PluginAnswer::Granted {
                        grant,
                        credential,
                        ready,
                        ready_reason: state.map(|s| s.reason.clone()).unwrap_or_default(),
                    }
                }
                Decision::Deny { reason } => PluginAnswer::Denied { reason },
            }
        }
    };
    if candidates.is_empty() {
        candidates.push((
            Candidate {
                source: Source::Anonymous,
                check: Check::NotChecked {
                    why: "not checked yet".into(),
                },
            },
            Some(Credential::Anonymous),
        ));
    }
    Gathered {
        candidates,
        secret_problems,
        admission_race,
        plugin,
    }
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
    let notes = failure_notes(events);

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
    let mut secrets = BTreeMap::new();
    let wanted: BTreeSet<&String> = pod_secrets.iter().chain(&account_secrets).collect();
    for s in wanted {
        let got = secrets_api.get_opt(s).await.with_context(|| {
            format!("cannot get secret {ns}/{s} (kubectl auth can-i get secrets -n {ns})")
        })?;
        secrets.insert(s.clone(), got);
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
    let mut containers = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let image = c.image.clone().unwrap_or_default();
        let (state, reason, waiting_message) = state_of(statuses.iter().find(|s| s.name == c.name));
        let pulling = reason.as_deref().is_some_and(|r| PULL_REASONS.contains(&r));
        let note = notes.get(&c.name).cloned();
        // The Event holds kubelet's full error; the waiting message repeats it.
        let message = if pulling {
            note.or(waiting_message)
        } else {
            None
        };
        let reported = match (reason.as_deref(), &message) {
            (Some("InvalidImageName"), _) => Some(PullFailure::InvalidImageName),
            (_, Some(m)) => Some(classify(m)),
            _ if pulling => Some(PullFailure::Unknown),
            _ => None,
        };
        // An invalid reference has no candidates: kubelet never pulls it.
        let mut gathered = Gathered {
            candidates: Vec::new(),
            secret_problems: Vec::new(),
            admission_race: Vec::new(),
            plugin: PluginAnswer::NotInstalled,
        };
        let mut repository_exists = None;
        if let Ok(r) = Reference::parse(&image) {
            gathered = gather(
                &r,
                &pod_secrets,
                &secrets,
                &account_secrets,
                &subject,
                policy.as_ref(),
            );
            let client = match (&registry, reported) {
                (None, _) => Err("--no-network"),
                (_, None) => Err("no pull failure reported"),
                (_, Some(PullFailure::InvalidImageName | PullFailure::NotAPullFailure)) => {
                    Err("not a registry problem")
                }
                (Some(client), _) => Ok(client),
            };
            match client {
                Ok(client) => {
                    repository_exists = check(client, &r, &mut gathered.candidates).await;
                }
                Err(why) => {
                    for (cand, credential) in &mut gathered.candidates {
                        if credential.is_some() {
                            cand.check = Check::NotChecked { why: why.into() };
                        }
                    }
                }
            }
        }
        let candidates: Vec<Candidate> = gathered.candidates.into_iter().map(|(c, _)| c).collect();
        let v = verdict(&Facts {
            namespace: &ns,
            pod: &pod_name,
            service_account: &account,
            image: &image,
            reported,
            candidates: &candidates,
            secret_problems: &gathered.secret_problems,
            admission_race: &gathered.admission_race,
            plugin: &gathered.plugin,
            repository_exists,
        });
        containers.push(ContainerReport {
            container: c.name.clone(),
            image,
            state,
            reported,
            message,
            candidates,
            secret_problems: gathered.secret_problems,
            admission_race: gathered.admission_race,
            plugin: gathered.plugin,
            repository_exists,
            verdict: v,
        });
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
                    let data = secret
                        .data
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    secrets.insert(n.to_string(), (None, data));
                }
                Ok(None) => {}
                Err(e) => {
                    notes.push(format!("credential {name:?}: cannot read its CA bundle, Secret {system_namespace}/{n}: {e} (pass the CA with --ca-file)"));
                    continue;
                }
            },
            Some(CaBundleSource::ConfigMap(n)) => match maps_api.get_opt(n).await {
                Ok(Some(map)) => {
                    let text = map
                        .data
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k, v.into_bytes()));
                    let binary = map.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
                    maps.insert(n.to_string(), text.chain(binary).collect());
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
