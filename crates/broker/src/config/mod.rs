//! Standalone mode: everything from one YAML file of Kubernetes-shaped
//! documents — a `BrokerConfig`, `RegistryCredential`s, `PullGrant`s,
//! `Secret`s and `Namespace`s (for labels) — so the same documents can later
//! be applied to a cluster. Secret data may also come from files
//! (`BrokerConfig.spec.secretFiles`), relative to the config file.
//!
//! A file is accepted whole or not at all: any problem is an error, so a bad
//! edit never half-applies.

//!
//! - `spec`: the `BrokerConfig` document's types, and its listener and
//!   limit checks;
//! - `load`: the file's documents read and checked, and the policy's
//!   inputs put together;
//! - `issuer`: how service-account tokens are verified.
//!
//! This module ties them into the [`Snapshot`] the broker serves from.

mod issuer;
mod load;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pullbroker_core::policy::Policy;

use crate::satoken::IssuerSettings;
use crate::Error;
pub use pullbroker_credentials::runtime::{
    assemble, credential_runtime, Assembled, ConfigMaps, CredentialRuntime, Secrets, Trust,
};
pub use pullbroker_credentials::source::Refreshers;
pub use spec::{
    AdmissionListener, AdmissionSpec, BrokerConfigSpec, IssuerSpec, Limits, LimitsSpec, Listeners,
    PolicySource, TlsSpec, TokenReviewSpec,
};

/// Everything the broker serves from, swapped whole on reload. `Clone` so
/// a swap can be retried on a fresh current value (`ArcSwap::rcu`).
#[derive(Clone)]
pub struct Snapshot {
    /// Shared, so a snapshot that changes only settings (or only the policy)
    /// is made without copying the other.
    pub policy: std::sync::Arc<Policy>,
    pub credentials: std::sync::Arc<BTreeMap<String, CredentialRuntime>>,
    /// How each credential's registries are reached (its `transport`).
    pub trust: std::sync::Arc<BTreeMap<String, Trust>>,
    pub exec_source_dir: Option<PathBuf>,
    pub policy_source: PolicySource,
    pub system_namespace: String,
    pub issuer: IssuerSettings,
    pub token_review: Option<TokenReviewSpec>,
    /// Whether TokenReview was explicitly turned off (`offlineVerification`).
    pub offline_verification: bool,
    pub listeners: Listeners,
    /// Registries admission never pins.
    pub admission_skip_registries: Vec<String>,
    pub limits: Limits,
    /// Files whose change triggers a reload.
    pub watched: Vec<PathBuf>,
    /// The exec-source refreshers `credentials` were built with; a reload
    /// builds with the same ones ([`load_with`]), keeping current credentials.
    pub refreshers: std::sync::Arc<Refreshers>,
}

impl Snapshot {
    /// The registry client's per-registry trust, in credential-name order
    /// (as grants decide), from each credential's `transport`.
    pub fn registry_tls(&self) -> Vec<pullbroker_registry::RegistryTls> {
        self.trust.values().map(registry_tls).collect()
    }

    /// The token-issuer credential whose registry `service` this is.
    pub fn by_service(&self, service: &str) -> Option<(&str, &CredentialRuntime)> {
        self.credentials.iter().find_map(|(name, c)| match c {
            CredentialRuntime::TokenIssuer { service: s, .. } if s == service => {
                Some((name.as_str(), c))
            }
            _ => None,
        })
    }
}

/// A credential's trust as the registry client takes it.
pub fn registry_tls(t: &Trust) -> pullbroker_registry::RegistryTls {
    pullbroker_registry::RegistryTls {
        registries: t.registries.clone(),
        ca_pems: t.ca_pem.iter().cloned().collect(),
        ca_only: t.ca_only,
        plain_http: t.plain_http,
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads and validates a standalone config file (once: its exec sources
/// get refreshers of their own).
pub fn load(path: &Path) -> crate::Result<Snapshot> {
    load_with(path, &Default::default())
}

/// Loads and validates a standalone config file, its exec sources served
/// by `refreshers` (a running broker's, kept across reloads).
pub fn load_with(path: &Path, refreshers: &std::sync::Arc<Refreshers>) -> crate::Result<Snapshot> {
    let text = std::fs::read_to_string(path).map_err(Error::read(path))?;
    parse_with(&text, path, refreshers)
}

/// Validates config `text` as if read from `path` (files it names are
/// resolved against `path`'s directory and read; nothing is written).
pub fn parse(text: &str, path: &Path) -> crate::Result<Snapshot> {
    parse_with(text, path, &Default::default())
}

fn parse_with(
    text: &str,
    path: &Path,
    refreshers: &std::sync::Arc<Refreshers>,
) -> crate::Result<Snapshot> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems: Vec<String> = Vec::new();
    let mut docs = load::read(text, path, &mut problems)?;
    let Some(broker) = docs.broker.take() else {
        problems.push("no BrokerConfig document".into());
        return Err(report(path, problems));
    };
    let mut watched = vec![path.to_path_buf()];
    let inputs = load::policy_inputs(&broker, docs, base, &mut problems, &mut watched);
    let exec_dir = broker.exec_source_dir.as_ref().map(|d| resolve(base, d));
    let Assembled {
        policy,
        runtimes,
        trust,
        problems: policy_problems,
    } = assemble(
        inputs.credentials,
        inputs.grants,
        &inputs.secrets,
        &inputs.config_maps,
        inputs.namespaces,
        exec_dir.as_deref(),
        refreshers,
    );
    problems.extend(policy_problems.iter().map(ToString::to_string));

    let token_review = issuer::token_review(&broker, base, &mut watched);
    let issuer = issuer::settings(&broker, base, &mut watched).map_err(|e| problems.push(e));
    let listeners = spec::listeners(&broker, base, &mut problems);
    let limits = spec::limits(&broker.limits).map_err(|e| problems.push(e));
    let (Ok(issuer), Some(listeners), Ok(limits), true) =
        (issuer, listeners, limits, problems.is_empty())
    else {
        return Err(report(path, problems));
    };
    Ok(Snapshot {
        policy: policy.into(),
        credentials: runtimes.into(),
        trust: trust.into(),
        exec_source_dir: exec_dir,
        policy_source: broker.policy_source,
        system_namespace: broker.system_namespace(),
        issuer: IssuerSettings {
            // Only a broker no other machine can reach may trust the
            // development issuer (plainHttpListen is loopback-only anyway).
            dev_keys_allowed: spec::is_loopback(&listeners.listen)
                && listeners
                    .admission
                    .as_ref()
                    .is_none_or(|a| spec::is_loopback(&a.listen)),
            ..issuer
        },
        token_review,
        offline_verification: broker.service_account_issuer.offline_verification,
        listeners,
        admission_skip_registries: broker.admission.skip_registries.clone(),
        limits,
        watched,
        refreshers: refreshers.clone(),
    })
}

fn report(path: &Path, problems: Vec<String>) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        (dir, path)
    }

    const BROKER: &str = "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {name: b}\nspec:\n  insecurePlainHttp: true\n  policySource: kubernetes\n  serviceAccountIssuer: {issuer: https://kubernetes.default.svc, jwksFile: jwks.json}\n";

    #[test]
    fn refusals_are_structured_values() {
        let (_d, path) = write(BROKER);
        let missing = path.with_file_name("absent.yaml");
        match load(&missing) {
            Err(Error::Read { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected a read error, got {:?}", other.err()),
        }
        let (_d, path) = write(&format!("{BROKER}---\nkind: [unclosed\n"));
        match load(&path) {
            Err(Error::Yaml { document, line, .. }) => {
                assert_eq!(document, 2);
                assert!(line.is_some(), "the line is reported");
            }
            other => panic!("expected a YAML error, got {:?}", other.err()),
        }
        let (_d, path) = write(&BROKER.replace("jwksFile: jwks.json", "jwksFile: none.json"));
        match load(&path) {
            Err(Error::Invalid { problems, .. }) => {
                assert!(
                    problems.iter().any(|p| p.contains("none.json")),
                    "{problems:?}"
                )
            }
            other => panic!("expected the problems, got {:?}", other.err()),
        }
    }

    #[test]
    fn admissions_own_listener_is_checked_whole() {
        let with = |admission: &str| {
            BROKER.replace(
                "  policySource",
                &format!("  admission: {admission}\n  policySource"),
            )
        };
        let problems = |admission: &str| match load(&write(&with(admission)).1) {
            Err(Error::Invalid { problems, .. }) => problems.join("; "),
            other => panic!(
                "{admission}: expected problems, got {:?}",
                other.map(|s| s.listeners)
            ),
        };
        assert!(problems("{clientCAFile: ca.crt}").contains("need admission.listen"));
        assert!(problems("{listen: '0.0.0.0:8444'}").contains("over TLS only"));
        assert!(problems("{listen: '127.0.0.1:8444', clientCAFile: ca.crt}").contains("need tls"));
        assert!(problems("{listen: 'port 80'}").contains("not an address"));
        assert!(
            problems("{listen: '127.0.0.1:8444', maxConcurrentRequests: 0}")
                .contains("between 1 and 65536")
        );
        let (_d, path) = write(&with("{listen: '127.0.0.1:8444'}"));
        let a = load(&path).unwrap().listeners.admission.unwrap();
        assert_eq!(
            (a.listen.port(), a.max_concurrent_requests, a.client_ca_file),
            (8444, 256, None)
        );
        assert!(load(&write(BROKER).1)
            .unwrap()
            .listeners
            .admission
            .is_none());
    }

    #[test]
    fn kubernetes_policy_source_takes_no_policy_from_the_file() {
        let (_d, path) = write(BROKER);
        let s = load(&path).unwrap();
        assert_eq!(s.policy_source, PolicySource::Kubernetes);
        assert!(
            s.policy.grants().is_empty(),
            "nothing until the cluster says"
        );
        assert_eq!(s.system_namespace, "pullbroker-system");

        let (_d, path) = write(&format!("{BROKER}---\napiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {{name: g}}\nspec: {{credential: c, subjects: {{namespaces: [a], serviceAccounts: [b]}}, repositories: ['**'], purposes: [pull]}}\n"));
        let err = load(&path).err().unwrap();
        assert!(err.to_string().contains("come from the cluster"), "{err}");

        let (_d, path) = write(&BROKER.replace("kubernetes", "etcd"));
        assert!(load(&path).is_err(), "unknown policySource");
    }
}
