//! `pullbroker webhook-config`: the MutatingWebhookConfiguration that sends
//! Pods, workloads and Knative objects to the broker's `/v1/admission/pin`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::ByteString;
use pullbroker_core::admission::Kind;

use super::output;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Only namespaces labelled --namespace-label are sent to the webhook (opt-in); \
the system namespace and kube-system never are. Inside, only images that a PullGrant with purpose `resolve` \
covers are pinned; what happens when such an image cannot be resolved is the grant's admission.failurePolicy. \
--failure-policy here is what the API server does when the broker cannot be reached at all.\n\n\
Examples:\n  pullbroker webhook-config --service pullbroker-system/pullbroker --ca-file tls/ca.crt | kubectl apply -f -\n  \
pullbroker webhook-config --url https://127.0.0.1:8443/v1/admission/pin --ca-file tls/ca.crt -o json"
)]
pub struct Args {
    /// The broker's Service as NAMESPACE/NAME (in-cluster broker).
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        conflicts_with = "url",
        required_unless_present = "url"
    )]
    service: Option<String>,
    /// The Service port.
    #[arg(long, default_value_t = 443, requires = "service")]
    port: i32,
    /// A full https:// URL instead of a Service (a broker outside the cluster).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// PEM file of the CA that signed the broker's serving certificate (caBundle).
    /// Leave out with --inject-ca-from (cert-manager fills it in).
    #[arg(long, value_name = "FILE", required_unless_present = "inject_ca_from")]
    ca_file: Option<PathBuf>,
    /// cert-manager Certificate (NAMESPACE/NAME) whose CA cert-manager injects.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "ca_file")]
    inject_ca_from: Option<String>,
    /// Namespaces opt in with this label (KEY=VALUE).
    #[arg(long, default_value = "pullbroker.dev/pin=enabled")]
    namespace_label: String,
    /// The broker's own namespace, always excluded.
    #[arg(long, default_value = "pullbroker-system")]
    system_namespace: String,
    /// What the API server does when the broker is unreachable.
    #[arg(long, value_enum, default_value = "fail")]
    failure_policy: FailurePolicy,
    /// The API server's deadline for each call (1–30).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=30))]
    timeout_seconds: i32,
    /// Name of the MutatingWebhookConfiguration.
    #[arg(long, default_value = "pullbroker-pin")]
    name: String,
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: output::Manifest,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FailurePolicy {
    Fail,
    Ignore,
}

/// The admission path the broker serves.
pub const PATH: &str = "/v1/admission/pin";

fn split_ref(what: &str, s: &str) -> Result<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => bail!("{what} {s:?} must be NAMESPACE/NAME"),
    }
}

/// One rule per API group, for every kind admission pins.
fn rules() -> Vec<RuleWithOperations> {
    let mut groups: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for kind in Kind::ALL {
        let (group, version, _, resource) = kind.gvkr();
        match groups.iter_mut().find(|(g, _, _)| *g == group) {
            Some((_, _, resources)) => resources.push(resource.into()),
            None => groups.push((group, version, vec![resource.into()])),
        }
    }
    groups
        .into_iter()
        .map(|(group, version, mut resources)| {
            if group.is_empty() {
                // Ephemeral containers arrive through their own subresource.
                resources.push("pods/ephemeralcontainers".into());
            }
            RuleWithOperations {
                api_groups: Some(vec![group.into()]),
                api_versions: Some(vec![version.into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(resources),
                scope: Some("Namespaced".into()),
            }
        })
        .collect()
}

pub fn build(args: &Args) -> Result<MutatingWebhookConfiguration> {
    let (label_key, label_value) = args
        .namespace_label
        .split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .with_context(|| {
            format!(
                "--namespace-label {:?} must be KEY=VALUE",
                args.namespace_label
            )
        })?;
    let ca_bundle = match &args.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                bail!("--ca-file {} holds no PEM certificate", path.display());
            }
            Some(ByteString(pem))
        }
        None => None,
    };
    let client_config = match (&args.service, &args.url) {
        (Some(svc), None) => {
            let (namespace, name) = split_ref("--service", svc)?;
            WebhookClientConfig {
                ca_bundle,
                service: Some(ServiceReference {
                    namespace,
                    name,
                    path: Some(PATH.into()),
                    port: Some(args.port),
                }),
                url: None,
            }
        }
        (None, Some(url)) => {
            if !url.starts_with("https://") {
                bail!("--url {url:?}: the API server only calls https:// webhooks");
            }
            WebhookClientConfig {
                ca_bundle,
                service: None,
                url: Some(url.clone()),
            }
        }
        _ => bail!("give exactly one of --service and --url"),
    };
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(cert) = &args.inject_ca_from {
        split_ref("--inject-ca-from", cert)?;
        annotations.insert("cert-manager.io/inject-ca-from".to_string(), cert.clone());
    }
    let excluded = {
        let mut v = vec![args.system_namespace.clone(), "kube-system".to_string()];
        v.dedup();
        v
    };
    Ok(MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(args.name.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "pullbroker".to_string(),
                )]
                .into(),
            ),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "pin.pullbroker.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config,
            failure_policy: Some(format!("{:?}", args.failure_policy)),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    LabelSelectorRequirement {
                        key: label_key.into(),
                        operator: "In".into(),
                        values: Some(vec![label_value.into()]),
                    },
                    LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "NotIn".into(),
                        values: Some(excluded),
                    },
                ]),
                match_labels: None,
            }),
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(rules()),
            side_effects: "None".into(),
            timeout_seconds: Some(args.timeout_seconds),
            ..Default::default()
        }]),
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = build(&args)?;
    output::print_objects(&[config], args.output)?;
    Ok(ExitCode::SUCCESS)
}
