//! Reading a cluster as kubectl would, shared by the commands that do
//! (`audit`, `diagnose`): every page of a list, and pullbroker's own policy
//! from its CRDs — the same decision the in-cluster broker makes.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ObjectList};
use kube::Resource;
use pullbroker_core::audit::CredentialState;
use pullbroker_core::policy::model::{PullGrant, RegistryCredential};
use pullbroker_core::policy::{Named, Policy};

/// Lists every page (`limit` 500, following `continue`), keeping only what
/// `keep` takes of each object: a page at a time is all that is held whole.
/// `progress` hears the running count.
pub async fn list_all<K, T>(
    api: &Api<K>,
    params: ListParams,
    progress: &dyn Fn(usize),
    keep: impl Fn(K) -> T,
) -> Result<Vec<T>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut p = params.clone().limit(500);
        if let Some(t) = &token {
            p = p.continue_token(t);
        }
        let page: ObjectList<K> = api.list(&p).await?;
        out.extend(page.items.into_iter().map(&keep));
        progress(out.len());
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// What to run when a list is refused, for error messages.
pub fn cannot_list(what: &str) -> String {
    format!("cannot list {what} (kubectl auth can-i list {what})")
}

/// pullbroker's policy as the cluster holds it.
pub struct ClusterPolicy {
    pub policy: Policy,
    /// Each RegistryCredential's `Ready` condition.
    pub states: Vec<CredentialState>,
    pub grants: usize,
    pub credentials: usize,
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<kube::Error>()
        .is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 404))
}

/// The PullGrants and RegistryCredentials, built into the policy the
/// broker would hold; `None` when pullbroker's CRDs are not installed.
pub async fn policy(
    client: &kube::Client,
    progress: &dyn Fn(usize),
) -> Result<Option<ClusterPolicy>> {
    let grants_api: Api<PullGrant> = Api::all(client.clone());
    let creds_api: Api<RegistryCredential> = Api::all(client.clone());
    let grants = match list_all(&grants_api, ListParams::default(), progress, |g| g).await {
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e).context(cannot_list("pullgrants")),
        Ok(g) => g,
    };
    let creds = list_all(&creds_api, ListParams::default(), progress, |c| c)
        .await
        .with_context(|| cannot_list("registrycredentials"))?;
    // Namespace labels for namespaceSelector grants; without the right to
    // list namespaces, such grants select nothing here.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let labels = match ns_api.list_metadata(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .map(|n| {
                (
                    n.metadata.name.unwrap_or_default(),
                    n.metadata.labels.unwrap_or_default(),
                )
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let states = creds
        .iter()
        .map(|c| {
            let ready = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            CredentialState {
                name: c.metadata.name.clone().unwrap_or_default(),
                ready: ready.map(|r| r.status == "True"),
                reason: ready
                    .map(|r| format!("{}: {}", r.reason, r.message))
                    .unwrap_or_default(),
            }
        })
        .collect();
    let (grants_n, creds_n) = (grants.len(), creds.len());
    let (policy, _problems) = Policy::new(
        creds
            .into_iter()
            .map(|c| Named {
                name: c.metadata.name.unwrap_or_default(),
                spec: c.spec,
            })
            .collect(),
        grants
            .into_iter()
            .map(|g| Named {
                name: g.metadata.name.unwrap_or_default(),
                spec: g.spec,
            })
            .collect(),
        labels,
    );
    Ok(Some(ClusterPolicy {
        policy,
        states,
        grants: grants_n,
        credentials: creds_n,
    }))
}
