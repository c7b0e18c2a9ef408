//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime`; anyone may take the
//! lease once `renewTime + leaseDurationSeconds` has passed; every write is a
//! replace guarded by `resourceVersion`, so two candidates cannot both win.
//!
//! Written here rather than taken from a crate: the maintained lease crates
//! pin other kube versions, and the protocol is a few optimistic updates.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn micro_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
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
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to take or renew the lease: `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Utc::now();
        let secs = self.duration.as_secs().max(1) as i64;
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs,
                         "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": 0}
            }))
            .expect("valid lease");
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = serde_json::to_value(&current.spec).unwrap_or_default();
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(secs);
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let ours = holder == self.identity;
        let expired = renewed.is_none_or(|r| r + chrono::Duration::seconds(duration) < now);
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        let mut next = serde_json::to_value(&current).expect("serializable");
        next["spec"]["holderIdentity"] = json!(self.identity);
        next["spec"]["leaseDurationSeconds"] = json!(secs);
        next["spec"]["renewTime"] = json!(micro_time(now));
        if !ours {
            next["spec"]["acquireTime"] = json!(micro_time(now));
            next["spec"]["leaseTransitions"] = json!(transitions + 1);
        }
        let next: Lease = serde_json::from_value(next).expect("valid lease");
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
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        if current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            != Some(self.identity.as_str())
        {
            return Ok(());
        }
        let mut next = serde_json::to_value(&current).expect("serializable");
        next["spec"]["holderIdentity"] = serde_json::Value::Null;
        let next: Lease = serde_json::from_value(next).expect("valid lease");
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
