//! The controller's seal key and the check of managed secrets against it.
//!
//! A managed secret sits in a tenant's namespace, where the tenant can edit
//! it. The controller seals what it writes ([`pullbroker_core::seal::seal`])
//! with a key kept in the system namespace, and remembers the
//! resourceVersion of each of its own writes. A secret at any other
//! resourceVersion (someone else wrote it, or the controller restarted) is
//! read once and its seal checked: intact, it is trusted again; otherwise it
//! is damaged and replaced whole. Rotation times thus never come from
//! annotations a tenant could have moved.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use pullbroker_core::seal::{seal_verifies, SealKey, SealedContent};

use crate::context::Context;
use crate::Error;
use pullbroker_cluster::secret_data;

/// The Secret (in the system namespace) holding the seal key.
pub const SEAL_KEY_SECRET: &str = "pullbroker-controller-seal";
const SEAL_KEY_FIELD: &str = "key";

/// Reads the seal key, creating it on first start. A replica that loses the
/// race to create it reads the winner's.
pub async fn load_or_create(client: &Client, namespace: &str) -> Result<SealKey, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |s: Secret| -> Result<SealKey, Error> {
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get(SEAL_KEY_FIELD))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        SealKey::from_bytes(&bytes)
            .map_err(|e| Error::SealKey(format!("Secret {namespace}/{SEAL_KEY_SECRET}: {e}")))
    };
    if let Some(s) = api
        .get_opt(SEAL_KEY_SECRET)
        .await
        .map_err(|e| Error::Kube("get seal key", e))?
    {
        return read(s);
    }
    let mut key = [0u8; SealKey::LEN];
    getrandom::fill(&mut key).map_err(|e| Error::SealKey(format!("no randomness: {e}")))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SEAL_KEY_SECRET.into()),
            namespace: Some(namespace.into()),
            // Not labelled managed-by: that label marks pull secrets the
            // plan may delete.
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "pullbroker".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(SEAL_KEY_FIELD.to_string(), ByteString(key.to_vec()))].into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(namespace, secret = SEAL_KEY_SECRET, "created the seal key");
            read(s)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => read(
            api.get(SEAL_KEY_SECRET)
                .await
                .map_err(|e| Error::Kube("get seal key", e))?,
        ),
        Err(e) => Err(Error::Kube("create seal key", e)),
    }
}

/// Whether a whole Secret carries a valid seal.
pub fn intact(key: &SealKey, s: &Secret) -> bool {
    let empty = Default::default();
    seal_verifies(
        key,
        &SealedContent {
            namespace: s.metadata.namespace.as_deref().unwrap_or_default(),
            name: s.metadata.name.as_deref().unwrap_or_default(),
            type_: s.type_.as_deref().unwrap_or_default(),
            labels: s.metadata.labels.as_ref().unwrap_or(&empty),
            annotations: s.metadata.annotations.as_ref().unwrap_or(&empty),
            data: &secret_data(s),
        },
    )
}

impl Context {
    /// Records that `rv` of `namespace/name` is what we wrote (or verified).
    pub(crate) fn trust(&self, namespace: &str, name: &str, rv: Option<String>) {
        if let Some(rv) = rv {
            self.intact
                .lock()
                .expect("poisoned")
                .insert((namespace.to_string(), name.to_string()), rv);
        }
    }

    /// Whether a managed secret is at a resourceVersion we wrote or verified.
    pub(crate) fn trusted(&self, meta: &ObjectMeta) -> bool {
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        meta.resource_version.is_some()
            && self.intact.lock().expect("poisoned").get(&key) == meta.resource_version.as_ref()
    }

    /// The managed secrets of `namespace` that someone else wrote: each one
    /// at a resourceVersion we did not write or verify is read and checked.
    pub(crate) async fn damaged(&self, namespace: &str) -> Result<BTreeSet<String>, Error> {
        let present = self.managed.in_namespace(namespace);
        let unknown: Vec<String> = {
            let mut intact = self.intact.lock().expect("poisoned");
            let names: BTreeSet<String> = present.iter().map(|s| s.name_any()).collect();
            intact.retain(|(ns, n), _| ns != namespace || names.contains(n));
            present
                .iter()
                .filter(|s| {
                    let key = (namespace.to_string(), s.name_any());
                    s.metadata.resource_version.is_none()
                        || intact.get(&key) != s.metadata.resource_version.as_ref()
                })
                .map(|s| s.name_any())
                .collect()
        };
        let mut damaged = BTreeSet::new();
        if unknown.is_empty() {
            return Ok(damaged);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        for name in unknown {
            let Some(s) = api
                .get_opt(&name)
                .await
                .map_err(|e| Error::Kube("get managed secret", e))?
            else {
                continue;
            };
            if intact(&self.seal, &s) {
                self.trust(namespace, &name, s.metadata.resource_version.clone());
            } else {
                tracing::warn!(namespace, secret = %name, "managed secret changed by someone else; reissuing it");
                self.metrics
                    .repaired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                damaged.insert(name);
            }
        }
        Ok(damaged)
    }
}
