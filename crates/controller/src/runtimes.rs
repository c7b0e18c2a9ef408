//! The policy's credential runtimes, built once per change of what they are
//! built from and shared by every reconcile and the status writer. Building
//! one parses signing keys or decodes a docker config; doing that for each
//! secret issued in each namespace made a pass cost O(namespaces × grants)
//! key parses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pullbroker_credentials::runtime::CredentialRuntime;

/// Each credential of the policy: its runtime, or why it has none.
pub(crate) type Runtimes =
    BTreeMap<String, Result<CredentialRuntime, pullbroker_credentials::Error>>;

/// The runtimes last built, with the digest of their inputs.
#[derive(Default)]
pub(crate) struct RuntimeCache(Mutex<Option<([u8; 32], Arc<Runtimes>)>>);

impl RuntimeCache {
    /// The runtimes for inputs digesting to `inputs`: those last built if
    /// their inputs were the same, otherwise `build()`'s (kept for next time).
    pub(crate) fn get(&self, inputs: [u8; 32], build: impl FnOnce() -> Runtimes) -> Arc<Runtimes> {
        let mut cached = self.0.lock().expect("poisoned");
        if let Some((digest, runtimes)) = &*cached {
            if *digest == inputs {
                return runtimes.clone();
            }
        }
        let runtimes = Arc::new(build());
        *cached = Some((inputs, runtimes.clone()));
        runtimes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_again_only_when_the_inputs_change() {
        let cache = RuntimeCache::default();
        let mut builds = 0;
        let mut get = |inputs: u8| {
            cache.get([inputs; 32], || {
                builds += 1;
                Runtimes::new()
            })
        };
        let first = get(1);
        let again = get(1);
        assert!(Arc::ptr_eq(&first, &again));
        let changed = get(2);
        assert!(!Arc::ptr_eq(&first, &changed));
        get(2);
        get(1);
        assert_eq!(builds, 3, "1, 2, then 1 again (only the last is kept)");
    }
}
