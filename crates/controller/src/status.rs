//! Status of `PullGrant`s and `RegistryCredential`s, written back through
//! the status subresource: a `Ready` condition with a reason, the number of
//! selected namespaces, whether a static password is being copied, the last
//! and next rotation, `observedGeneration` — and an Event when `Ready` changes.
//! Written only when something changed, after a short quiet period, so a
//! burst of reconciles makes one write per object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::CredentialGauge;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::ResourceExt;
use pullbroker_core::policy::model::{
    Condition, PullGrantStatus, RegistryCredentialStatus, UpstreamCopy,
};
use pullbroker_core::policy::{
    DocumentKind, Named, Policy, PullGrant, Purpose, RegistryCredential,
};
use pullbroker_core::sync::{self, Observed, ObservedNamespace};
use pullbroker_credentials::runtime::CredentialRuntime;
use serde_json::json;

use crate::context::Context;
use crate::reconcile::{now, observe_secret, rfc3339, CREDENTIAL};

const QUIET: Duration = Duration::from_millis(300);
/// Rotation times move without any watch event; refresh them this often.
const REFRESH: Duration = Duration::from_secs(60);

/// A Ready condition. Its `lastTransitionTime` moves only when `status`
/// flips, as the API conventions (and cert-manager) define it: a new reason
/// or message under the same status is not a transition.
fn ready(old: &[Condition], verdict: &Ready<'_>, generation: Option<i64>) -> Condition {
    let Ready {
        ok,
        reason,
        message,
    } = *verdict;
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| rfc3339(now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

pub async fn run(ctx: Arc<Context>) {
    tracing::debug!("status writer waiting for caches");
    ctx.wait_ready().await;
    tracing::debug!("status writer started");
    loop {
        write_all(&ctx).await;
        let _ = tokio::time::timeout(REFRESH, ctx.status_dirty.notified()).await;
        tokio::time::sleep(QUIET).await;
    }
}

/// Writes every changed status; each write stands alone, so one that fails
/// (a grant deleted a moment ago: 404) does not hold back the others.
async fn write_all(ctx: &Context) {
    let namespaces: Vec<_> = ctx
        .namespaces
        .state()
        .iter()
        .map(|n| (**n).clone())
        .collect();
    let policy = ctx.policy(&namespaces);
    let all_grants = ctx.grants.state();
    let all_creds = ctx.credentials.state();
    // Problems are reported per document: rebuild with everything to get them.
    let (_, problems) = Policy::new(
        all_creds
            .iter()
            .map(|c| Named {
                name: c.name_any(),
                spec: c.spec.clone(),
            })
            .collect(),
        all_grants
            .iter()
            .map(|g| Named {
                name: g.name_any(),
                spec: g.spec.clone(),
            })
            .collect(),
        BTreeMap::new(),
    );
    let observed = Observed {
        namespaces: namespaces
            .iter()
            .map(|n| ObservedNamespace {
                name: n.name_any(),
                terminating: n.metadata.deletion_timestamp.is_some(),
            })
            .collect(),
        ..Default::default()
    };
    let (_, reports) = sync::desired(&policy, &observed);

    let grants: Api<PullGrant> = Api::all(ctx.client.clone());
    for g in all_grants.iter() {
        let name = g.name_any();
        let old = g.status.clone().unwrap_or_default();
        let generation = g.metadata.generation;
        let problem = problems
            .iter()
            .find(|p| p.is_about(DocumentKind::PullGrant, &name));
        let report = reports.get(&name);
        let (ok, reason, message) = match (problem, report) {
            (Some(p), _) => (false, "Invalid", p.message.clone()),
            (None, Some(r)) if r.blocked.is_some() => (
                false,
                match policy
                    .credentials()
                    .get(&g.spec.credential)
                    .and_then(|c| c.upstream_copy())
                {
                    Some(UpstreamCopy::Token) => "UpstreamCopyNotAllowed",
                    _ => "StaticCopyNotAllowed",
                },
                r.blocked.clone().unwrap_or_default(),
            ),
            (None, Some(r)) if r.static_copy => (
                true,
                "SyncedStaticCopy",
                format!(
                    "a static upstream password is copied into {} namespace(s) (allowUpstreamCopy)",
                    r.selected_namespaces
                ),
            ),
            (None, Some(r)) if r.upstream_copy => (
                true,
                "SyncedUpstreamCopy",
                format!(
                    "an upstream token is copied into {} namespace(s) (allowUpstreamCopy); each copy lives at most the grant's ttl, the token itself stays valid upstream until it expires",
                    r.selected_namespaces
                ),
            ),
            (None, Some(r)) => (
                true,
                "Synced",
                format!(
                    "short-lived credentials synced to {} namespace(s)",
                    r.selected_namespaces
                ),
            ),
            (None, None) if !g.spec.purposes.contains(&Purpose::Sync) => {
                (true, "Valid", "grant is in effect".to_string())
            }
            (None, None) => (false, "Invalid", "grant is not in effect".to_string()),
        };
        let verdict = Ready {
            ok,
            reason,
            message: &message,
        };
        let status = PullGrantStatus {
            conditions: vec![ready(&old.conditions, &verdict, generation)],
            observed_generation: generation,
            selected_namespaces: report.map(|r| r.selected_namespaces as i64),
            static_copy: report.is_some_and(|r| r.static_copy),
            upstream_copy: report.is_some_and(|r| r.upstream_copy),
        };
        if status != old {
            if let Err(e) = write(ctx, &grants, g, &old.conditions, &status, verdict).await {
                report_failed_write("PullGrant", &g.name_any(), &e);
            }
        }
    }

    // Rotation times per credential, from the managed secrets.
    let rotate_after = ctx.settings.rotate_after;
    let mut times: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for s in ctx.managed.all() {
        let Some(cred) = s.annotations().get(CREDENTIAL).cloned() else {
            continue;
        };
        // Only times we wrote or verified: a tenant's edit must not show.
        if !ctx.trusted(&s.metadata) {
            continue;
        }
        let o = observe_secret(&s.metadata, false);
        // A static copy has no next rotation: it follows its source.
        let due = o.due(rotate_after).unwrap_or(i64::MAX);
        let t = times.entry(cred).or_insert((i64::MIN, i64::MAX));
        t.0 = t.0.max(o.issued_at);
        t.1 = t.1.min(due);
    }
    let now = crate::reconcile::now();
    let lag = times
        .values()
        .filter(|t| t.1 != i64::MAX)
        .map(|t| now.saturating_sub(t.1))
        .max()
        .unwrap_or(0)
        .max(0);
    ctx.metrics
        .rotation_lag_seconds
        .store(lag, std::sync::atomic::Ordering::Relaxed);
    let creds: Api<RegistryCredential> = Api::all(ctx.client.clone());
    let runtimes = ctx.runtimes(&policy);
    let mut gauges = BTreeMap::new();
    for c in all_creds.iter() {
        let name = c.name_any();
        let old = c.status.clone().unwrap_or_default();
        let generation = c.metadata.generation;
        let (ok, reason, message, gauge) = match problems
            .iter()
            .find(|p| p.is_about(DocumentKind::RegistryCredential, &name))
        {
            Some(p) => (false, "Invalid", p.message.clone(), None),
            None => credential_verdict(runtimes.get(&name), &name, now, rotate_after).await,
        };
        gauges.insert(
            name.clone(),
            gauge.unwrap_or(CredentialGauge {
                ready: false,
                expires_at: None,
                refresh_failing: false,
            }),
        );
        let (last, next) = times.get(&name).copied().unwrap_or((i64::MIN, i64::MAX));
        let verdict = Ready {
            ok,
            reason,
            message: &message,
        };
        let status = RegistryCredentialStatus {
            conditions: vec![ready(&old.conditions, &verdict, generation)],
            observed_generation: generation,
            last_rotation: (last != i64::MIN).then(|| rfc3339(last)),
            next_rotation: (next != i64::MAX).then(|| rfc3339(next)),
        };
        if status != old {
            if let Err(e) = write(ctx, &creds, c, &old.conditions, &status, verdict).await {
                report_failed_write("RegistryCredential", &c.name_any(), &e);
            }
        }
    }
    *ctx.metrics.credentials.lock().expect("poisoned") = gauges;
}

/// A valid credential's readiness (and its gauge for `/metrics`, when it
/// offers something), from what it offers now: the same
/// [`CredentialRuntime::current`] that issuing and the broker use, so the
/// status says what a consumer would get.
async fn credential_verdict(
    runtime: Option<&Result<CredentialRuntime, pullbroker_credentials::Error>>,
    name: &str,
    now: i64,
    rotate_after: f64,
) -> (bool, &'static str, String, Option<CredentialGauge>) {
    let unavailable = |why: String| (false, "SourceUnavailable", why, None);
    match runtime {
        // Valid documents always have a runtime; a race with a policy
        // change between the two reads lands here until the next pass.
        None => unavailable("credential is not in the policy yet".to_string()),
        Some(Err(e)) => unavailable(e.to_string()),
        Some(Ok(runtime)) => match runtime.current(name, now, rotate_after).await {
            Err(u) => unavailable(u.cause.to_string()),
            Ok(c) => {
                let failed = c.refresh_failed().map(ToString::to_string);
                let gauge = CredentialGauge {
                    ready: failed.is_none(),
                    expires_at: c.expires_at(),
                    refresh_failing: failed.is_some(),
                };
                match failed {
                    Some(e) => (
                        false,
                        "SourceUnavailable",
                        format!("{e}; the previous credential is served until it expires"),
                        Some(gauge),
                    ),
                    None => (
                        true,
                        "SourceAvailable",
                        "credential source is available".to_string(),
                        Some(gauge),
                    ),
                }
            }
        },
    }
}

fn report_failed_write(kind: &str, name: &str, e: &kube::Error) {
    match e {
        // Deleted since the cache saw it: nothing to report on.
        kube::Error::Api(s) if s.code == 404 => {
            tracing::debug!(kind, name, "status not written: the object is gone")
        }
        _ => tracing::warn!(kind, name, error = %e, "cannot write status; will retry"),
    }
}

/// The Ready verdict being written.
#[derive(Clone, Copy)]
struct Ready<'a> {
    ok: bool,
    reason: &'a str,
    message: &'a str,
}

/// Writes a changed status through the status subresource, with an Event
/// when Ready changed.
async fn write<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    old: &[Condition],
    status: &impl serde::Serialize,
    ready: Ready<'_>,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    announce(
        ctx,
        obj.object_ref(&()),
        old,
        ready.ok,
        ready.reason,
        ready.message,
    )
    .await;
    Ok(())
}

/// An Event when Ready changes (not on every count change).
async fn announce(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    old: &[Condition],
    ok: bool,
    reason: &str,
    message: &str,
) {
    let was = old.iter().find(|c| c.type_ == "Ready");
    if was.is_some_and(|c| c.reason == reason && (c.status == "True") == ok) {
        return;
    }
    let event = Event {
        type_: if ok {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason.into(),
        note: Some(message.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

/// The status writer against a scripted API: every write it must make, in
/// order, and nothing else.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{echo, status, step, Scripted};
    use crate::reconcile::tests::static_grant;
    use crate::Settings;

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let at = |status: &str, reason: &str| Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
            last_transition_time: "2020-01-01T00:00:00Z".into(),
            observed_generation: Some(1),
        };
        let verdict = |ok, reason| Ready {
            ok,
            reason,
            message: "another message",
        };
        let old = [at("False", "CredentialNotReady")];
        // Same status, another reason: not a transition.
        let kept = ready(&old, &verdict(false, "StaticCopyNotAllowed"), Some(2));
        assert_eq!(kept.last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(kept.reason, "StaticCopyNotAllowed");
        // The status flips: now.
        let flipped = ready(&old, &verdict(true, "Synced"), Some(2));
        assert_ne!(flipped.last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(flipped.status, "True");
    }

    #[tokio::test]
    async fn a_status_that_cannot_be_written_does_not_hold_back_the_others() {
        let cached = static_grant();
        let credential = serde_json::to_value(&cached.credentials[0]).unwrap();
        let (client, api) = Scripted::client(vec![
            // Deleted a moment ago: the cache still has it.
            step(
                "PATCH",
                "/apis/pullbroker.dev/v1alpha1/pullgrants/hub/status",
                404,
                status(404, "NotFound"),
            ),
            step(
                "PATCH",
                "/apis/pullbroker.dev/v1alpha1/registrycredentials/hub/status",
                200,
                credential,
            ),
            // Ready is new: one Event says so.
            echo(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/default/events",
                "1",
            ),
        ]);
        let ctx = Context::for_test(client, Settings::default(), cached);
        write_all(&ctx).await;
        let sent = api.sent();
        api.done();
        let ready = |i: usize| sent[i]["status"]["conditions"][0].clone();
        assert_eq!(ready(0)["reason"], "SyncedStaticCopy");
        assert_eq!(ready(1)["reason"], "SourceAvailable");
        assert_eq!(ready(1)["status"], "True");
        assert_eq!(sent[2]["reason"], "SourceAvailable");
        assert_eq!(sent[2]["regarding"]["name"], "hub");
    }
}
