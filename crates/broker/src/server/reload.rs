//! The configuration changing under a running broker: a reload of the file
//! (polled, so every editor's save and ConfigMap symlink swaps are seen),
//! and a policy installed from the cluster. Each swaps the snapshot at once
//! (requests in flight keep the one they started with), hands the registry
//! client its new trust, and moves the config generation `/healthz` and the
//! metrics show; a rejected file keeps the last good configuration.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{build_verifier, issuer_fingerprint, AppState, Broker};
use crate::config::{self, Snapshot};

impl Broker {
    /// Serves a policy and credentials read from elsewhere (the cluster),
    /// keeping the file's broker settings.
    pub fn install_policy(
        &self,
        policy: pullbroker_core::policy::Policy,
        credentials: std::collections::BTreeMap<String, config::CredentialRuntime>,
        trust: std::collections::BTreeMap<String, pullbroker_credentials::runtime::Trust>,
    ) {
        let (policy, credentials, trust) =
            (Arc::new(policy), Arc::new(credentials), Arc::new(trust));
        // rcu: a reload storing at the same moment is retried on, never
        // undone by, this. Cloning a snapshot copies settings, not policies.
        self.state.snapshot.rcu(|current| Snapshot {
            policy: policy.clone(),
            credentials: credentials.clone(),
            trust: trust.clone(),
            ..Snapshot::clone(current)
        });
        self.state.apply_registry_tls();
        self.state.cluster_policy.store(true, Ordering::Relaxed);
        let mut status = self.state.reload.lock().expect("poisoned");
        status.generation += 1;
        self.state
            .metrics
            .config_generation
            .set(status.generation as i64);
    }

    /// Loads the config file again; on any problem the running config stays.
    pub async fn reload(&self) -> crate::Result<()> {
        let st = &self.state;
        let Some(path) = &st.config_path else {
            return Ok(());
        };
        let result = async {
            let refreshers = st.snapshot.load().refreshers.clone();
            let snapshot = config::load_with(path, &refreshers)?;
            let fp = issuer_fingerprint(&snapshot);
            if *st.issuer_fingerprint.lock().expect("poisoned") != fp {
                let verifier = build_verifier(&snapshot, st.reviewer_override.clone()).await?;
                st.verifier.store(verifier);
                *st.issuer_fingerprint.lock().expect("poisoned") = fp;
            }
            // The cluster's policy is taken at the moment of the swap, not
            // before the await above: one installed meanwhile is kept.
            let from_cluster = snapshot.policy_source == config::PolicySource::Kubernetes;
            st.snapshot.rcu(|current| {
                if from_cluster {
                    Snapshot {
                        policy: current.policy.clone(),
                        credentials: current.credentials.clone(),
                        trust: current.trust.clone(),
                        ..snapshot.clone()
                    }
                } else {
                    snapshot.clone()
                }
            });
            st.apply_registry_tls();
            Ok::<(), crate::Error>(())
        }
        .await;
        let mut status = st.reload.lock().expect("poisoned");
        match &result {
            Ok(()) => {
                status.generation += 1;
                status.last_error = None;
                st.metrics.config_generation.set(status.generation as i64);
                tracing::info!(generation = status.generation, "configuration reloaded");
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                st.metrics.config_reload_errors.inc();
                tracing::warn!(error = %e, "configuration change rejected; keeping the last good configuration");
            }
        }
        result
    }

    /// Polls the config file (and files it references) and reloads on change.
    /// Polling works with every editor's save strategy and with ConfigMap
    /// symlink swaps, where inotify watches go stale.
    pub fn spawn_watcher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        // The config file itself is always watched: a rejected edit may have
        // changed which other files it names.
        let current = move |b: &Broker| {
            let mut files = b.snapshot().watched.clone();
            files.extend(b.state.config_path.clone());
            fingerprint(&files)
        };
        tokio::spawn(async move {
            let mut last = current(&broker);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = current(&broker);
                if now != last {
                    let _ = broker.reload().await;
                    // A reload may change which files are watched.
                    last = current(&broker);
                }
            }
        })
    }
}

impl AppState {
    /// Hands the snapshot's per-registry trust to the registry client. A
    /// bundle that does not parse was refused when loaded; should one slip
    /// through, the previous trust stays and the failure is logged.
    fn apply_registry_tls(&self) {
        let tls = self.snapshot.load().registry_tls();
        if let Err(e) = self.resolver.client().set_registry_tls(tls) {
            tracing::error!(error = %e, "registry trust not updated; keeping the previous one");
        }
    }
}

fn fingerprint(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => format!("{}:{:?}:{}", p.display(), m.modified().ok(), m.len()),
            Err(_) => format!("{}:missing", p.display()),
        })
        .collect()
}
