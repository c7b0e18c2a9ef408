//! `pullbroker audit`: what is wrong with a cluster's pull secrets and
//! grants (`core::audit`), read from the API as kubectl would — pages of
//! 500, Secrets' data only for the docker-config types — and printed
//! without a secret value.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams};

use super::cluster::list_all;
use pullbroker_core::audit::{
    self, AccountInfo, CredentialState, Finding, Inputs, PodInfo, Report, SecretInfo, Severity,
    TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON,
};
use pullbroker_core::policy::Policy;
use pullbroker_core::time::UnixTime;
use serde::Serialize;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Findings, each with a severity, the objects involved and the fix:\n\
  secret.malformed / secret.empty-entry   pull secrets kubelet cannot use\n\
  secret.expired / secret.expiring        JWT credentials past or near their expiry (--warn-within)\n\
  secret.copied                           the same credential copied into several namespaces (compared by a keyed hash)\n\
  serviceaccount.missing-secret           imagePullSecrets naming a Secret that does not exist\n\
  pod.missing-secret / pod.no-credential  pods likely to fail pulling (pod secrets, then pullbroker's grants, as kubelet tries them)\n\
  grant.* / credential.unavailable        pullbroker grants wider than needed, static copies, credentials not ready\n\
  managed.orphan / managed.expired / managed.rotation-overdue   pullbroker's synced secrets\n\n\
Reads like kubectl (KUBECONFIG, --context, -n/-A); never prints a secret. Exit code 1 when a finding \
is at or above --fail-on (for CI).\n\n\
Examples:\n  pullbroker audit -A\n  pullbroker audit -n team-a -o json\n  pullbroker audit -A --fail-on warning"
)]
pub struct Args {
    /// Kubeconfig context.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Only this namespace (default: the context's).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// A JWT credential expiring within this is a warning.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    warn_within: Duration,
    /// Exit 1 when a finding is at or above this severity.
    #[arg(long, value_enum, value_name = "SEVERITY")]
    fail_on: Option<Level>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Also write one self-contained HTML page (no network, no external
    /// scripts) showing who can pull what: namespaces and service accounts →
    /// grants → credentials → registries, legacy pull secrets beside them,
    /// findings marked; searchable by namespace or image (`FILE#q=…` opens it filtered).
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// A broker's base URL (e.g. https://127.0.0.1:8443 through `kubectl
    /// port-forward`): its /metrics tell which grants allowed nothing since
    /// it started, reported as `grant.unused` (info). With several brokers,
    /// ask each.
    #[arg(long, value_name = "URL")]
    broker_url: Option<String>,
    /// PEM bundle of the CA that signed the broker's certificate.
    #[arg(long, value_name = "FILE", requires = "broker_url")]
    broker_ca: Option<std::path::PathBuf>,
}

/// The broker's count of each grant's use.
async fn grant_use(args: &Args, now: i64) -> Result<Option<audit::GrantUse>> {
    let Some(url) = &args.broker_url else {
        return Ok(None);
    };
    let ca = match &args.broker_ca {
        Some(f) => Some(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?),
        None => None,
    };
    let http = pullbroker_broker::http_client(ca.as_deref())?;
    let metrics_url = format!("{}/metrics", url.trim_end_matches('/'));
    let text = http
        .get(&metrics_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            anyhow::anyhow!(
                "--broker-url: cannot read {metrics_url}: {}",
                e.without_url()
            )
        })?
        .text()
        .await?;
    audit::GrantUse::parse(&text, now)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--broker-url {url}: {e}"))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Level {
    Info,
    Warning,
    Error,
}

impl From<Level> for Severity {
    fn from(l: Level) -> Severity {
        match l {
            Level::Info => Severity::Info,
            Level::Warning => Severity::Warning,
            Level::Error => Severity::Error,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Output {
    Table,
    Json,
    Yaml,
}

/// What was read, for the summary line.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Scanned {
    pub scope: String,
    pub secrets: usize,
    pub pull_secrets: usize,
    pub service_accounts: usize,
    pub pods: usize,
    pub pull_grants: Option<usize>,
    pub registry_credentials: Option<usize>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Out<'a> {
    scanned: &'a Scanned,
    counts: BTreeMap<Severity, usize>,
    #[serde(flatten)]
    report: &'a Report,
}

/// A spinner on a terminal's stderr (big clusters take a while), else nothing.
pub(crate) struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub(crate) fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {pos}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }
    fn stage(&self, what: &'static str) {
        if let Some(b) = &self.0 {
            b.set_message(what);
            b.set_position(0);
        }
    }
    fn set(&self, n: usize) {
        if let Some(b) = &self.0 {
            b.set_position(n as u64);
        }
    }
    pub(crate) fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn epoch(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

fn rfc3339(s: Option<&String>) -> Option<i64> {
    UnixTime::parse_rfc3339(s?).ok().map(|t| t.0)
}

fn secret_info(s: Secret) -> SecretInfo {
    let meta = s.metadata;
    let type_ = s.type_.unwrap_or_default();
    let key = audit::config_key(&type_);
    let annotations = meta.annotations.unwrap_or_default();
    SecretInfo {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        created: meta.creation_timestamp.as_ref().map(epoch),
        labels: meta.labels.unwrap_or_default(),
        issued_at: rfc3339(annotations.get("pullbroker.dev/issued-at")),
        expires_at: rfc3339(annotations.get("pullbroker.dev/expires-at")),
        config: s.data.and_then(|mut d| d.remove(key)).map(|b| b.0),
        type_,
    }
}

fn names(refs: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>) -> Vec<String> {
    refs.into_iter()
        .flatten()
        .map(|r| r.name)
        .filter(|n| !n.is_empty())
        .collect()
}

/// What audit (and adopt) read of a cluster.
pub(crate) struct Inventory {
    pub secrets: Vec<SecretInfo>,
    pub accounts: Vec<AccountInfo>,
    pub pods: Vec<PodInfo>,
    pub policy: Option<Policy>,
    pub states: Vec<CredentialState>,
    pub scanned: Scanned,
}

/// Reads every Secret's metadata, the pull secrets' data, service
/// accounts, pods and pullbroker's policy: of `namespace`, or of every
/// namespace when it is `None`.
pub(crate) async fn read(
    client: &kube::Client,
    namespace: Option<&str>,
    progress: &Progress,
) -> Result<Inventory> {
    let all = namespace.is_none();
    let namespace = namespace.unwrap_or_default().to_string();
    let scoped = |all: bool| -> Api<Secret> {
        if all {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &namespace)
        }
    };
    let mut scanned = Scanned {
        scope: if all {
            "all namespaces".into()
        } else {
            format!("namespace {namespace}")
        },
        ..Default::default()
    };
    let ctx = super::cluster::cannot_list;

    // Every Secret's metadata (for references), then the data of the pull-secret types only.
    progress.stage("secrets (metadata)");
    let secrets_api = scoped(all);
    let mut metas = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut p = ListParams::default().limit(500);
        if let Some(t) = &token {
            p = p.continue_token(t);
        }
        let page = secrets_api
            .list_metadata(&p)
            .await
            .with_context(|| ctx("secrets"))?;
        metas.extend(page.items);
        progress.set(metas.len());
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    scanned.secrets = metas.len();
    let mut secrets: BTreeMap<(String, String), SecretInfo> = BTreeMap::new();
    for m in metas {
        let info = SecretInfo {
            namespace: m.metadata.namespace.clone().unwrap_or_default(),
            name: m.metadata.name.clone().unwrap_or_default(),
            ..Default::default()
        };
        secrets.insert((info.namespace.clone(), info.name.clone()), info);
    }
    for t in [TYPE_DOCKERCONFIGJSON, TYPE_DOCKERCFG] {
        progress.stage("pull secrets");
        let params = ListParams::default().fields(&format!("type={t}"));
        for info in list_all(&secrets_api, params, &|n| progress.set(n), secret_info)
            .await
            .with_context(|| ctx("secrets"))?
        {
            scanned.pull_secrets += 1;
            secrets.insert((info.namespace.clone(), info.name.clone()), info);
        }
    }

    progress.stage("service accounts");
    let sa_api: Api<ServiceAccount> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    let accounts: Vec<AccountInfo> = list_all(
        &sa_api,
        ListParams::default(),
        &|n| progress.set(n),
        |a: ServiceAccount| AccountInfo {
            namespace: a.metadata.namespace.unwrap_or_default(),
            name: a.metadata.name.unwrap_or_default(),
            pull_secrets: names(a.image_pull_secrets),
        },
    )
    .await
    .with_context(|| ctx("serviceaccounts"))?;
    scanned.service_accounts = accounts.len();

    progress.stage("pods");
    let pod_api: Api<Pod> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    let pods: Vec<PodInfo> = list_all(
        &pod_api,
        ListParams::default(),
        &|n| progress.set(n),
        |p: Pod| {
            let status = p.status.unwrap_or_default();
            let pull_waits = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
                .filter_map(|c| {
                    let waiting = c.state.as_ref()?.waiting.as_ref()?;
                    let reason = waiting.reason.clone().unwrap_or_default();
                    audit::PULL_WAIT_REASONS
                        .contains(&reason.as_str())
                        .then(|| audit::PullWait {
                            container: c.name.clone(),
                            image: c.image.clone(),
                            reason,
                            message: waiting.message.clone().unwrap_or_default(),
                        })
                })
                .collect();
            let spec = p.spec.unwrap_or_default();
            let images = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .filter_map(|c| c.image.clone())
                .collect();
            PodInfo {
                namespace: p.metadata.namespace.unwrap_or_default(),
                name: p.metadata.name.unwrap_or_default(),
                service_account: spec
                    .service_account_name
                    .unwrap_or_else(|| "default".into()),
                pull_secrets: names(spec.image_pull_secrets),
                images,
                pull_waits,
            }
        },
    )
    .await
    .with_context(|| ctx("pods"))?;
    scanned.pods = pods.len();

    // pullbroker's own objects, when its CRDs are installed.
    progress.stage("pullbroker grants");
    let (policy, states) = match super::cluster::policy(client, &|n| progress.set(n)).await? {
        None => (None, Vec::new()),
        Some(c) => {
            scanned.pull_grants = Some(c.grants);
            scanned.registry_credentials = Some(c.credentials);
            (Some(c.policy), c.states)
        }
    };
    Ok(Inventory {
        secrets: secrets.into_values().collect(),
        accounts,
        pods,
        policy,
        states,
        scanned,
    })
}

fn print_table(report: &Report, scanned: &Scanned, counts: &BTreeMap<Severity, usize>) {
    for f in &report.findings {
        let Finding {
            severity,
            code,
            objects,
            message,
            fix,
        } = f;
        println!(
            "{:<8} {code}  {}",
            severity.to_string().to_uppercase(),
            objects.join(", ")
        );
        println!("         {message}");
        println!("         fix: {fix}");
    }
    if !report.findings.is_empty() {
        println!();
    }
    let count = |s| counts.get(&s).copied().unwrap_or(0);
    println!(
        "{} findings ({} error, {} warning, {} info) — {}: {} pull secrets of {} secrets, {} service accounts, {} pods{}",
        report.findings.len(),
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
        scanned.scope,
        scanned.pull_secrets,
        scanned.secrets,
        scanned.service_accounts,
        scanned.pods,
        match (scanned.pull_grants, scanned.registry_credentials) {
            (Some(g), Some(c)) => format!(", {g} PullGrants, {c} RegistryCredentials"),
            _ => ", pullbroker not installed".into(),
        }
    );
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let progress = Progress::new();
    let Inventory {
        secrets,
        accounts,
        pods,
        policy,
        states,
        scanned,
    } = runtime.block_on(async {
        let client = super::kube_client(args.context.clone()).await?;
        let namespace = match (&args.namespace, args.all_namespaces) {
            (_, true) => None,
            (Some(n), false) => Some(n.clone()),
            (None, false) => Some(client.default_namespace().to_string()),
        };
        read(&client, namespace.as_deref(), &progress).await
    })?;
    progress.done();
    let mut hash_key = [0u8; 32];
    getrandom::fill(&mut hash_key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let now = UnixTime::from_system(std::time::SystemTime::now()).0;
    let grant_use = runtime.block_on(grant_use(&args, now))?;
    let report = audit::audit(&Inputs {
        secrets: &secrets,
        accounts: &accounts,
        pods: &pods,
        policy: policy.as_ref(),
        credential_states: &states,
        now,
        warn_within: i64::try_from(args.warn_within.as_secs()).unwrap_or(i64::MAX),
        hash_key,
        grant_use: grant_use.as_ref(),
    });
    if let Some(file) = &args.html {
        let page = page(&report, &scanned, &accounts, &pods, policy.as_ref());
        std::fs::write(file, page).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let mut counts = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.severity).or_insert(0) += 1;
    }
    match args.output {
        Output::Table => print_table(&report, &scanned, &counts),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                scanned: &scanned,
                counts,
                report: &report
            })?
        ),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(&Out {
                scanned: &scanned,
                counts,
                report: &report
            })?
        ),
    }
    let failing = args
        .fail_on
        .is_some_and(|level| report.findings.iter().any(|f| f.severity >= level.into()));
    Ok(if failing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The HTML page: the template with the picture's data in it, as JSON in a
/// `<script type="application/json">` whose `<`, `>` and `&` are escaped,
/// so no name in the cluster can close the element or run anything. The
/// page builds itself with `textContent` only.
fn page(
    report: &Report,
    scanned: &Scanned,
    accounts: &[AccountInfo],
    pods: &[PodInfo],
    policy: Option<&Policy>,
) -> String {
    use pullbroker_core::policy::Subject;
    use serde_json::json;
    let mut namespaces: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    namespaces.extend(accounts.iter().map(|a| a.namespace.as_str()));
    namespaces.extend(pods.iter().map(|p| p.namespace.as_str()));
    namespaces.extend(report.pull_secrets.iter().map(|s| s.namespace.as_str()));
    let ns_of = |object: &str| -> Option<String> {
        let (_, rest) = object.split_once(' ')?;
        rest.split_once('/').map(|(ns, _)| ns.to_string())
    };
    let mut flags: BTreeMap<&str, Vec<Severity>> = BTreeMap::new();
    for f in &report.findings {
        for o in &f.objects {
            flags.entry(o.as_str()).or_default().push(f.severity);
        }
    }
    let grants_of = |ns: &str| -> Vec<&str> {
        policy
            .map(|p| {
                p.grants()
                    .iter()
                    .filter(|g| p.selects(&g.spec, &Subject::namespace(ns)))
                    .map(|g| g.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    };
    let lanes: Vec<serde_json::Value> = namespaces
        .iter()
        .map(|ns| {
            let grants = grants_of(ns);
            let accounts: Vec<serde_json::Value> = accounts
                .iter()
                .filter(|a| a.namespace == *ns)
                .map(|a| {
                    let covering: Vec<&str> = grants
                        .iter()
                        .copied()
                        .filter(|g| {
                            policy.is_some_and(|p| {
                                p.grants().iter().find(|x| x.name == *g).is_some_and(|x| {
                                    p.selects(&x.spec, &Subject::new(*ns, a.name.as_str()))
                                })
                            })
                        })
                        .collect();
                    json!({"name": a.name, "grants": covering, "pullSecrets": a.pull_secrets})
                })
                .collect();
            let pull_secrets: Vec<serde_json::Value> = report
                .pull_secrets
                .iter()
                .filter(|s| s.namespace == *ns)
                .map(|s| {
                    let mut users: Vec<&str> = s.entries.iter().filter_map(|e| e.username.as_deref()).collect();
                    users.dedup();
                    json!({"name": s.name, "registries": s.entries.iter().map(|e| e.registry.as_str()).collect::<Vec<_>>(),
                        "users": users, "invalid": s.invalid, "managed": s.managed_by_pullbroker})
                })
                .collect();
            let findings: Vec<usize> = report
                .findings
                .iter()
                .enumerate()
                .filter(|(_, f)| f.objects.iter().any(|o| ns_of(o).as_deref() == Some(*ns)))
                .map(|(i, _)| i)
                .collect();
            json!({"name": ns, "accounts": accounts, "pullSecrets": pull_secrets, "grants": grants, "findings": findings})
        })
        .collect();
    let grants: serde_json::Map<String, serde_json::Value> = policy
        .map(|p| {
            p.grants()
                .iter()
                .map(|g| {
                    (g.name.clone(), json!({"credential": g.spec.credential, "repositories": g.spec.repositories,
                        "purposes": g.spec.purposes.iter().map(|p| p.to_string()).collect::<Vec<_>>()}))
                })
                .collect()
        })
        .unwrap_or_default();
    let credentials: serde_json::Map<String, serde_json::Value> = policy
        .map(|p| {
            p.credentials()
                .iter()
                .map(|(name, c)| {
                    let kind = if c.source.token_issuer.is_some() {
                        "token issuer"
                    } else if c.source.exec.is_some() {
                        "exec"
                    } else if c.source.ecr.is_some() {
                        "ecr"
                    } else {
                        "static"
                    };
                    (
                        name.clone(),
                        json!({"registries": c.registries, "kind": kind}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let data = json!({
        "scope": scanned.scope,
        "generated": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "namespaces": lanes,
        "grants": grants,
        "credentials": credentials,
        "findings": report.findings,
        "flags": flags,
    });
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    include_str!("audit_page.html").replace("__DATA__", &json)
}
