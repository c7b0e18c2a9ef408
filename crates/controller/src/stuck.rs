//! The admission race: a pod copies its service account's `imagePullSecrets`
//! when it is admitted, and that list is immutable afterwards. A pod created
//! before we attached our secret sits in `ErrImagePull`/`ImagePullBackOff`
//! for good. We find such pods — a sync grant covers their service account
//! and image, their spec lacks our secret — and emit a Warning Event that
//! names the fix; with `recreate_stuck_pods`, pods that a controller owns are
//! deleted so their owner recreates them with the secret.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use pullbroker_core::policy::{Policy, Purpose, Request, Subject, Target};
use pullbroker_core::sync::secret_name;
use pullbroker_core::Reference;

use crate::context::Context;

const STUCK: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// The images a pod's containers are stuck pulling (most pods: none, and
/// then no policy needs to be built for them).
pub fn stuck_images(pod: &Pod) -> Vec<&str> {
    let Some(statuses) = pod.status.as_ref() else {
        return Vec::new();
    };
    statuses
        .container_statuses
        .iter()
        .flatten()
        .chain(statuses.init_container_statuses.iter().flatten())
        .filter(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| STUCK.contains(&r))
        })
        .map(|c| c.image.as_str())
        .collect()
}

/// The managed secret a stuck pod is missing, if that is why it is stuck.
pub fn missing_secret(policy: &Policy, pod: &Pod) -> Option<String> {
    let ns = pod.namespace()?;
    let spec = pod.spec.as_ref()?;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");
    let has: HashSet<&str> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    let subject = Subject::new(&ns, sa);
    for image in stuck_images(pod) {
        let Ok(r) = Reference::parse(image) else {
            continue;
        };
        let d = policy.decide(&Request {
            subject: &subject,
            purpose: Purpose::Sync,
            target: Target::Image {
                registry: r.registry(),
                repository: r.repository(),
            },
            on_behalf_of: None,
            narrowed_to: None,
        });
        if let Some(allow) = d.allow() {
            let secret = secret_name(&allow.grant);
            if !has.contains(secret.as_str()) {
                return Some(secret);
            }
        }
    }
    None
}

/// The pods already reported, by UID: each is reported once, and forgotten
/// when it is deleted (or, after a re-list, when it was not listed), so the
/// set holds at most the pods that exist.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    uids: HashSet<String>,
    /// During a re-list: the UIDs listed so far.
    listing: Option<HashSet<String>>,
}

impl Reported {
    /// Follows the watch; returns the pod to look at, if the event brings one.
    pub fn on_event(&mut self, ev: watcher::Event<Pod>) -> Option<Pod> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                None
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) = (self.listing.as_mut(), pod.uid()) {
                    listing.insert(uid);
                }
                Some(pod)
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.uids.retain(|u| listed.contains(u));
                }
                None
            }
            watcher::Event::Apply(pod) => Some(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.uid() {
                    self.uids.remove(&uid);
                }
                None
            }
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }

    pub fn insert(&mut self, uid: String) {
        self.uids.insert(uid);
    }
}

pub async fn run(ctx: Arc<Context>) {
    ctx.wait_ready().await;
    let mut reported = Reported::default();
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher(pods, pullbroker_cluster::api::watch_config())
        .default_backoff()
        .boxed();
    while let Some(next) = stream.next().await {
        let Ok(ev) = next else { continue };
        let Some(pod) = reported.on_event(ev) else {
            continue;
        };
        let Some(uid) = pod.uid() else { continue };
        if reported.contains(&uid)
            || pod.metadata.deletion_timestamp.is_some()
            || stuck_images(&pod).is_empty()
        {
            continue;
        }
        let Some(ns) = ctx.namespaces.get(&ObjectRef::<Namespace>::new(
            &pod.namespace().unwrap_or_default(),
        )) else {
            continue;
        };
        let policy = ctx.policy(std::slice::from_ref(&*ns));
        let Some(secret) = missing_secret(&policy, &pod) else {
            continue;
        };
        reported.insert(uid);
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let owned = pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true));
        let recreate = ctx.settings.recreate_stuck_pods && owned;
        let note = if recreate {
            format!("pod was admitted before pullbroker attached secret {secret:?} to service account {sa:?}; deleting it so its controller recreates it with the secret")
        } else {
            format!("pod was admitted before pullbroker attached secret {secret:?} to service account {sa:?}; delete the pod so it is recreated with the secret (pod imagePullSecrets cannot change)")
        };
        tracing::warn!(namespace = %pod.namespace().unwrap_or_default(), pod = %pod.name_any(), secret = %secret, recreate, "pod stuck pulling without its synced secret");
        let event = Event {
            type_: EventType::Warning,
            reason: "MissingPullSecret".into(),
            note: Some(note),
            action: if recreate {
                "Recreate".into()
            } else {
                "Diagnose".into()
            },
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish event");
        }
        if recreate {
            let api: Api<Pod> =
                Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            if let Err(e) = api.delete(&pod.name_any(), &DeleteParams::default()).await {
                tracing::warn!(error = %e, "cannot delete stuck pod");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, waiting: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "team-a", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "r.example/app:v1"}]},
            "status": {"containerStatuses": [{
                "name": "c", "image": "r.example/app:v1", "imageID": "", "ready": false, "restartCount": 0,
                "state": waiting.map_or(serde_json::json!({"running": {}}), |r| serde_json::json!({"waiting": {"reason": r}}))
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn only_pods_waiting_on_a_pull_are_stuck() {
        assert_eq!(
            stuck_images(&pod("a", Some("ImagePullBackOff"))),
            ["r.example/app:v1"]
        );
        assert_eq!(
            stuck_images(&pod("a", Some("ErrImagePull"))),
            ["r.example/app:v1"]
        );
        assert!(stuck_images(&pod("a", Some("ContainerCreating"))).is_empty());
        assert!(stuck_images(&pod("a", None)).is_empty());
    }

    #[test]
    fn reported_pods_are_forgotten_when_deleted_or_not_listed_again() {
        let mut r = Reported::default();
        for uid in ["a", "b", "c"] {
            assert!(r.on_event(watcher::Event::Apply(pod(uid, None))).is_some());
            r.insert(uid.into());
        }
        assert!(r.on_event(watcher::Event::Delete(pod("a", None))).is_none());
        assert!(!r.contains("a") && r.contains("b"));
        // A re-list (after a 410 or a reconnect) that no longer has `b`.
        r.on_event(watcher::Event::Init);
        assert!(r
            .on_event(watcher::Event::InitApply(pod("c", None)))
            .is_some());
        r.on_event(watcher::Event::InitDone);
        assert!(
            !r.contains("b"),
            "its delete was missed, the re-list shows it gone"
        );
        assert!(r.contains("c"));
        assert_eq!(r.uids.len(), 1);
    }
}
