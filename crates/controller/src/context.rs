//! What every reconcile shares: the [`Context`] over the watch-fed caches
//! (namespaces, grants, credentials, central secrets, service accounts,
//! managed secrets' metadata), and what is derived from them per pass — the
//! policy, source versions, credential runtimes — plus the per-namespace
//! state kept between passes (failures, the secrets known intact).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use pullbroker_cluster::{documents, secret_data};
use pullbroker_core::policy::{Policy, PullGrant, RegistryCredential};
use pullbroker_credentials::runtime::{credential_runtime, Secrets};
use tokio::sync::Notify;

use crate::index::Index;
use crate::{reconcile, runtimes, Metrics, Settings};
#[cfg(test)]
use kube::runtime::reflector;

/// What every reconcile shares.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) grants: Store<PullGrant>,
    pub(crate) credentials: Store<RegistryCredential>,
    pub(crate) central: Store<Secret>,
    pub(crate) service_accounts: Arc<Index<ServiceAccount>>,
    /// Metadata only: the controller never needs to hold other tenants'
    /// secret data (nor its own, once written).
    pub(crate) managed: Arc<Index<PartialObjectMeta<Secret>>>,
    pub(crate) marks: Mutex<reconcile::Marks>,
    /// Seals what we write; see [`seal`].
    pub(crate) seal: pullbroker_core::seal::SealKey,
    /// The resourceVersion of each managed secret as we wrote or verified it.
    pub(crate) intact: Mutex<HashMap<(String, String), String>>,
    pub(crate) failures: Mutex<HashMap<String, u32>>,
    pub(crate) status_dirty: Notify,
    pub(crate) recorder: Recorder,
    /// How many caches have completed their first list.
    pub(crate) listed: tokio::sync::watch::Sender<usize>,
    /// Exec sources' current credentials, shared by reconciles and statuses.
    pub(crate) refreshers: pullbroker_credentials::source::Refreshers,
    pub(crate) runtimes: runtimes::RuntimeCache,
}

/// Namespaces, service accounts, managed secrets, grants, credentials, central secrets.
pub(crate) const CACHES: usize = 6;

/// The caches a [`Context`] reads; the watches (or a test) fill them.
pub(crate) struct Caches {
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) grants: Store<PullGrant>,
    pub(crate) credentials: Store<RegistryCredential>,
    pub(crate) central: Store<Secret>,
    pub(crate) service_accounts: Arc<Index<ServiceAccount>>,
    pub(crate) managed: Arc<Index<PartialObjectMeta<Secret>>>,
}

impl Context {
    /// A context over `caches`, `listed` of which have completed their first list.
    pub(crate) fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        seal: pullbroker_core::seal::SealKey,
        caches: Caches,
        listed: usize,
    ) -> Arc<Context> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "pullbroker".into(),
                instance: Some(settings.identity.clone()),
            },
        );
        let Caches {
            namespaces,
            grants,
            credentials,
            central,
            service_accounts,
            managed,
        } = caches;
        Arc::new(Context {
            client,
            settings,
            metrics,
            namespaces,
            grants,
            credentials,
            central,
            service_accounts,
            managed,
            marks: Mutex::default(),
            seal,
            intact: Mutex::default(),
            failures: Mutex::default(),
            status_dirty: Notify::new(),
            recorder,
            listed: tokio::sync::watch::channel(listed).0,
            refreshers: Default::default(),
            runtimes: Default::default(),
        })
    }
}

impl Context {
    /// Drops what is kept per namespace (its failure count, the secrets we
    /// trust there) once it is gone: on its delete event, and after a
    /// re-list for any whose delete the watch missed. Nothing reconciles a
    /// deleted namespace, so nothing else would.
    pub(crate) fn forget_deleted_namespaces(&self, ev: &watcher::Event<Namespace>) {
        let gone: Box<dyn Fn(&str) -> bool> = match ev {
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                Box::new(move |n| n == name)
            }
            watcher::Event::InitDone => Box::new(|n| {
                self.namespaces
                    .get(&kube::runtime::reflector::ObjectRef::new(n))
                    .is_none()
            }),
            _ => return,
        };
        self.update_failures(|f| f.retain(|n, _| !gone(n)));
        self.intact
            .lock()
            .expect("poisoned")
            .retain(|(n, _), _| !gone(n));
    }

    /// Changes the per-namespace failure counts, keeping the gauge true.
    pub(crate) fn update_failures<T>(&self, f: impl FnOnce(&mut HashMap<String, u32>) -> T) -> T {
        let mut failures = self.failures.lock().expect("poisoned");
        let out = f(&mut failures);
        self.metrics
            .backing_off
            .store(failures.len() as i64, std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// Waits until every cache has listed once.
    pub(crate) async fn wait_ready(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|n| *n >= CACHES).await;
    }

    /// Counts a cache's first complete list. (Not `Store::wait_until_ready`:
    /// it wakes only the last of several concurrent waiters, and the
    /// Controller itself waits on the namespace store.)
    pub(crate) fn listed_once<K>(
        self: &Arc<Self>,
    ) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
        let ctx = Arc::downgrade(self);
        let mut done = false;
        move |ev| {
            if !done && matches!(ev, watcher::Event::InitDone) {
                done = true;
                if let Some(ctx) = ctx.upgrade() {
                    ctx.listed.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// The policy as of now, knowing the labels of `namespaces` only (all a
    /// decision about them needs; copying every namespace's labels per
    /// reconcile would be quadratic).
    pub(crate) fn policy(&self, namespaces: &[Namespace]) -> Policy {
        let (credentials, grants) = documents(&self.credentials, &self.grants);
        let labels = namespaces
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        Policy::new(credentials, grants, labels).0
    }

    /// What each credential's synced secrets were made from, so a change
    /// reissues them at once: a static copy follows its central Secret's
    /// resourceVersion (never a hash of the password); a token issuer its
    /// signing certificate (public). Exec sources follow their own expiry.
    pub(crate) fn source_versions(&self, policy: &Policy) -> BTreeMap<String, String> {
        use sha2::Digest as _;
        let central = |name: &str| {
            self.central
                .get(&ObjectRef::new(name).within(&self.settings.system_namespace))
        };
        policy
            .credentials()
            .iter()
            .filter_map(|(name, c)| {
                let version = if let Some(r) = &c.source.secret_ref {
                    central(&r.name)?.metadata.resource_version.clone()?
                } else {
                    let t = c.source.token_issuer.as_ref()?;
                    let secret = central(&t.signing_key_secret_ref.name)?;
                    let cert = &secret.data.as_ref()?.get("tls.crt")?.0;
                    hex::encode(&sha2::Sha256::digest(cert)[..8])
                };
                Some((name.clone(), version))
            })
            .collect()
    }

    pub(crate) fn central_secret(&self, name: &str) -> Option<Arc<Secret>> {
        self.central
            .get(&ObjectRef::new(name).within(&self.settings.system_namespace))
    }

    /// The central secrets the policy's credentials name.
    pub(crate) fn central_secrets(&self, policy: &Policy) -> Secrets {
        let mut out = Secrets::new();
        for name in policy.credentials().values().flat_map(|c| c.secret_names()) {
            if let Some(s) = self.central_secret(name) {
                out.insert(name.to_string(), (s.namespace(), secret_data(&s)));
            }
        }
        out
    }

    /// The policy's credential runtimes, rebuilt only when a credential's
    /// spec or a central Secret it reads changed (its uid and
    /// resourceVersion, which the API server changes on every write).
    pub(crate) fn runtimes(&self, policy: &Policy) -> Arc<runtimes::Runtimes> {
        use sha2::Digest as _;
        let mut inputs = sha2::Sha256::new();
        for (name, spec) in policy.credentials() {
            // A spec is strings, lists and options: it always serializes.
            let spec_json = serde_json::to_vec(spec).expect("serializable");
            inputs.update(format!("{name}\0{}\0", spec_json.len()));
            inputs.update(spec_json);
            for secret in spec.secret_names() {
                let version = self.central_secret(secret).map(|s| {
                    let m = &s.metadata;
                    format!("{:?}/{:?}", m.uid, m.resource_version)
                });
                inputs.update(format!("{secret}\0{version:?}\0"));
            }
        }
        self.runtimes.get(inputs.finalize().into(), || {
            let central = self.central_secrets(policy);
            policy
                .credentials()
                .iter()
                .map(|(name, spec)| {
                    let built = credential_runtime(
                        name,
                        spec,
                        &central,
                        self.settings.exec_source_dir.as_deref(),
                        &self.refreshers,
                    );
                    (name.clone(), built)
                })
                .collect()
        })
    }
}

/// What a unit test's caches hold, as if every watch had listed it.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Cached {
    pub namespaces: Vec<Namespace>,
    pub grants: Vec<PullGrant>,
    pub credentials: Vec<RegistryCredential>,
    /// In the system namespace.
    pub central: Vec<Secret>,
    pub service_accounts: Vec<ServiceAccount>,
    pub managed: Vec<PartialObjectMeta<Secret>>,
}

#[cfg(test)]
impl Context {
    /// A context over `cached`, every cache listed, talking to `client`
    /// (a [`mock_api::Scripted`] one): reconcile and status without the
    /// watches and the runtime that fill the caches in production.
    pub(crate) fn for_test(client: Client, settings: Settings, cached: Cached) -> Arc<Context> {
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (store, mut writer) = reflector::store();
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(o));
            }
            store
        }
        let service_accounts = Index::new();
        for sa in cached.service_accounts {
            service_accounts.apply(&watcher::Event::Apply(sa));
        }
        let managed = Index::new();
        for s in cached.managed {
            managed.apply(&watcher::Event::Apply(s));
        }
        Context::new(
            client,
            settings,
            Arc::default(),
            pullbroker_core::seal::SealKey::from_bytes(&[7; 32]).expect("32 bytes"),
            Caches {
                namespaces: filled(cached.namespaces),
                grants: filled(cached.grants),
                credentials: filled(cached.credentials),
                central: filled(cached.central),
                service_accounts,
                managed,
            },
            CACHES,
        )
    }
}
