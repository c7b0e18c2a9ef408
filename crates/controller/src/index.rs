//! A watch-fed cache of namespaced objects, indexed by namespace.
//!
//! kube-runtime's `Store` answers "this object" but not "every object of this
//! namespace" without cloning the whole cache; a reconcile per namespace over
//! 10,000 namespaces would make that quadratic. This index is fed from the
//! same watch stream that triggers the controller, so an object is in the
//! index before the reconcile it triggers runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::watcher::Event;
use kube::ResourceExt;

type ByNamespace<K> = HashMap<String, HashMap<String, Arc<K>>>;

pub struct Index<K> {
    objects: RwLock<ByNamespace<K>>,
    /// Objects listed since the last `Init`, swapped in whole at `InitDone`.
    relist: RwLock<Option<ByNamespace<K>>>,
}

impl<K: ResourceExt + Clone> Index<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Index {
            objects: RwLock::default(),
            relist: RwLock::default(),
        })
    }

    fn put(map: &mut ByNamespace<K>, obj: &K) {
        map.entry(obj.namespace().unwrap_or_default())
            .or_default()
            .insert(obj.name_any(), Arc::new(obj.clone()));
    }

    /// Applies one watcher event.
    pub fn apply(&self, event: &Event<K>) {
        match event {
            Event::Apply(obj) => Self::put(&mut self.objects.write().expect("poisoned"), obj),
            Event::Delete(obj) => {
                let mut map = self.objects.write().expect("poisoned");
                let ns = obj.namespace().unwrap_or_default();
                if let Some(names) = map.get_mut(&ns) {
                    names.remove(&obj.name_any());
                    if names.is_empty() {
                        map.remove(&ns);
                    }
                }
            }
            Event::Init => *self.relist.write().expect("poisoned") = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(map) = self.relist.write().expect("poisoned").as_mut() {
                    Self::put(map, obj);
                }
            }
            Event::InitDone => {
                if let Some(map) = self.relist.write().expect("poisoned").take() {
                    *self.objects.write().expect("poisoned") = map;
                }
            }
        }
    }

    /// Every object of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.objects
            .read()
            .expect("poisoned")
            .get(namespace)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every object (for statuses and audits).
    pub fn all(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .expect("poisoned")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceAccount;

    fn sa(ns: &str, name: &str) -> ServiceAccount {
        let mut s = ServiceAccount::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn indexes_by_namespace_and_relists_whole() {
        let idx = Index::new();
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(sa("a", "x")));
        assert!(
            idx.in_namespace("a").is_empty(),
            "not visible before InitDone"
        );
        idx.apply(&Event::InitDone);
        idx.apply(&Event::Apply(sa("a", "y")));
        idx.apply(&Event::Apply(sa("b", "x")));
        assert_eq!(idx.in_namespace("a").len(), 2);
        idx.apply(&Event::Delete(sa("a", "x")));
        assert_eq!(idx.in_namespace("a").len(), 1);
        // A relist replaces everything: what it lacks is gone.
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(sa("b", "x")));
        idx.apply(&Event::InitDone);
        assert!(idx.in_namespace("a").is_empty());
        assert_eq!(idx.all().len(), 1);
    }
}
