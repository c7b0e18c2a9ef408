//! Leader election and crash safety, against the fake API server.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::SignedDuration;
use kube::api::Api;
use pullbroker_controller::lease::LeaseLock;
use serde_json::json;
use support::*;

async fn holder(c: &Cluster) -> Option<String> {
    Api::<Lease>::namespaced(c.client.clone(), SYSTEM)
        .get_opt("pullbroker-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

const GRANT: &str = "pullbroker-team-a";

async fn grant_all(c: &Cluster) {
    c.grant(
        "team-a",
        json!({"credential": "corp", "subjects": {"namespaces": ["team-*"], "serviceAccounts": ["app", "worker"]},
               "repositories": ["**"], "purposes": ["sync"], "ttl": "1h"}),
    )
    .await;
}

#[tokio::test]
async fn a_standby_replica_writes_nothing_while_the_leader_holds_the_lease() {
    let c = Cluster::start(REGISTRY, None).await;
    c.tenant("team-1", &[("app", &[])]).await;
    grant_all(&c).await;
    let leader = Replica::start(
        c.controller.clone(),
        Settings {
            lease_duration: Duration::from_secs(5),
            ..settings("r1")
        },
    );
    eventually("leader syncs", WAIT, || async {
        c.secret("team-1", GRANT).await.map(|_| ())
    })
    .await;
    assert_eq!(holder(&c).await.as_deref(), Some("r1"));

    // The leader crashes (no release); its lease stays valid for 5 s.
    leader.task.abort();
    let standby = Replica::start(c.controller.clone(), settings("r2"));
    let before = c.sync_writes();
    c.tenant("team-2", &[("app", &[])]).await;
    let writes_by_test = c.sync_writes() - before;
    eventually("standby tried twice", WAIT, || async {
        (standby.metrics.lease_attempts.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    assert_eq!(
        holder(&c).await.as_deref(),
        Some("r1"),
        "lease not yet expired"
    );
    assert_eq!(
        c.sync_writes() - before,
        writes_by_test,
        "the standby wrote nothing"
    );
    assert!(c.secret("team-2", GRANT).await.is_none());

    // Once the lease expires the standby takes over and serves the new namespace.
    eventually("standby takes over", WAIT, || async {
        c.secret("team-2", GRANT).await.map(|_| ())
    })
    .await;
    assert_eq!(holder(&c).await.as_deref(), Some("r2"));
    // A graceful stop releases the lease at once.
    standby.stop().await;
    assert_eq!(holder(&c).await, None);
}

#[tokio::test]
async fn a_crash_mid_reconcile_loses_and_duplicates_nothing() {
    let c = Cluster::start(REGISTRY, None).await;
    let namespaces: Vec<String> = (0..40).map(|i| format!("team-{i}")).collect();
    for ns in &namespaces {
        c.tenant(ns, &[("app", &["user-own"]), ("worker", &[])])
            .await;
    }
    grant_all(&c).await;
    // Crash once some, not all, of the work is done: the API server carries
    // out 20 writes (lease and status writes included) and refuses the
    // rest, whatever the machine's speed; the replica dies there.
    c.fake.refuse_writes_after(20);
    let first = Replica::start(c.controller.clone(), settings("r1"));
    eventually("the write budget spent", WAIT, || async {
        c.fake.refusing_writes().then_some(())
    })
    .await;
    first.task.abort();
    c.fake.allow_writes();
    let applied = c.fake.writes().get("apply secrets").copied().unwrap_or(0);
    assert!(
        (1..40).contains(&applied),
        "crashed mid-way ({applied} of 40 secrets written)"
    );

    // The restarted replica (same identity, as a restarted pod) finishes.
    let second = Replica::start(c.controller.clone(), settings("r1"));
    eventually("converged", WAIT, || async {
        for ns in &namespaces {
            c.secret(ns, GRANT).await?;
            for sa in ["app", "worker"] {
                if !c.pull_secrets(ns, sa).await.iter().any(|s| s == GRANT) {
                    return None;
                }
            }
        }
        Some(())
    })
    .await;
    for ns in &namespaces {
        assert_eq!(
            c.pull_secrets(ns, "app").await,
            ["user-own", GRANT],
            "{ns}: once, users' entry kept"
        );
        assert_eq!(c.pull_secrets(ns, "worker").await, [GRANT], "{ns}");
    }
    // Exactly one write per managed object across both replicas: nothing redone.
    let writes = c.fake.writes();
    assert_eq!(
        writes.get("apply secrets").copied().unwrap_or(0),
        40,
        "{writes:?}"
    );
    assert_eq!(
        writes.get("patch serviceaccounts").copied().unwrap_or(0),
        80,
        "{writes:?}"
    );
    second.stop().await;
}

/// The API server goes away for longer than the lease: the leader stops
/// writing, stays up as a candidate, leads again when the API returns, and
/// serves a namespace created after the outage — the same process.
#[tokio::test]
async fn an_api_outage_longer_than_the_lease_is_survived_by_the_same_process() {
    let c = Cluster::start(REGISTRY, None).await;
    grant_all(&c).await;
    c.tenant("team-before", &[("app", &[])]).await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    eventually("served before the outage", WAIT, || async {
        c.pull_secrets("team-before", "app")
            .await
            .iter()
            .any(|s| s == GRANT)
            .then_some(())
    })
    .await;
    assert_eq!(replica.metrics.terms.load(Ordering::Relaxed), 1);

    c.fake.set_down(true);
    eventually("stepped down", WAIT, || async {
        (!replica.metrics.leading.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    // The outage itself lasts longer than the lease (3 s): the scenario,
    // not a synchronisation.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!replica.task.is_finished(), "still running as a candidate");
    c.fake.set_down(false);

    c.tenant("team-after", &[("app", &[])]).await;
    eventually(
        "a namespace created after the outage is served",
        WAIT,
        || async {
            c.pull_secrets("team-after", "app")
                .await
                .iter()
                .any(|s| s == GRANT)
                .then_some(())
        },
    )
    .await;
    assert!(replica.metrics.leading.load(Ordering::SeqCst));
    assert_eq!(
        replica.metrics.terms.load(Ordering::Relaxed),
        2,
        "led again"
    );
    assert_eq!(holder(&c).await.as_deref(), Some("r1"));
    replica.stop().await;
}

/// Validity is judged on the local clock from when a change of the lease
/// was last seen (client-go's observed time), never by comparing another
/// replica's `renewTime` with ours: a holder whose clock runs an hour behind
/// keeps its lease while it renews, and loses it one lease duration after
/// its last renewal was seen — not sooner.
#[tokio::test]
async fn a_holder_with_a_skewed_clock_is_neither_robbed_nor_trusted_longer() {
    let c = Cluster::start(REGISTRY, None).await;
    let duration = Duration::from_secs(2);
    let lock = |identity: &str, hours: i64| {
        LeaseLock::new(
            c.controller.clone(),
            SYSTEM,
            "pullbroker-controller",
            identity,
            duration,
        )
        .with_clock_skew(SignedDuration::from_hours(hours))
    };
    let (behind, ahead) = (lock("behind", -1), lock("ahead", 1));
    assert!(behind.try_acquire_or_renew().await.unwrap());
    for round in 0..5 {
        assert!(
            !ahead.try_acquire_or_renew().await.unwrap(),
            "round {round}: a renewTime two hours old by my clock, but renewed"
        );
        assert!(behind.try_acquire_or_renew().await.unwrap());
    }
    // The holder stops renewing.
    let last_renewal = Instant::now();
    let taken = eventually("taken once expired", WAIT, || async {
        ahead
            .try_acquire_or_renew()
            .await
            .unwrap()
            .then(Instant::now)
    })
    .await;
    assert!(
        taken - last_renewal >= duration,
        "taken {:?} after the last renewal, before the lease ran out",
        taken - last_renewal
    );
    // The one behind sees a renewTime two hours ahead of its clock: it
    // waits a lease duration for it just the same.
    assert!(!behind.try_acquire_or_renew().await.unwrap());
}

/// A leader whose renewals hang (an overloaded or partitioned API server)
/// stops leading within the renew deadline — before a standby, one lease
/// duration after the last renewal it saw, could take over.
#[tokio::test]
async fn a_leader_whose_api_hangs_stops_before_its_lease_runs_out() {
    let c = Cluster::start(REGISTRY, None).await;
    let lease = Duration::from_secs(6);
    let replica = Replica::start(
        c.controller.clone(),
        Settings {
            lease_duration: lease,
            ..settings("r1")
        },
    );
    eventually("leading", WAIT, || async {
        replica.metrics.leading.load(Ordering::SeqCst).then_some(())
    })
    .await;
    c.fake.set_hung(true);
    let hung_at = Instant::now();
    eventually("stepped down", lease * 2, || async {
        (!replica.metrics.leading.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    assert!(
        hung_at.elapsed() < lease,
        "stepped down {:?} after the API hung: a standby may lead after {lease:?}",
        hung_at.elapsed()
    );
    assert!(!replica.task.is_finished(), "still a candidate");
    c.fake.set_hung(false);
    // Back from the hang it leads again, with caches synced anew.
    eventually("leading again with synced caches", WAIT, || async {
        (replica.metrics.leading.load(Ordering::SeqCst)
            && replica.metrics.caches_synced.load(Ordering::SeqCst))
        .then_some(())
    })
    .await;
    replica.stop().await;
}

/// A leader asked to stop before its caches ever filled (the namespace list
/// keeps failing) stops anyway, in bounded time, and releases the lease.
#[tokio::test]
async fn a_leader_stops_even_before_its_caches_have_filled() {
    let c = Cluster::start(REGISTRY, None).await;
    for _ in 0..1000 {
        c.fake.fail_next("list", "namespaces", 500);
    }
    let replica = Replica::start(c.controller.clone(), settings("r1"));
    eventually("leading", WAIT, || async {
        replica.metrics.leading.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(!replica.metrics.caches_synced.load(Ordering::SeqCst));
    replica.stop().await;
    let lease = LeaseLock::new(
        c.controller.clone(),
        SYSTEM,
        "pullbroker-controller",
        "r2",
        Duration::from_secs(3),
    );
    assert!(
        lease.try_acquire_or_renew().await.unwrap(),
        "released: another replica takes it at once"
    );
}
