//! The broker's policy from the cluster (`BrokerConfig.spec.policySource:
//! kubernetes`): `RegistryCredential`s and `PullGrant`s, the Secrets and
//! ConfigMaps (CA bundles) of the system namespace, and namespace labels,
//! from watch-backed caches. Every
//! change rebuilds the policy with the same code the standalone file uses
//! ([`pullbroker_credentials::runtime::assemble`]) and hands it to a
//! [`PolicySink`] (the broker's `install_policy`, wired by the CLI: this crate
//! does not depend on the broker's HTTP service).
//! Invalid documents are left out and logged; until every cache has listed
//! once the broker keeps its empty policy, which denies everything.
//!
//! When the API server is unreachable the last policy keeps serving, and the
//! sink is told it is not current ([`PolicySink::current`]). Watches retry
//! with a short capped backoff ([`Prompt`]) so that once the API answers again
//! they re-list within seconds, not at the end of a 30 s client-go-style
//! backoff: a grant deleted as the API returns must stop allowing promptly.

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use pullbroker_core::policy::{Problem, PullGrant, RegistryCredential};
use pullbroker_credentials::runtime::{assemble, ConfigMaps, Secrets};
use pullbroker_credentials::runtime::{Assembled, PolicySink};
use pullbroker_credentials::source::Refreshers;

struct Caches {
    credentials: Store<RegistryCredential>,
    grants: Store<PullGrant>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Caches {
    fn install(
        &self,
        sink: &dyn PolicySink,
        refreshers: &Refreshers,
        last_problems: &mut Vec<Problem>,
    ) {
        let (credentials, grants) = crate::documents(&self.credentials, &self.grants);
        let secrets: Secrets = self
            .secrets
            .state()
            .iter()
            .map(|s| (s.name_any(), (s.namespace(), crate::secret_data(s))))
            .collect();
        let config_maps: ConfigMaps = self
            .config_maps
            .state()
            .iter()
            .map(|c| (c.name_any(), crate::config_map_data(c)))
            .collect();
        let labels = self
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let exec_dir = sink.exec_source_dir();
        let Assembled {
            policy,
            runtimes,
            trust,
            problems,
        } = assemble(
            credentials,
            grants,
            &secrets,
            &config_maps,
            labels,
            exec_dir.as_deref(),
            refreshers,
        );
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
        sink.install(policy, runtimes, trust);
    }
}

/// Watch retry delays: 250 ms doubling to 2 s, reset by a working watch.
/// The cap is low because staleness here is an authorization decision; five
/// watches retrying every 2 s is light even for a struggling API server.
pub struct Prompt {
    next: std::time::Duration,
}

impl Prompt {
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(2);
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt { next: Self::FIRST }
    }
}

impl Iterator for Prompt {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<Self::Item> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Prompt {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Every watch's bit: credentials, grants, Secrets, namespaces, ConfigMaps.
const ALL_LISTED: u8 = 0b1_1111;

/// What one watch stream reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Listed,
    Changed,
    Failed,
}

/// Watches the cluster and keeps `sink`'s policy current, until dropped.
///
/// Any watch failing ends the round: the sink is told the policy is not
/// current (it keeps serving the last one), and after a short backoff every
/// watch starts again with a full list, so the policy is known current again
/// exactly when all five lists have completed — a watch that merely resumes
/// would give no such signal.
pub async fn run(client: Client, sink: std::sync::Arc<dyn PolicySink>, system_namespace: String) {
    let mut backoff = Prompt::default();
    let mut problems = Vec::new();
    // Exec sources' current credentials outlive a round: a watch error must
    // not throw away a valid upstream credential and re-run every executable.
    let refreshers = Refreshers::default();
    loop {
        if round(
            &client,
            sink.as_ref(),
            &system_namespace,
            &refreshers,
            &mut problems,
        )
        .await
        {
            kube::runtime::utils::Backoff::reset(&mut backoff);
        }
        sink.current(false);
        let delay = backoff.next().unwrap_or(Prompt::MAX);
        tracing::debug!(retry_in = ?delay, "policy watches restart");
        tokio::time::sleep(delay).await;
    }
}

/// One round of watches, until one fails. Returns whether the round got as
/// far as a complete list.
async fn round(
    client: &Client,
    sink: &dyn PolicySink,
    system_namespace: &str,
    refreshers: &Refreshers,
    problems: &mut Vec<Problem>,
) -> bool {
    let wc = crate::api::watch_config;
    let (credentials, cw) = reflector::store();
    let (grants, gw) = reflector::store();
    let (secrets, sw) = reflector::store();
    let (config_maps, mw) = reflector::store();
    let (namespaces, nw) = reflector::store();
    let caches = Caches {
        credentials,
        grants,
        secrets,
        config_maps,
        namespaces,
    };
    // Each stream says which cache changed and whether it finished a list.
    fn tag<K: Send + 'static>(
        i: u8,
        s: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> stream::BoxStream<'static, (u8, Signal)> {
        s.filter_map(move |ev| {
            futures::future::ready(match ev {
                Ok(watcher::Event::InitDone) => Some((i, Signal::Listed)),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    Some((i, Signal::Changed))
                }
                Err(_) => Some((i, Signal::Failed)),
                _ => None,
            })
        })
        .boxed()
    }
    let changes = stream::select_all([
        tag(
            0,
            watcher(Api::<RegistryCredential>::all(client.clone()), wc()).reflect(cw),
        ),
        tag(
            1,
            watcher(Api::<PullGrant>::all(client.clone()), wc()).reflect(gw),
        ),
        tag(
            2,
            watcher(
                Api::<Secret>::namespaced(client.clone(), system_namespace),
                wc(),
            )
            .reflect(sw),
        ),
        tag(
            3,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                wc(),
            )
            .reflect(nw),
        ),
        tag(
            4,
            watcher(
                Api::<ConfigMap>::namespaced(client.clone(), system_namespace),
                wc(),
            )
            .reflect(mw),
        ),
    ]);
    // Whatever piled up while the last rebuild ran is handled by one rebuild.
    let mut batches = changes.ready_chunks(4096);
    let mut listed = 0u8;
    while let Some(batch) = batches.next().await {
        let mut changed = false;
        for (i, signal) in batch {
            match signal {
                Signal::Listed => {
                    listed |= 1 << i;
                    changed = true;
                }
                Signal::Changed => changed = true,
                Signal::Failed => {
                    tracing::warn!(
                        "a policy watch failed; serving the last policy while it restarts"
                    );
                    return listed == ALL_LISTED;
                }
            }
        }
        if listed == ALL_LISTED {
            if changed {
                caches.install(sink, refreshers, problems);
            }
            sink.current(true);
        }
    }
    listed == ALL_LISTED
}
