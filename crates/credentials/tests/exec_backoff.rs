//! An exec source that fails is not re-run by every waiting caller: the
//! failure is shared until a backoff passes (on the caller's clock, so these
//! tests need no sleeps), and a credential that has not expired is served
//! while its refresh fails. Real executables, counted by the runs they log.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use pullbroker_core::policy::model::ExecSource;
use pullbroker_credentials::source::{Refresher, Refreshers};
use pullbroker_credentials::{Error, ExecProblem};

/// Appends a line to `runs` on each run; answers with a credential valid for
/// 100 s while the file `ok` exists, and fails otherwise.
const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat > /dev/null
echo run >> "$dir/runs"
[ -e "$dir/ok" ] || exit 1
echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"100s","auth":{"r.example":{"username":"u","password":"p"}}}'
"#;

fn source(dir: &Path) -> (Refreshers, Arc<Refresher>) {
    let path = dir.join("provider");
    std::fs::write(&path, SCRIPT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec: ExecSource =
        serde_json::from_value(serde_json::json!({"command": "provider"})).unwrap();
    let all = Refreshers::default();
    let r = all.get("corp", &spec, "r.example", Some(dir));
    (all, r)
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

const NOW: i64 = 1_800_000_000;

#[tokio::test]
async fn concurrent_callers_share_one_failed_run_until_the_backoff_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (_all, r) = source(dir.path());
    let calls = (0..8).map(|_| r.current(NOW, 0.5));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert_eq!(
        runs(dir.path()),
        1,
        "the callers queued behind the failure shared it"
    );
    let error = results[7].as_ref().unwrap_err();
    assert!(
        matches!(error, Error::Exec { command, problem: ExecProblem::Exited(_) } if command == "provider"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "exec source \"provider\": exited with exit status: 1"
    );

    // Backoff 1 s after the first failure, then 2 s after the second.
    assert!(r.current(NOW, 0.5).await.is_err());
    assert_eq!(runs(dir.path()), 1);
    assert!(r.current(NOW + 1, 0.5).await.is_err());
    assert_eq!(runs(dir.path()), 2);
    assert!(r.current(NOW + 2, 0.5).await.is_err());
    assert_eq!(runs(dir.path()), 2, "still backing off (until NOW + 3)");

    std::fs::write(dir.path().join("ok"), "").unwrap();
    let served = r.current(NOW + 3, 0.5).await.expect("recovered");
    let u = &served.upstream;
    assert_eq!((u.issued_at, u.expires_at), (NOW + 3, NOW + 103));
    assert_eq!(runs(dir.path()), 3);
    assert_eq!(served.refresh_failed, None);
}

#[tokio::test]
async fn an_unexpired_credential_is_served_while_its_refresh_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok"), "").unwrap();
    let (_all, r) = source(dir.path());
    let first = r.current(NOW, 0.5).await.unwrap();
    assert_eq!(runs(dir.path()), 1);
    assert_eq!(first.refresh_failed, None);

    std::fs::remove_file(dir.path().join("ok")).unwrap();
    // Due for refresh at NOW + 50; the refresh fails; the old one is still valid.
    let served = r
        .current(NOW + 60, 0.5)
        .await
        .expect("the cached credential");
    assert!(Arc::ptr_eq(&first.upstream, &served.upstream));
    assert_eq!(runs(dir.path()), 2);
    assert!(
        matches!(served.refresh_failed, Some(Error::Exec { .. })),
        "the failure is reported with it: {served:?}"
    );
    // Within the backoff: served without a run, still saying why.
    let again = r.current(NOW + 60, 0.5).await.unwrap();
    assert_eq!(again.refresh_failed, served.refresh_failed);
    assert_eq!(runs(dir.path()), 2);
    // Expired: no credential to serve, the error is the answer.
    assert!(r.current(NOW + 100, 0.5).await.is_err());
    assert_eq!(runs(dir.path()), 3);
}

/// Logs its run, then answers only once the file `go` exists: the test
/// decides when the executable finishes, with no timing involved.
const GATED: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat > /dev/null
echo run >> "$dir/runs"
while [ ! -e "$dir/go" ]; do sleep 0.02; done
echo '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"100s","auth":{"r.example":{"username":"u","password":"p"}}}'
"#;

#[tokio::test]
async fn a_caller_that_gives_up_does_not_cancel_the_refresh_others_wait_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider");
    std::fs::write(&path, GATED).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec: ExecSource =
        serde_json::from_value(serde_json::json!({"command": "provider"})).unwrap();
    let all = Refreshers::default();
    let r = all.get("corp", &spec, "r.example", Some(dir.path()));

    // Admission's budget: the first caller stops waiting after 1 s.
    let first = tokio::time::timeout(std::time::Duration::from_secs(1), r.current(NOW, 0.5)).await;
    assert!(first.is_err(), "the executable cannot have answered yet");

    // The run goes on; the next caller gets its outcome, not a second run.
    std::fs::write(dir.path().join("go"), "").unwrap();
    let served = r.current(NOW, 0.5).await.expect("the refresh completed");
    assert_eq!(served.upstream.expires_at, NOW + 100);
    assert_eq!(runs(dir.path()), 1, "one run served both callers");
}
