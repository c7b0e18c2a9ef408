//! `pullbroker kubelet-config`: the node side of KEP-4412 — the kubelet's
//! `CredentialProviderConfig` for the plugin, with `matchImages` taken from
//! the RegistryCredentials (a file or the cluster), and with `--rbac` the
//! API-server RBAC that lets nodes request tokens for the broker's audience.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pullbroker_broker::server::NARROW_ANNOTATION;
use pullbroker_core::policy::model::{RegistryCredential, RegistryCredentialSpec};
use serde::Serialize;

use super::output;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Put the output at /etc/kubernetes/credential-providers/pullbroker.yaml on every node, the \
plugin binary (pullbroker-credential-provider) in the kubelet's credential-provider bin dir and the broker's CA \
at --ca-file, then start kubelet with --image-credential-provider-config and --image-credential-provider-bin-dir \
(docs/kubelet-plugin.md). A registry whose RegistryCredential has a transport (a private CA, plain HTTP) gets a note on stderr with the containerd hosts.toml every node needs for it. matchImages lists every registry of every RegistryCredential: kubelet asks the plugin \
only for images there, and the broker answers by the pod's grants.\n\n\
Examples:\n  pullbroker kubelet-config --from-cluster --broker-url https://pullbroker.corp.example:8443\n  \
pullbroker kubelet-config --config broker.yaml --broker-url https://10.0.0.5:8443 -o json\n  \
pullbroker kubelet-config --rbac | kubectl apply -f -"
)]
pub struct Args {
    /// The broker's base URL as nodes reach it (kubelet runs in the host
    /// network: not a cluster-DNS-only Service name). https unless loopback.
    #[arg(long, value_name = "URL", required_unless_present = "rbac")]
    broker_url: Option<String>,
    /// Where the broker's CA bundle is on the node.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/kubernetes/pullbroker/ca.crt"
    )]
    ca_file: String,
    /// Registries from this standalone configuration file (its RegistryCredentials; its audience too).
    #[arg(long, value_name = "FILE", conflicts_with = "from_cluster")]
    config: Option<PathBuf>,
    /// Registries from the cluster's RegistryCredentials (kubeconfig as kubectl: KUBECONFIG, --context).
    #[arg(long)]
    from_cluster: bool,
    /// Kubeconfig context (with --from-cluster).
    #[arg(long, value_name = "NAME", requires = "from_cluster")]
    context: Option<String>,
    /// Extra matchImages patterns (repeat), e.g. a registry served only by a future credential.
    #[arg(long = "match-image", value_name = "PATTERN")]
    match_images: Vec<String>,
    /// The token audience (BrokerConfig.spec.audience; default: the file's, else pullbroker).
    #[arg(long)]
    audience: Option<String>,
    /// The plugin's deadline for one broker call, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    timeout_seconds: u32,
    /// Print the API-server RBAC that lets nodes request tokens for the audience instead.
    #[arg(long)]
    rbac: bool,
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: output::Manifest,
}

/// `kubelet.config.k8s.io/v1` CredentialProviderConfig (k8s-openapi has no
/// kubelet configuration types).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CredentialProviderConfig {
    api_version: &'static str,
    kind: &'static str,
    providers: Vec<Provider>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Provider {
    name: &'static str,
    match_images: Vec<String>,
    default_cache_duration: &'static str,
    api_version: &'static str,
    args: Vec<String>,
    env: Vec<EnvVar>,
    token_attributes: TokenAttributes,
}

#[derive(Serialize)]
struct EnvVar {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenAttributes {
    service_account_token_audience: String,
    cache_type: &'static str,
    require_service_account: bool,
    optional_service_account_annotation_keys: Vec<&'static str>,
}

/// The plugin's name: kubelet runs this file from its bin dir.
pub const PLUGIN: &str = "pullbroker-credential-provider";

fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The RBAC for the `ServiceAccountNodeAudienceRestriction` gate: nodes
/// may request service-account tokens for `audience`.
pub fn rbac(audience: &str) -> (ClusterRole, ClusterRoleBinding) {
    let name = format!("{audience}-kubelet-token-audience");
    let name = if audience == "pullbroker" {
        name
    } else {
        format!("pullbroker-{name}")
    };
    let meta = ObjectMeta {
        name: Some(name.clone()),
        ..Default::default()
    };
    (
        ClusterRole {
            metadata: meta.clone(),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec![audience.to_string()]),
                verbs: vec!["request-serviceaccounts-token-audience".into()],
                ..Default::default()
            }]),
            ..Default::default()
        },
        ClusterRoleBinding {
            metadata: meta,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name,
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Group".into(),
                name: "system:nodes".into(),
                namespace: None,
            }]),
        },
    )
}

async fn cluster_credentials(
    context: Option<String>,
) -> Result<Vec<(String, RegistryCredentialSpec)>> {
    let client = super::kube_client(context).await?;
    let api: kube::Api<RegistryCredential> = kube::Api::all(client);
    let list = api
        .list(&Default::default())
        .await
        .context("cannot list RegistryCredentials (are the CRDs installed? kubectl apply -k deploy/overlays/…)")?;
    Ok(list
        .items
        .into_iter()
        .map(|c| (c.metadata.name.unwrap_or_default(), c.spec))
        .collect())
}

/// What the nodes need besides this file: kubelet's plugin hands containerd
/// a credential, but containerd connects to the registry itself, with the
/// node's trust. A registry behind a private CA (or plain HTTP) the broker
/// reaches through `transport` needs the same in containerd's `hosts.toml`.
fn node_trust_notes(credentials: &[(String, RegistryCredentialSpec)]) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, spec) in credentials {
        let Some(t) = &spec.transport else { continue };
        for registry in &spec.registries {
            let dir = format!("/etc/containerd/certs.d/{registry}");
            let hosts = if t.plain_http {
                format!("server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]")
            } else {
                format!("server = \"https://{registry}\"\n[host.\"https://{registry}\"]\n  ca = \"{dir}/ca.crt\"")
            };
            let what = match t.ca_bundle.as_ref().and_then(|b| b.source()) {
                Some(source) => format!(
                    "its CA bundle ({source}, key {:?}) as {dir}/ca.crt and",
                    t.ca_bundle
                        .as_ref()
                        .map(|b| b.key.as_str())
                        .unwrap_or_default()
                ),
                None => String::new(),
            };
            let wildcard = if registry.contains('*') {
                " (one directory per host the pattern stands for)"
            } else {
                ""
            };
            notes.push(format!(
                "registry {registry} (RegistryCredential {name:?}) has a transport of its own; containerd on every node pulls from it itself and needs {what} {dir}/hosts.toml{wildcard}:\n{hosts}"
            ));
        }
    }
    notes
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut audience = args.audience.clone();
    let mut credentials: Vec<(String, RegistryCredentialSpec)> = Vec::new();
    if let Some(file) = &args.config {
        let snapshot = pullbroker_broker::config::load(file).map_err(anyhow::Error::msg)?;
        audience = audience.or(Some(snapshot.issuer.audience.clone()));
        credentials.extend(
            snapshot
                .policy
                .credentials()
                .iter()
                .map(|(n, c)| (n.clone(), c.clone())),
        );
    }
    let audience = audience.unwrap_or_else(|| "pullbroker".into());
    if args.rbac {
        let (role, binding) = rbac(&audience);
        output::print_objects(
            &[
                serde_json::to_value(&role)?,
                serde_json::to_value(&binding)?,
            ],
            args.output,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let url = args.broker_url.clone().unwrap_or_default();
    if !(url.starts_with("https://") || url.starts_with("http://") && is_loopback_url(&url)) {
        bail!("--broker-url {url:?} must be https:// (the pod's token travels in each request); plain http only on loopback");
    }
    if args.from_cluster {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        credentials.extend(runtime.block_on(cluster_credentials(args.context.clone()))?);
    }
    for pattern in &args.match_images {
        if pattern.is_empty() || pattern.contains("://") {
            bail!("--match-image {pattern:?} must be host[:port][/path] without a scheme");
        }
    }
    for note in node_trust_notes(&credentials) {
        eprintln!("note: {note}");
    }
    let match_images: BTreeSet<String> = credentials
        .iter()
        .flat_map(|(_, c)| &c.registries)
        .map(|r| r.to_ascii_lowercase())
        .chain(args.match_images.iter().cloned())
        .collect();
    if match_images.is_empty() {
        bail!("no registry to match: give --config FILE or --from-cluster (with RegistryCredentials), or --match-image");
    }
    let config = CredentialProviderConfig {
        api_version: "kubelet.config.k8s.io/v1",
        kind: "CredentialProviderConfig",
        providers: vec![Provider {
            name: PLUGIN,
            match_images: match_images.into_iter().collect(),
            // Every answer carries cacheDuration from the credential's real expiry.
            default_cache_duration: "0s",
            api_version: "credentialprovider.kubelet.k8s.io/v1",
            args: vec!["--timeout-seconds".into(), args.timeout_seconds.to_string()],
            env: vec![
                EnvVar {
                    name: "PULLBROKER_URL",
                    value: url,
                },
                EnvVar {
                    name: "PULLBROKER_CA_FILE",
                    value: args.ca_file.clone(),
                },
                EnvVar {
                    name: "PULLBROKER_AUDIENCE",
                    value: audience.clone(),
                },
            ],
            token_attributes: TokenAttributes {
                service_account_token_audience: audience,
                // Grants are per service account: kubelet may reuse an
                // answer for pods of the same account until it expires.
                cache_type: "ServiceAccount",
                // No token, no credentials: never fall back to node identity.
                require_service_account: true,
                // Lets a workload narrow (never widen) what its grants allow.
                optional_service_account_annotation_keys: vec![NARROW_ANNOTATION],
            },
        }],
    };
    output::print_objects(&[config], args.output)?;
    Ok(ExitCode::SUCCESS)
}
