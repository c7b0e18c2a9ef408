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

use crate::Context;

const STUCK: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

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
    let statuses = pod.status.as_ref()?;
    let stuck_images = statuses
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
        .map(|c| c.image.clone());
    let subject = Subject::new(&ns, sa);
    for image in stuck_images {
        let Ok(r) = Reference::parse(&image) else {
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
        if let Some(grant) = d.grant.filter(|_| d.allowed) {
            let secret = secret_name(&grant);
            if !has.contains(secret.as_str()) {
                return Some(secret);
            }
        }
    }
    None
}

pub async fn run(ctx: Arc<Context>) {
    ctx.wait_ready().await;
    let mut handled: HashSet<String> = HashSet::new();
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(next) = stream.next().await {
        let Ok(pod) = next else { continue };
        let Some(uid) = pod.uid() else { continue };
        if handled.contains(&uid) || pod.metadata.deletion_timestamp.is_some() {
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
        handled.insert(uid);
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
