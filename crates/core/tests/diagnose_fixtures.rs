//! Pull-failure classification against what a real kubelet 1.32 with
//! containerd reported for each kind of failure (copied from
//! `../shared/fixtures/kubelet-events-v1.32/`): every container waiting
//! message and every `Failed` Event of each case.

use pullbroker_core::diagnose::{classify, PullFailure};
use serde_json::Value;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kubelet-events-v1.32"
);

/// The messages of one case that say why: waiting messages and `Failed`
/// Event notes, less kubelet's bare "Error: ErrImagePull"-style summaries.
fn messages(case: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/{case}.json")).unwrap())
            .unwrap();
    let mut out: Vec<String> = Vec::new();
    for pod in v["pods"].as_array().into_iter().flatten() {
        for cs in pod["containerStatuses"].as_array().into_iter().flatten() {
            if let Some(m) = cs["state"]["waiting"]["message"].as_str() {
                out.push(m.to_string());
            }
        }
    }
    for e in v["events"].as_array().into_iter().flatten() {
        let note = e["message"]
            .as_str()
            .or(e["note"].as_str())
            .unwrap_or_default();
        if e["reason"] == "Failed" && !note.starts_with("Error: ") {
            out.push(note.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_recorded_failure_is_classified_as_what_it_was() {
    for (case, want) in [
        ("a-unauthorized", PullFailure::Unauthorized),
        ("b-wrong-password", PullFailure::Unauthorized),
        ("d-unknown-tag", PullFailure::NotFound),
        ("e-unknown-repo", PullFailure::NotFound),
        ("f-conn-refused", PullFailure::Refused),
        ("g-unknown-ca", PullFailure::Tls),
        ("h-invalid-name", PullFailure::InvalidImageName),
        ("i-sa-race", PullFailure::Unauthorized),
        ("i2-sa-race-ifnotpresent", PullFailure::Unauthorized),
        ("j-not-runnable", PullFailure::NotAPullFailure),
    ] {
        let messages = messages(case);
        assert!(!messages.is_empty(), "{case}: no message in the fixture");
        for m in &messages {
            // Back-off lines repeat the last error after "ErrImagePull: ".
            if m.starts_with("Back-off pulling image") && !m.contains(": ErrImagePull: ") {
                continue;
            }
            assert_eq!(classify(m), want, "{case}: {m}");
        }
    }
}

#[test]
fn a_successful_pull_has_no_failure_to_classify() {
    for case in ["c-right-password", "k-credential-provider"] {
        let failed: Vec<String> = messages(case)
            .into_iter()
            .filter(|m| classify(m) != PullFailure::Unknown)
            .collect();
        assert!(failed.is_empty(), "{case}: {failed:?}");
    }
}
