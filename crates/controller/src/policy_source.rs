//! The broker's policy from the cluster (`BrokerConfig.spec.policySource:
//! kubernetes`): `RegistryCredential`s and `PullGrant`s, the Secrets of the
//! system namespace, and namespace labels, from watch-backed caches. Every
//! change rebuilds the policy with the same code the standalone file uses
//! ([`pullbroker_credentials::runtime::assemble`]) and hands it to a
//! [`PolicySink`] (the broker's `install_policy`, wired by the CLI: this crate
//! does not depend on the broker's HTTP service).
//! Invalid documents are left out and logged; until every cache has listed
//! once the broker keeps its empty policy, which denies everything.

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use pullbroker_core::policy::{PullGrant, RegistryCredential};
use pullbroker_credentials::runtime::PolicySink;
use pullbroker_credentials::runtime::{assemble, Secrets};

struct Caches {
    credentials: Store<RegistryCredential>,
    grants: Store<PullGrant>,
    secrets: Store<Secret>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Caches {
    fn install(&self, sink: &dyn PolicySink, last_problems: &mut Vec<String>) {
        let (credentials, grants) = crate::documents(&self.credentials, &self.grants);
        let secrets: Secrets = self
            .secrets
            .state()
            .iter()
            .map(|s| (s.name_any(), (s.namespace(), crate::secret_data(s))))
            .collect();
        let labels = self
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let exec_dir = sink.exec_source_dir();
        let (policy, runtimes, problems) =
            assemble(credentials, grants, &secrets, labels, exec_dir.as_deref());
        if problems != *last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "policy document left out");
            }
            *last_problems = problems;
        }
        tracing::info!(
            credentials = runtimes.len(),
            grants = policy.grants().len(),
            "policy from the cluster installed"
        );
        sink.install(policy, runtimes);
    }
}

/// Watches the cluster and keeps `sink`'s policy current, until dropped.
pub async fn run(client: Client, sink: std::sync::Arc<dyn PolicySink>, system_namespace: String) {
    let wc = watcher::Config::default;
    let (credentials, cw) = reflector::store();
    let (grants, gw) = reflector::store();
    let (secrets, sw) = reflector::store();
    let (namespaces, nw) = reflector::store();
    let caches = Caches {
        credentials,
        grants,
        secrets,
        namespaces,
    };
    // Each stream says which cache changed and whether it finished a list.
    fn tag<K: Send + 'static>(
        i: u8,
        s: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> stream::BoxStream<'static, (u8, bool)> {
        s.filter_map(move |ev| {
            futures::future::ready(match ev {
                Ok(watcher::Event::InitDone) => Some((i, true)),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some((i, false)),
                _ => None,
            })
        })
        .boxed()
    }
    let changes = stream::select_all([
        tag(
            0,
            watcher(Api::<RegistryCredential>::all(client.clone()), wc())
                .default_backoff()
                .reflect(cw),
        ),
        tag(
            1,
            watcher(Api::<PullGrant>::all(client.clone()), wc())
                .default_backoff()
                .reflect(gw),
        ),
        tag(
            2,
            watcher(
                Api::<Secret>::namespaced(client.clone(), &system_namespace),
                wc(),
            )
            .default_backoff()
            .reflect(sw),
        ),
        tag(
            3,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                wc(),
            )
            .default_backoff()
            .reflect(nw),
        ),
    ]);
    // Whatever piled up while the last rebuild ran is handled by one rebuild.
    let mut batches = changes.ready_chunks(4096);
    let mut listed = 0u8;
    let mut problems = Vec::new();
    while let Some(batch) = batches.next().await {
        for (i, done) in batch {
            if done {
                listed |= 1 << i;
            }
        }
        if listed == 0b1111 {
            caches.install(sink.as_ref(), &mut problems);
        }
    }
}
