//! The watches that fill a [`Context`]'s caches and the kube-runtime
//! `Controller` they drive: one reconcile per namespace, woken by its
//! service accounts and managed secrets, every namespace on a grant or
//! credential spec change or a central Secret change; run by the leader only.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use pullbroker_core::policy::{PullGrant, RegistryCredential};
use pullbroker_core::sync::MANAGED_BY;

use crate::context::{Caches, Context};
use crate::index::Index;
use crate::{reconcile, seal, serving_cert, status, stuck, Metrics, Owned, Settings};

/// Drops what the controller never reads from a cached object.
fn strip<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
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
