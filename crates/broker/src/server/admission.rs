//! `POST /v1/admission/pin`: the mutating webhook. AdmissionReview v1 in,
//! JSON Patch out. The request is read by `core::admission`; here each image
//! is decided (purpose `resolve`, the object's namespace and service
//! account), resolved with the central credential through the shared
//! resolver, and answered inside the API server's deadline.
//!
//! Nothing is read from or written to the tenant namespace; no credential
//! appears in a response, warning, audit annotation or log line.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use pullbroker_core::admission::{self, Action, AdmissionRequest, Operation, PatchOp, PodSpec};
use pullbroker_core::policy::{FailurePolicy, Purpose, Request, Subject, Target};

use super::resolve::{resolve_central, Failure};
use super::{ApiError, AppState, Kind};
use crate::config::Snapshot;
use crate::metrics::AdmissionLabels;

/// The API server's default `timeoutSeconds`.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The longest deadline the API server allows (`timeoutSeconds` ≤ 30).
const MAX_DEADLINE: Duration = Duration::from_secs(30);

/// How long we may spend resolving: the API server's deadline less a margin
/// for our answer to travel back (a quarter of it, at most 2 s).
pub(crate) fn budget(timeout: Option<&str>) -> Duration {
    let deadline = timeout
        .and_then(|t| pullbroker_core::policy::model::parse_duration(t).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_DEADLINE)
        .min(MAX_DEADLINE);
    deadline - (deadline / 4).min(Duration::from_secs(2))
}

pub(super) async fn pin(
    State(st): State<Arc<AppState>>,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let timeout = q
        .iter()
        .find(|(k, _)| k == "timeout")
        .map(|(_, v)| v.as_str());
    match admission::parse_review(&body) {
        Err(e) => ApiError::new(Kind::BadRequest, "invalid_review", e).into_response(),
        Ok((uid, None)) => Json(admission::Response::allow().review(&uid)).into_response(),
        Ok((uid, Some(req))) => {
            let snapshot = st.snapshot.load_full();
            let answer = review(&st, &snapshot, &req, budget(timeout)).await;
            audit(&req, &answer);
            Json(answer.review(&uid)).into_response()
        }
    }
}

fn audit(req: &AdmissionRequest, answer: &admission::Response) {
    let note = |key: &str| {
        answer
            .audit_annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    tracing::info!(
        target: "audit",
        endpoint = "admission",
        kind = req.kind.gvkr().2,
        namespace = %req.namespace,
        name = %req.name,
        operation = ?req.operation,
        dry_run = req.dry_run,
        allowed = answer.allowed,
        pinned = note("pinned"),
        skipped = note("skipped"),
        failed = note("failed"),
        "admission"
    );
}

/// One image's outcome.
enum Outcome {
    Pin(String),
    Leave(String),
    Failed {
        failure: Failure,
        policy: FailurePolicy,
        grant: String,
    },
}

async fn review(
    st: &AppState,
    snapshot: &Snapshot,
    req: &AdmissionRequest,
    budget: Duration,
) -> admission::Response {
    let mut answer = admission::Response::allow();
    let spec = match admission::pod_spec(req.kind, &req.object) {
        Ok(s) => s,
        Err(e) => {
            answer
                .warnings
                .push(format!("pullbroker: left unchanged: {e}"));
            return answer;
        }
    };
    if let Some(owner) = admission::pinned_owner(&req.object) {
        // A child of something we pin (or chose not to): never pin it, or
        // its controller sees a template it did not write and churns. A
        // controller's Pod still gets the managed pull secret: those are the
        // pods sync mode's admission race leaves stuck.
        answer
            .audit_annotations
            .push(("skipped".into(), format!("owned by {owner}")));
        let mut ops = Vec::new();
        if req.kind == admission::Kind::Pod && req.operation == Operation::Create {
            add_managed_secrets(snapshot, req, &spec, &mut ops, &mut answer);
        }
        if !ops.is_empty() {
            answer.patch = Some(admission::json_patch(&ops, &spec));
        }
        return answer;
    }
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| admission::pod_spec(req.kind, o).ok());
    let subject = Subject::new(req.namespace.clone(), spec.service_account.clone());
    let deadline = tokio::time::Instant::now() + budget;
    let outcomes = join_all(spec.slots.iter().map(|slot| {
        let action = admission::action(slot, old.as_ref());
        decide_and_resolve(st, snapshot, &subject, slot, action, deadline)
    }))
    .await;

    let mut ops = Vec::new();
    let (mut pinned, mut skipped, mut failed, mut denials) = (vec![], vec![], vec![], vec![]);
    for (slot, outcome) in spec.slots.iter().zip(outcomes) {
        let at = format!("{}[{}]", slot.list, slot.container);
        let (counted, class) = match &outcome {
            Outcome::Pin(_) => ("pinned", ""),
            Outcome::Leave(_) => ("skipped", ""),
            Outcome::Failed { failure, .. } => ("failed", failure.class),
        };
        st.metrics
            .admission_images
            .get_or_create(&AdmissionLabels {
                outcome: counted,
                class,
            })
            .inc();
        match outcome {
            Outcome::Pin(value) => {
                pinned.push(format!("{at}={value}"));
                ops.push(PatchOp::ReplaceImage {
                    pointer: slot.pointer.clone(),
                    value,
                });
            }
            Outcome::Leave(why) => skipped.push(format!("{at}: {why}")),
            Outcome::Failed {
                failure,
                policy,
                grant,
            } => {
                let what = format!(
                    "cannot pin {} ({at}): {}: {}",
                    slot.image, failure.class, failure.message
                );
                failed.push(format!("{at}: {}", failure.class));
                match policy {
                    FailurePolicy::Fail => denials.push(format!(
                        "{what} (PullGrant {grant:?} has admission.failurePolicy Fail)"
                    )),
                    FailurePolicy::Ignore => answer.warnings.push(format!(
                        "pullbroker: {what}; admitted unchanged (PullGrant {grant:?} has admission.failurePolicy Ignore)"
                    )),
                }
            }
        }
    }
    if req.kind == admission::Kind::Pod && req.operation == Operation::Create {
        add_managed_secrets(snapshot, req, &spec, &mut ops, &mut answer);
    }
    for (key, items) in [
        ("pinned", &pinned),
        ("skipped", &skipped),
        ("failed", &failed),
    ] {
        if !items.is_empty() {
            answer
                .audit_annotations
                .push((key.to_string(), items.join(", ")));
        }
    }
    if !denials.is_empty() {
        let mut denied = admission::Response::deny(403, denials.join("; "));
        denied.audit_annotations = std::mem::take(&mut answer.audit_annotations);
        denied.warnings = std::mem::take(&mut answer.warnings);
        return denied;
    }
    if !ops.is_empty() {
        answer.patch = Some(admission::json_patch(&ops, &spec));
    }
    answer
}

/// Closes sync mode's admission race: the ServiceAccount plugin copied the
/// account's `imagePullSecrets` before us; a pod created before the
/// controller patched the account would otherwise never get the secret.
fn add_managed_secrets(
    snapshot: &Snapshot,
    req: &AdmissionRequest,
    spec: &PodSpec,
    ops: &mut Vec<PatchOp>,
    answer: &mut admission::Response,
) {
    let wanted = pullbroker_core::sync::secrets_for_account(
        &snapshot.policy,
        &req.namespace,
        &spec.service_account,
    );
    let added: Vec<String> = wanted
        .into_iter()
        .filter(|name| !spec.image_pull_secrets.contains(name))
        .collect();
    for name in &added {
        ops.push(PatchOp::AddPullSecret {
            pod_spec: spec.pointer,
            name: name.clone(),
        });
    }
    if !added.is_empty() {
        answer
            .audit_annotations
            .push(("added-pull-secrets".into(), added.join(", ")));
    }
}

async fn decide_and_resolve(
    st: &AppState,
    snapshot: &Snapshot,
    subject: &Subject,
    slot: &admission::Slot,
    action: Action,
    deadline: tokio::time::Instant,
) -> Outcome {
    let (image, restore) = match action {
        Action::Leave(why) => return Outcome::Leave(why.into()),
        Action::Resolve(image) => (image, None),
        Action::Restore(pinned) => match pullbroker_core::Reference::parse(&pinned) {
            Ok(r) => (r, Some(pinned)),
            Err(_) => return Outcome::Leave("old image is not a valid reference".into()),
        },
    };
    if admission::skipped_registry(&snapshot.admission_skip_registries, &image) {
        return Outcome::Leave(format!(
            "registry {} skips tag resolution",
            image.registry()
        ));
    }
    let d = st.decide(
        snapshot,
        "admission",
        &Request {
            subject,
            purpose: Purpose::Resolve,
            target: Target::Image {
                registry: image.registry(),
                repository: image.repository(),
            },
            on_behalf_of: None,
            narrowed_to: None,
        },
    );
    let Some(allow) = d.into_allow().ok() else {
        // Not opted in: this namespace, account or repository has no grant.
        return Outcome::Leave("no grant".into());
    };
    if let Some(pinned) = restore {
        return Outcome::Pin(pinned);
    }
    let grant = allow.grant;
    let policy = snapshot
        .policy
        .grants()
        .iter()
        .find(|g| g.name == grant)
        .map(|g| g.spec.failure_policy())
        .unwrap_or_default();
    let name = allow.credential;
    let who = format!("{subject} (admission)");
    let failed = |failure| Outcome::Failed {
        failure,
        policy,
        grant: grant.clone(),
    };
    match tokio::time::timeout_at(deadline, resolve_central(st, snapshot, &name, &image, &who))
        .await
    {
        Ok(Ok(r)) => Outcome::Pin(admission::pinned(&slot.image, &r.digest)),
        Ok(Err(f)) => failed(f),
        Err(_) => failed(Failure {
            class: "timeout",
            message: format!(
                "{} did not answer within the admission deadline",
                image.registry()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_stays_inside_the_deadline() {
        assert_eq!(budget(None), Duration::from_secs(8));
        assert_eq!(budget(Some("10s")), Duration::from_secs(8));
        assert_eq!(budget(Some("3s")), Duration::from_millis(2250));
        assert_eq!(budget(Some("1s")), Duration::from_millis(750));
        assert_eq!(
            budget(Some("300s")),
            Duration::from_secs(28),
            "capped at 30 s"
        );
        assert_eq!(budget(Some("nonsense")), Duration::from_secs(8));
        assert_eq!(budget(Some("0s")), Duration::from_secs(8));
    }
}
