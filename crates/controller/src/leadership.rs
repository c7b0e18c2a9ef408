//! Leader election around the leader's work ([`crate::watches`]): take the
//! [`lease`], lead while a renewer keeps it, stop writing at once when a
//! renewal misses its deadline, and stand by to lead again.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::watches::run_leader;
use crate::{lease, Error, Metrics, Owned, Settings};

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
