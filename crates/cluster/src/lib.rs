//! Reading the cluster, for the components that only read it: bounded
//! Kubernetes clients ([`api`]) and the broker's policy from the cluster
//! ([`policy_source`]: credentials, grants, the system namespace's Secrets
//! and ConfigMaps, namespace labels). The controller, which also writes,
//! builds on the same pieces; the broker reads grants without depending on
//! the controller.

pub mod api;
pub mod policy_source;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use pullbroker_core::policy::{
    Named, PullGrant, PullGrantSpec, RegistryCredential, RegistryCredentialSpec,
};

/// Why no client to the API server could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot configure the Kubernetes client (in-cluster config or KUBECONFIG): {0}")]
    Connect(String),
    #[error("{0}: {1}")]
    Kube(&'static str, #[source] kube::Error),
}

/// The credentials and grants in the caches, as the core's documents;
/// objects being deleted are gone already as far as access goes.
pub fn documents(
    credentials: &Store<RegistryCredential>,
    grants: &Store<PullGrant>,
) -> (
    Vec<Named<RegistryCredentialSpec>>,
    Vec<Named<PullGrantSpec>>,
) {
    let live = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_none();
    let credentials = credentials
        .state()
        .iter()
        .filter(|c| live(&c.metadata))
        .map(|c| Named {
            name: c.name_any(),
            spec: c.spec.clone(),
        })
        .collect();
    let grants = grants
        .state()
        .iter()
        .filter(|g| live(&g.metadata))
        .map(|g| Named {
            name: g.name_any(),
            spec: g.spec.clone(),
        })
        .collect();
    (credentials, grants)
}

/// A Secret's data as the credential runtime takes it.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// A ConfigMap's `data` and `binaryData`, as bytes, as the credential
/// runtime takes a CA bundle.
pub fn config_map_data(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let text = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
    let binary = c
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    text.chain(binary).collect()
}
