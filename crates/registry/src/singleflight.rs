//! De-duplication of identical in-flight work: the first caller for a key runs
//! the future, concurrent callers for the same key await its result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

pub struct SingleFlight<K, V: Clone> {
    inflight: Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes the caller's run from the map when the caller goes, however it goes.
struct Forget<'a, K: Hash + Eq, V: Clone> {
    map: &'a Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
    key: K,
    run: Shared<BoxFuture<'static, V>>,
}

impl<K: Hash + Eq, V: Clone> Drop for Forget<'_, K, V> {
    fn drop(&mut self) {
        // A poisoned lock only means another caller panicked holding it for a
        // map operation; the map itself is still consistent.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|s| s.ptr_eq(&self.run)) {
            map.remove(&self.key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `make()` unless a run for `key` is already in flight, and returns
    /// that run's result. `make` is only called by the first caller.
    ///
    /// The key is forgotten on every way out of a caller — completion, error,
    /// panic (the run's panic reaches its callers), or the caller being
    /// dropped mid-wait — so a run that panicked or hung is never handed to
    /// later callers: they start a fresh one.
    pub async fn run<F, Fut>(&self, key: K, make: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| make().boxed().shared())
                .clone()
        };
        let _forget = Forget {
            map: &self.inflight,
            key,
            run: shared.clone(),
        };
        shared.await
    }

    /// Number of distinct keys in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf = SingleFlight::<&'static str, usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let callers = (0..8).map(|_| {
            let (runs, mut gate) = (runs.clone(), gate.clone());
            sf.run("k", move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                42
            })
        });
        let mut all = Box::pin(futures::future::join_all(callers));
        // One poll: every caller has joined the run, which is held open.
        assert!(futures::poll!(&mut all).is_pending());
        assert_eq!(sf.in_flight(), 1);
        release.send(true).unwrap();
        assert_eq!(all.await, vec![42; 8]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0, "finished runs are forgotten");
        let again = sf.run("k", || async { 7 }).await;
        assert_eq!(again, 7, "a new run starts after the previous one finished");
    }

    /// A run that panics reaches its caller, and the next caller starts anew
    /// instead of inheriting the panicked run (it used to stay in the map).
    #[tokio::test]
    async fn a_panicked_run_is_forgotten() {
        let sf = Arc::new(SingleFlight::<&'static str, usize>::default());
        for _ in 0..3 {
            let sf2 = sf.clone();
            let joined =
                tokio::spawn(async move { sf2.run("k", || async { panic!("boom") }).await }).await;
            assert!(joined.unwrap_err().is_panic());
            assert_eq!(sf.in_flight(), 0);
        }
        assert_eq!(sf.run("k", || async { 5 }).await, 5);
    }

    /// A caller dropped mid-wait (a deadline) takes its run's key with it.
    #[tokio::test]
    async fn a_cancelled_caller_forgets_its_run() {
        let sf = SingleFlight::<&'static str, usize>::default();
        let hung = sf.run("k", futures::future::pending::<usize>);
        let mut hung = Box::pin(hung);
        assert!(futures::poll!(&mut hung).is_pending());
        assert_eq!(sf.in_flight(), 1);
        drop(hung);
        assert_eq!(sf.in_flight(), 0);
        assert_eq!(
            sf.run("k", || async { 9 }).await,
            9,
            "a fresh run, not the hung one"
        );
    }

    #[tokio::test]
    async fn different_keys_run_separately() {
        let sf = SingleFlight::<u8, u8>::default();
        let (a, b) = tokio::join!(sf.run(1, || async { 1 }), sf.run(2, || async { 2 }));
        assert_eq!((a, b), (1, 2));
    }
}
