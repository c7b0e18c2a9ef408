//! The controller's counters and state, for `/metrics`, `/readyz`, logs and
//! benchmarks. Plain atomics, shared by every reconcile; rendered in the
//! Prometheus text format by [`Metrics::render`] (a dozen lines of a fixed
//! format — a registry crate would add types, not correctness).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Tries to take or renew the leader lease (a standby keeps trying).
    pub lease_attempts: AtomicU64,
    /// Whether the last lease attempt got an answer from the API server.
    pub lease_reachable: AtomicBool,
    /// Whether this replica leads now.
    pub leading: AtomicBool,
    /// Terms led since start (more than one: the lease was lost and retaken).
    pub terms: AtomicU64,
    /// While leading: every cache has completed its first list.
    pub caches_synced: AtomicBool,
    /// Reconciles that completed without error.
    pub reconciles: AtomicU64,
    /// Reconciles running now (the work the queue has handed out).
    pub in_flight: AtomicI64,
    pub issued: AtomicU64,
    pub rotated: AtomicU64,
    pub failures: AtomicU64,
    /// Managed secrets found changed by someone else (and reissued).
    pub repaired: AtomicU64,
    /// Writes by kind and verb.
    pub secret_applies: AtomicU64,
    pub secret_replaces: AtomicU64,
    pub secret_deletes: AtomicU64,
    pub serviceaccount_patches: AtomicU64,
    /// How far past its rotation time the most overdue managed secret is
    /// (0: none overdue), as of the last status pass.
    pub rotation_lag_seconds: AtomicI64,
    /// Namespaces whose last reconcile failed (waiting out their backoff).
    pub backing_off: AtomicI64,
    /// Each RegistryCredential as the last status pass found it.
    pub credentials: std::sync::Mutex<BTreeMap<String, CredentialGauge>>,
}

/// One credential's state for `/metrics`: what its `Ready` condition says,
/// when what it serves expires (exec sources), and whether its source's
/// last refresh failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialGauge {
    pub ready: bool,
    pub expires_at: Option<i64>,
    pub refresh_failing: bool,
}

impl Metrics {
    pub(crate) fn issued(&self, rotation: bool) {
        let c = if rotation {
            &self.rotated
        } else {
            &self.issued
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reconcile as running until the guard drops.
    pub(crate) fn running(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Ready: leading with every cache synced, or a standby that reaches the
    /// API server. Not ready, with the reason, otherwise.
    pub fn readiness(&self) -> Result<&'static str, &'static str> {
        let leading = self.leading.load(Ordering::SeqCst);
        match (leading, self.caches_synced.load(Ordering::SeqCst)) {
            (true, true) => Ok("leading"),
            (true, false) => Err("leading, caches not synced yet"),
            (false, _) if self.lease_reachable.load(Ordering::SeqCst) => Ok("standby"),
            (false, _) if self.lease_attempts.load(Ordering::Relaxed) == 0 => {
                Err("starting: the lease has not been read yet")
            }
            (false, _) => Err("cannot reach the API server to read the lease"),
        }
    }

    /// The Prometheus text exposition (0.0.4) of everything above.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, samples: &[(&str, i64)]| {
            let _ = writeln!(out, "# HELP pullbroker_controller_{name} {help}");
            let _ = writeln!(out, "# TYPE pullbroker_controller_{name} {kind}");
            for (labels, v) in samples {
                let suffix = if kind == "counter" { "_total" } else { "" };
                let _ = writeln!(out, "pullbroker_controller_{name}{suffix}{labels} {v}");
            }
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let b = |a: &AtomicBool| i64::from(a.load(Ordering::SeqCst));
        one(
            "leader",
            "gauge",
            "1 while this replica leads",
            &[("", b(&self.leading))],
        );
        one(
            "lease_reachable",
            "gauge",
            "1 when the last lease attempt reached the API server",
            &[("", b(&self.lease_reachable))],
        );
        one(
            "lease_attempts",
            "counter",
            "Tries to take or renew the leader lease",
            &[("", n(&self.lease_attempts))],
        );
        one(
            "terms",
            "counter",
            "Terms led since start",
            &[("", n(&self.terms))],
        );
        one(
            "caches_synced",
            "gauge",
            "1 while leading with every cache listed",
            &[("", b(&self.caches_synced))],
        );
        one(
            "reconciles",
            "counter",
            "Namespace reconciles completed without error",
            &[("", n(&self.reconciles))],
        );
        one(
            "reconcile_errors",
            "counter",
            "Namespace reconciles that failed (retried with backoff)",
            &[("", n(&self.failures))],
        );
        one(
            "namespaces_backing_off",
            "gauge",
            "Namespaces whose last reconcile failed, waiting to be retried",
            &[("", self.backing_off.load(Ordering::Relaxed))],
        );
        one(
            "reconciles_in_flight",
            "gauge",
            "Namespace reconciles running now",
            &[("", self.in_flight.load(Ordering::Relaxed))],
        );
        one(
            "secrets_issued",
            "counter",
            "Managed secrets written, by reason",
            &[
                ("{reason=\"new\"}", n(&self.issued)),
                ("{reason=\"rotation\"}", n(&self.rotated)),
                ("{reason=\"repair\"}", n(&self.repaired)),
            ],
        );
        one(
            "writes",
            "counter",
            "API writes by kind and verb",
            &[
                ("{kind=\"Secret\",verb=\"apply\"}", n(&self.secret_applies)),
                (
                    "{kind=\"Secret\",verb=\"update\"}",
                    n(&self.secret_replaces),
                ),
                ("{kind=\"Secret\",verb=\"delete\"}", n(&self.secret_deletes)),
                (
                    "{kind=\"ServiceAccount\",verb=\"patch\"}",
                    n(&self.serviceaccount_patches),
                ),
            ],
        );
        one(
            "rotation_lag_seconds",
            "gauge",
            "How far past its rotation time the most overdue managed secret is",
            &[("", self.rotation_lag_seconds.load(Ordering::Relaxed))],
        );
        // Credential names are DNS subdomains: nothing to escape in a label.
        let creds = self.credentials.lock().expect("poisoned").clone();
        let per = |f: &dyn Fn(&CredentialGauge) -> Option<i64>| -> Vec<(String, i64)> {
            creds
                .iter()
                .filter_map(|(name, g)| f(g).map(|v| (format!("{{credential=\"{name}\"}}"), v)))
                .collect()
        };
        fn borrow(v: &[(String, i64)]) -> Vec<(&str, i64)> {
            v.iter().map(|(l, n)| (l.as_str(), *n)).collect()
        }
        let ready = per(&|g| Some(i64::from(g.ready)));
        let expiry = per(&|g| g.expires_at);
        let failing = per(&|g| Some(i64::from(g.refresh_failing)));
        one(
            "credential_ready",
            "gauge",
            "Whether each RegistryCredential is Ready (1) or not (0), as its status says",
            &borrow(&ready),
        );
        one(
            "credential_expiry_timestamp_seconds",
            "gauge",
            "When what each refreshing credential serves now expires",
            &borrow(&expiry),
        );
        one(
            "credential_refresh_failing",
            "gauge",
            "Whether each refreshing credential's last refresh failed (1: the previous one is served until it expires)",
            &borrow(&failing),
        );
        out
    }
}

pub(crate) struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_lease_and_the_caches() {
        let m = Metrics::default();
        assert!(m.readiness().unwrap_err().contains("starting"));
        m.lease_attempts.fetch_add(1, Ordering::Relaxed);
        assert!(m.readiness().unwrap_err().contains("cannot reach"));
        m.lease_reachable.store(true, Ordering::SeqCst);
        assert_eq!(m.readiness(), Ok("standby"));
        m.leading.store(true, Ordering::SeqCst);
        assert!(m.readiness().unwrap_err().contains("not synced"));
        m.caches_synced.store(true, Ordering::SeqCst);
        assert_eq!(m.readiness(), Ok("leading"));
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.secret_applies.fetch_add(3, Ordering::Relaxed);
        {
            let _g = m.running();
            assert!(m
                .render()
                .contains("pullbroker_controller_reconciles_in_flight 1\n"));
        }
        let text = m.render();
        assert!(
            text.contains("pullbroker_controller_writes_total{kind=\"Secret\",verb=\"apply\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("pullbroker_controller_reconciles_in_flight 0\n"));
        assert!(text.contains("# TYPE pullbroker_controller_leader gauge\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("pullbroker_controller_"), "{line}");
            value.parse::<i64>().unwrap();
        }
    }
}
