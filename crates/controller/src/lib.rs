//! The Kubernetes controller of pullbroker (`pullbroker controller`).
//!
//! Sync mode, for clusters without KEP-4412 kubelet plugins: for every
//! `PullGrant` with purpose `sync`, each namespace it selects holds one
//! managed `kubernetes.io/dockerconfigjson` Secret with a short-lived,
//! namespace-scoped credential minted here (never a copy of the central
//! secret, unless the grant opts in with `allowUpstreamCopy`), referenced from
//! the granted service accounts, rotated before it expires, and removed when
//! the grant or the namespace stops asking for it.
//!
//! The decisions are the core's ([`pullbroker_core::sync::plan`]); this crate
//! observes and acts:
//!
//! - `index`: watch-fed caches of service accounts and managed secrets by
//!   namespace; kube-runtime reflectors for namespaces, grants, credentials
//!   and the system namespace's secrets;
//! - `reconcile`: a kube-runtime `Controller` over namespaces; grant and
//!   credential spec changes reconcile every namespace;
//! - `status`: `Ready` conditions, selected namespace counts, rotation
//!   times and Events on grants and credentials;
//! - `stuck`: pods that were admitted before their service account had our
//!   secret (the admission race) get an Event, and optionally are recreated;
//! - [`seal`]: what the controller wrote is sealed, and a managed secret
//!   someone else changed is found and replaced whole;
//! - [`lease`]: leader election; only the leader watches and writes.

// Public: what the CLI, the benches and the tests use.
pub mod lease;
pub mod metrics;
pub mod seal;
pub mod serving_cert;

mod index;
mod issue;
#[cfg(test)]
mod mock_api;
mod reconcile;
mod runtimes;
mod status;
mod stuck;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use pullbroker_core::policy::{Policy, PullGrant, RegistryCredential};
use pullbroker_core::sync::MANAGED_BY;
use pullbroker_credentials::runtime::{credential_runtime, Secrets};
use tokio::sync::Notify;

use crate::index::Index;
use pullbroker_cluster::{documents, secret_data};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Kube(&'static str, #[source] kube::Error),
    #[error("cannot issue a secret for grant {0:?} in namespace {1:?}: {2}")]
    Issue(String, String, String),
    #[error("namespace {0} is being deleted")]
    NamespaceTerminating(String),
    #[error("service account {0}/{1} kept changing under us; will retry")]
    Contended(String, String),
    #[error("the seal key: {0}")]
    SealKey(String),
    #[error("the serving certificate: {0}")]
    Certificate(#[source] pullbroker_credentials::Error),
    #[error("invalid settings: {0}")]
    Settings(String),
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where central secrets and the leader lease live.
    pub system_namespace: String,
    /// Fraction of a credential's lifetime after which it is reissued.
    pub rotate_after: f64,
    /// Server-side apply field manager (stable: ownership follows it).
    pub field_manager: String,
    /// This replica's name in the lease (e.g. the pod name).
    pub identity: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// Reconciles of different namespaces running at once.
    pub concurrency: u16,
    /// Delete pods stuck pulling for want of our secret when a controller
    /// (Deployment, Job, …) owns them, so they are recreated with it.
    pub recreate_stuck_pods: bool,
    /// Directory of exec-source executables; exec sources are refused without it.
    pub exec_source_dir: Option<std::path::PathBuf>,
    /// The built-in certificate bootstrap for the broker and its webhook.
    pub serving_cert: Option<serving_cert::ServingCertSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system_namespace: "pullbroker-system".into(),
            rotate_after: 0.5,
            field_manager: "pullbroker".into(),
            identity: "pullbroker".into(),
            lease_name: "pullbroker-controller".into(),
            lease_duration: Duration::from_secs(15),
            concurrency: 32,
            recreate_stuck_pods: false,
            exec_source_dir: None,
            serving_cert: None,
        }
    }
}

/// The range `rotate_after` must lie in: rotating sooner than a tenth of
/// the lifetime churns, later than nine tenths risks expiry in flight.
pub const ROTATE_AFTER: std::ops::RangeInclusive<f64> = 0.1..=0.9;

impl Settings {
    /// Refuses settings the controller cannot run with (a NaN `rotate_after`
    /// made every credential due at every pass).
    pub fn validate(&self) -> Result<(), String> {
        if !ROTATE_AFTER.contains(&self.rotate_after) {
            return Err(format!(
                "rotate_after {} is not a fraction between 0.1 and 0.9",
                self.rotate_after
            ));
        }
        if self.lease_duration.is_zero() {
            return Err("lease_duration must be positive".into());
        }
        if let Some(s) = &self.serving_cert {
            s.validate()?;
        }
        Ok(())
    }
}

pub use metrics::Metrics;

/// What every reconcile shares.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    namespaces: Store<Namespace>,
    grants: Store<PullGrant>,
    credentials: Store<RegistryCredential>,
    central: Store<Secret>,
    service_accounts: Arc<Index<ServiceAccount>>,
    /// Metadata only: the controller never needs to hold other tenants'
    /// secret data (nor its own, once written).
    managed: Arc<Index<PartialObjectMeta<Secret>>>,
    marks: Mutex<reconcile::Marks>,
    /// Seals what we write; see [`seal`].
    seal: pullbroker_core::seal::SealKey,
    /// The resourceVersion of each managed secret as we wrote or verified it.
    intact: Mutex<HashMap<(String, String), String>>,
    failures: Mutex<HashMap<String, u32>>,
    status_dirty: Notify,
    recorder: Recorder,
    /// How many caches have completed their first list.
    listed: tokio::sync::watch::Sender<usize>,
    /// Exec sources' current credentials, shared by reconciles and statuses.
    refreshers: pullbroker_credentials::source::Refreshers,
    runtimes: runtimes::RuntimeCache,
}

/// Namespaces, service accounts, managed secrets, grants, credentials, central secrets.
const CACHES: usize = 6;

/// The caches a [`Context`] reads; the watches (or a test) fill them.
struct Caches {
    namespaces: Store<Namespace>,
    grants: Store<PullGrant>,
    credentials: Store<RegistryCredential>,
    central: Store<Secret>,
    service_accounts: Arc<Index<ServiceAccount>>,
    managed: Arc<Index<PartialObjectMeta<Secret>>>,
}

impl Context {
    /// A context over `caches`, `listed` of which have completed their first list.
    fn new(
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
    fn forget_deleted_namespaces(&self, ev: &watcher::Event<Namespace>) {
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
    async fn wait_ready(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|n| *n >= CACHES).await;
    }

    /// Counts a cache's first complete list. (Not `Store::wait_until_ready`:
    /// it wakes only the last of several concurrent waiters, and the
    /// Controller itself waits on the namespace store.)
    fn listed_once<K>(self: &Arc<Self>) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
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
    fn policy(&self, namespaces: &[Namespace]) -> Policy {
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
    fn source_versions(&self, policy: &Policy) -> BTreeMap<String, String> {
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

    fn central_secret(&self, name: &str) -> Option<Arc<Secret>> {
        self.central
            .get(&ObjectRef::new(name).within(&self.settings.system_namespace))
    }

    /// The central secrets the policy's credentials name.
    fn central_secrets(&self, policy: &Policy) -> Secrets {
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

/// Drops what the controller never reads from a cached object.
fn strip<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A spawned task that ends with its owner (dropping or cancelling the
/// owning future must not leave a renewer or writer running).
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Emits `()` when a watched object's spec changes (its generation moves) or
/// it is deleted or relisted — not on our own status writes.
fn spec_changes<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static
where
    K: kube::Resource + Send + 'static,
{
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    stream.filter_map(move |ev| {
        let fire = match ev {
            Ok(watcher::Event::Apply(o)) => {
                let generation = o.meta().generation;
                seen.insert(o.meta().name.clone().unwrap_or_default(), generation)
                    != Some(generation)
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(o.meta().name.as_deref().unwrap_or_default());
                true
            }
            Ok(watcher::Event::InitApply(o)) => {
                seen.insert(
                    o.meta().name.clone().unwrap_or_default(),
                    o.meta().generation,
                );
                false
            }
            Ok(watcher::Event::InitDone) => true,
            _ => false,
        };
        futures::future::ready(fire.then_some(()))
    })
}

/// Runs as leader until `stop` resolves: the watches, the namespace
/// controller, the status writer, the stuck-pod watcher and, when set, the
/// certificate bootstrap.
pub async fn run_leader(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Nothing is written before the seal key is at hand; the API may be
    // down, so keep trying (capped backoff) until it answers or we stop.
    let mut delay = Duration::from_millis(200);
    let seal = loop {
        match seal::load_or_create(&client, &settings.system_namespace).await {
            Ok(k) => break k,
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "cannot read the seal key"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    let stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let wc = pullbroker_cluster::api::watch_config;
    let (namespaces, ns_writer) = reflector::store();
    let (grants, grant_writer) = reflector::store();
    let (credentials, cred_writer) = reflector::store();
    let (central, central_writer) = reflector::store();
    let service_accounts = Index::new();
    let managed = Index::new();
    let ctx = Context::new(
        client.clone(),
        settings.clone(),
        metrics,
        seal,
        Caches {
            namespaces: namespaces.clone(),
            grants: grants.clone(),
            credentials: credentials.clone(),
            central: central.clone(),
            service_accounts: service_accounts.clone(),
            managed: managed.clone(),
        },
        0,
    );

    // Nothing here reads managedFields; not caching them saves memory.
    let ns_stream = watcher(Api::<Namespace>::all(client.clone()), wc())
        .default_backoff()
        .modify(strip)
        .reflect(ns_writer)
        .inspect_ok(ctx.listed_once())
        .inspect_ok({
            let ctx = ctx.clone();
            move |ev| ctx.forget_deleted_namespaces(ev)
        })
        .applied_objects();
    let sa_stream = {
        let idx = service_accounts.clone();
        watcher(Api::<ServiceAccount>::all(client.clone()), wc())
            .default_backoff()
            .modify(strip)
            .inspect_ok(move |ev| idx.apply(ev))
            .inspect_ok(ctx.listed_once())
            .touched_objects()
    };
    let secret_stream = {
        let idx = managed.clone();
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        watcher(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            wc().labels(&selector),
        )
        .default_backoff()
        .modify(strip)
        .inspect_ok(move |ev| idx.apply(ev))
        .inspect_ok(ctx.listed_once())
        .touched_objects()
    };
    let status_poke = {
        let ctx = ctx.clone();
        move |_: &()| {
            ctx.status_dirty.notify_one();
        }
    };
    let grant_changes = spec_changes(
        watcher(Api::<PullGrant>::all(client.clone()), wc())
            .default_backoff()
            .reflect(grant_writer)
            .inspect_ok(ctx.listed_once()),
    )
    .inspect(status_poke.clone());
    let cred_changes = spec_changes(
        watcher(Api::<RegistryCredential>::all(client.clone()), wc())
            .default_backoff()
            .reflect(cred_writer)
            .inspect_ok(ctx.listed_once()),
    )
    .inspect(status_poke);
    // Secrets have no generation: any change to one in the system namespace
    // (a new password, a rotated key) reconciles every namespace; writes
    // follow only where a source version moved.
    let central_changes = watcher(
        Api::<Secret>::namespaced(client.clone(), &settings.system_namespace),
        wc(),
    )
    .default_backoff()
    .reflect(central_writer)
    .inspect_ok(ctx.listed_once())
    .filter_map(|ev| {
        futures::future::ready(match ev {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                Some(())
            }
            _ => None,
        })
    });

    let controller = Controller::for_stream(ns_stream, namespaces)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .watches_stream(sa_stream, |sa: ServiceAccount| {
            sa.namespace().map(|n| ObjectRef::new(&n))
        })
        .watches_stream(secret_stream, |s: PartialObjectMeta<Secret>| {
            s.metadata.namespace.as_deref().map(ObjectRef::new)
        })
        .reconcile_all_on(futures::stream::select(
            futures::stream::select(grant_changes, cred_changes),
            central_changes,
        ))
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let _status = Owned(tokio::spawn(status::run(ctx.clone())));
    let _stuck = Owned(tokio::spawn(stuck::run(ctx.clone())));
    let _certs = settings.serving_cert.clone().map(|certs| {
        Owned(tokio::spawn(serving_cert::run(
            client.clone(),
            settings.system_namespace.clone(),
            certs,
        )))
    });
    let _synced = {
        let ctx = ctx.clone();
        Owned(tokio::spawn(async move {
            ctx.wait_ready().await;
            ctx.metrics.caches_synced.store(true, Ordering::SeqCst);
        }))
    };
    controller.await;
    ctx.metrics.caches_synced.store(false, Ordering::SeqCst);
}

/// Runs with leader election until `shutdown` resolves: waits for the lease,
/// leads while it renews it, and when it cannot renew (the API server is
/// down or slow) stops writing at once and stands by again, to lead anew
/// with fresh watches when the lease can be taken. Returns only on
/// `shutdown` (or bad settings).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    settings.validate().map_err(Error::Settings)?;
    let lock = Arc::new(lease::LeaseLock::new(
        client.clone(),
        &settings.system_namespace,
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    ));
    // client-go's proportions: retry every 2 s of a 15 s lease, renew within 10 s.
    let retry = settings.lease_duration / 6;
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let deadline_after = settings.lease_duration.mul_f64(lease::RENEW_DEADLINE);
    loop {
        let acquired = loop {
            // The term counts from before the write: its answer may be late.
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(deadline_after, attempt_lease(&lock, &metrics)).await {
                Ok(Ok(true)) => break started,
                Ok(Ok(false)) => tracing::debug!(
                    identity = lock.identity(),
                    "standing by: another replica leads"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the leader lease"),
                Err(_) => tracing::warn!("the leader lease did not answer in time"),
            }
            tokio::select! {
                _ = shutdown.clone() => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
        };
        tracing::info!(identity = lock.identity(), "leading");
        metrics.leading.store(true, Ordering::SeqCst);
        metrics.terms.fetch_add(1, Ordering::Relaxed);
        let lost = lead(
            &client,
            &settings,
            &metrics,
            Term {
                lock: &lock,
                acquired,
                retry,
                deadline_after,
            },
            shutdown.clone(),
        )
        .await;
        metrics.leading.store(false, Ordering::SeqCst);
        if !lost {
            // Best effort, and bounded: a stop must not hang on a slow API
            // (unreleased, the lease simply runs out for the next leader).
            match tokio::time::timeout(deadline_after, lock.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader lease"),
                Err(_) => tracing::warn!("releasing the leader lease did not answer in time"),
            }
            return Ok(());
        }
        tracing::warn!(
            identity = lock.identity(),
            "lost the leader lease: stopped writing; standing by to lead again"
        );
    }
}

/// One try to take or renew the lease, counted, and whether the API answered.
async fn attempt_lease(lock: &lease::LeaseLock, metrics: &Metrics) -> Result<bool, kube::Error> {
    let attempt = lock.try_acquire_or_renew().await;
    metrics.lease_attempts.fetch_add(1, Ordering::Relaxed);
    metrics
        .lease_reachable
        .store(attempt.is_ok(), Ordering::SeqCst);
    attempt
}

/// A term as leader: the lease, when the write that took it started, how
/// often to renew, and within what of the last renewal it must succeed.
struct Term<'a> {
    lock: &'a Arc<lease::LeaseLock>,
    acquired: tokio::time::Instant,
    retry: Duration,
    deadline_after: Duration,
}

/// One term as leader: the leader's work runs while a renewer keeps the
/// lease, and stops once a renewal has not succeeded within
/// [`lease::RENEW_DEADLINE`] of the lease duration (a hung API included) —
/// before any standby may take over. Returns whether the lease was lost
/// (rather than `shutdown`).
async fn lead(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    term: Term<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> bool {
    let Term {
        lock,
        acquired,
        retry,
        deadline_after,
    } = term;
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let renewer = {
        let (lock, metrics) = (lock.clone(), metrics.clone());
        let mut renewed = acquired;
        Owned(tokio::spawn(async move {
            loop {
                let deadline = renewed + deadline_after;
                tokio::time::sleep_until((tokio::time::Instant::now() + retry).min(deadline)).await;
                // The renewTime written is taken when the attempt starts, so
                // a standby's clock for it starts no earlier than this.
                let started = tokio::time::Instant::now();
                if started >= deadline {
                    tracing::warn!(identity = lock.identity(), "renew deadline passed");
                    break;
                }
                // A hung API server must not keep us leading past the deadline.
                match tokio::time::timeout_at(deadline, attempt_lease(&lock, &metrics)).await {
                    Ok(Ok(true)) => renewed = started,
                    Ok(Ok(false)) => break,
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                    Err(_) => {
                        tracing::warn!(
                            identity = lock.identity(),
                            "renewal hung past the renew deadline"
                        );
                        break;
                    }
                }
            }
            let _ = lost_tx.send(());
        }))
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut lost_rx = lost_rx;
    // A lost lease drops the work at once — in-flight reconciles included —
    // rather than draining it: nothing may be written once a standby could
    // lead. Only a shutdown drains (and releases the lease after).
    let lost = {
        let work = run_leader(client.clone(), settings.clone(), metrics.clone(), stop);
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => false,
            _ = &mut lost_rx => true,
            _ = shutdown => {
                let _ = stop_tx.send(true);
                // Bounded: kube-runtime's graceful shutdown never completes
                // when it comes before the namespace store was first filled
                // (its runner waits for a store nothing fills any more).
                tokio::select! {
                    _ = &mut work => false,
                    _ = &mut lost_rx => true,
                    _ = tokio::time::sleep(deadline_after) => {
                        tracing::warn!("in-flight work did not finish in time; dropped");
                        false
                    }
                }
            }
        }
    };
    drop(renewer);
    metrics.caches_synced.store(false, Ordering::SeqCst);
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_out_of_range_fractions_are_refused() {
        for bad in [f64::NAN, f64::INFINITY, -0.5, 0.0, 0.95, 1.0] {
            let s = Settings {
                rotate_after: bad,
                ..Default::default()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
        assert!(Settings::default().validate().is_ok());
    }
}
