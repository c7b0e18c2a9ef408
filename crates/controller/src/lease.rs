//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime`; every write is a
//! replace guarded by `resourceVersion`, so two candidates cannot both win.
//!
//! Whether another replica's lease is still valid is judged on the local
//! monotonic clock, never by comparing its `renewTime` with ours: a lease is
//! expired once `leaseDurationSeconds` have passed since we last *observed*
//! its record change (client-go's `observedTime`). A holder whose clock is
//! skewed by an hour is then neither robbed nor trusted for longer. The
//! leader's side of the bargain — stop writing before anyone may take over —
//! is [`RENEW_DEADLINE`] in `crate::lead`.
//!
//! Written here rather than taken from a crate: the maintained lease crates
//! pin other kube versions, and the protocol is a few optimistic updates.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::time::Instant;

/// The fraction of the lease duration within which the leader must have
/// renewed, or stop (client-go: 10 s of 15 s). The rest is the margin in
/// which its writes stop before a standby may take over.
pub const RENEW_DEADLINE: f64 = 2.0 / 3.0;

/// What we last saw of the lease, and when (monotonic).
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The wall-clock offset of this replica (zero but in tests): only what
    /// it writes, since validity never reads the wall clock.
    skew: SignedDuration,
    observed: Mutex<Option<(Record, Instant)>>,
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            skew: SignedDuration::ZERO,
            observed: Mutex::new(None),
        }
    }

    /// This replica's wall clock runs `skew` off (for tests of clock skew).
    pub fn with_clock_skew(mut self, skew: SignedDuration) -> Self {
        self.skew = skew;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn now(&self) -> MicroTime {
        let t = Timestamp::now();
        MicroTime(t.checked_add(self.skew).unwrap_or(t))
    }

    /// Notes the record we just read; true when its holder's term is over:
    /// no change seen for the record's own duration.
    fn expired(&self, record: &Record) -> bool {
        let mut observed = self.observed.lock().expect("poisoned");
        let now = Instant::now();
        let since = match observed.as_ref() {
            Some((seen, at)) if seen == record => *at,
            _ => {
                *observed = Some((record.clone(), now));
                now
            }
        };
        let duration = record
            .duration
            .and_then(|d| u64::try_from(d).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.duration);
        now.duration_since(since) >= duration
    }

    /// One attempt to take or renew the lease: `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let now = self.now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Record {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
            duration: spec.lease_duration_seconds,
        };
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = self.expired(&record);
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        let now = self.now();
        let mut next = current;
        let s = next.spec.get_or_insert_with(Default::default);
        s.holder_identity = Some(self.identity.clone());
        s.lease_duration_seconds = Some(secs);
        s.renew_time = Some(now.clone());
        if !ours {
            s.acquire_time = Some(now);
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote first (resourceVersion moved): not ours.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &current)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{status, step, Scripted};
    use serde_json::json;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/sys/leases/pb";
    const LIST: &str = "/apis/coordination.k8s.io/v1/namespaces/sys/leases";

    fn lease(holder: Option<&str>, transitions: i32) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pb", "namespace": "sys", "resourceVersion": "7"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": "2026-12-02T10:00:00.000000Z", "leaseTransitions": transitions}})
    }

    fn lock(client: kube::Client) -> LeaseLock {
        LeaseLock::new(client, "sys", "pb", "r1", Duration::from_secs(15))
    }

    #[tokio::test]
    async fn no_lease_yet_is_created_with_us_as_holder() {
        let (client, api) = Scripted::client(vec![
            step("GET", PATH, 404, status(404, "NotFound")),
            step("POST", LIST, 201, lease(Some("r1"), 0)),
        ]);
        assert!(lock(client).try_acquire_or_renew().await.unwrap());
        let created = &api.sent()[1];
        assert_eq!(created["spec"]["holderIdentity"], "r1");
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(created["spec"]["leaseTransitions"], 0);
        api.done();
    }

    #[tokio::test]
    async fn a_lease_someone_else_renews_is_left_alone() {
        let (client, api) = Scripted::client(vec![step("GET", PATH, 200, lease(Some("r2"), 3))]);
        assert!(!lock(client).try_acquire_or_renew().await.unwrap());
        api.done(); // no write
    }

    #[tokio::test]
    async fn our_lease_is_renewed_at_its_resource_version_without_a_transition() {
        let (client, api) = Scripted::client(vec![
            step("GET", PATH, 200, lease(Some("r1"), 3)),
            step("PUT", PATH, 200, lease(Some("r1"), 3)),
        ]);
        assert!(lock(client).try_acquire_or_renew().await.unwrap());
        let put = &api.sent()[1];
        assert_eq!(
            put["metadata"]["resourceVersion"], "7",
            "a stale write must fail"
        );
        assert_eq!(put["spec"]["leaseTransitions"], 3);
        assert_ne!(put["spec"]["renewTime"], "2026-12-02T10:00:00.000000Z");
        api.done();
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_and_a_lost_race_for_it_is_not_ours() {
        let (client, api) = Scripted::client(vec![
            step("GET", PATH, 200, lease(None, 3)),
            step("PUT", PATH, 409, status(409, "Conflict")),
        ]);
        assert!(!lock(client).try_acquire_or_renew().await.unwrap());
        let put = &api.sent()[1];
        assert_eq!(put["spec"]["holderIdentity"], "r1");
        assert_eq!(
            put["spec"]["leaseTransitions"], 4,
            "a new holder is a transition"
        );
        api.done();
    }

    #[tokio::test]
    async fn release_clears_only_our_own_holder() {
        let (client, api) = Scripted::client(vec![
            step("GET", PATH, 200, lease(Some("r1"), 3)),
            step("PUT", PATH, 200, lease(None, 3)),
        ]);
        lock(client).release().await.unwrap();
        assert!(api.sent()[1]["spec"]["holderIdentity"].is_null());
        api.done();

        let (client, api) = Scripted::client(vec![step("GET", PATH, 200, lease(Some("r2"), 3))]);
        lock(client).release().await.unwrap();
        api.done(); // someone else's: no write
    }

    #[tokio::test]
    async fn an_api_error_is_an_error_not_a_verdict() {
        let (client, api) =
            Scripted::client(vec![step("GET", PATH, 500, status(500, "InternalError"))]);
        assert!(lock(client).try_acquire_or_renew().await.is_err());
        api.done();
    }
}
