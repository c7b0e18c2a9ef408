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
//! - `context`: what every reconcile shares — the caches and what is
//!   derived from them (policy, credential runtimes);
//! - `watches`: the watches that fill the caches and the `Controller` they
//!   drive (the leader's work);
//! - `leadership`: leader election around that work ([`run`]);
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
//! - [`lease`]: the Lease lock itself (take, renew, release, as client-go
//!   does); only the leader watches and writes.

// Public: what the CLI, the benches and the tests use.
pub mod lease;
pub mod metrics;
pub mod seal;
pub mod serving_cert;

mod context;
mod index;
mod issue;
mod leadership;
#[cfg(test)]
mod mock_api;
mod reconcile;
mod runtimes;
mod status;
mod stuck;
mod watches;

use std::time::Duration;

pub use leadership::run;
pub use watches::run_leader;

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

/// A spawned task that ends with its owner (dropping or cancelling the
/// owning future must not leave a renewer or writer running).
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
