//! One decision path: sync's choice of secrets for a service account and
//! `Policy::decide` are the same question asked of the same matcher
//! (`Policy::selects`), so for any policy they agree — and no other code in
//! the workspace matches subjects on its own.

use std::collections::BTreeMap;

use proptest::prelude::*;
use pullbroker_core::policy::{Named, Policy, Purpose, Request, Subject, Target};
use pullbroker_core::sync::{secret_name, secrets_for_account};

const NAMESPACES: [&str; 5] = ["team-a", "team-b", "team-a-x", "ops", "default"];
const ACCOUNTS: [&str; 4] = ["app", "worker", "default", "web-1"];
const CREDENTIALS: [&str; 2] = ["corp", "mirror"];

fn credentials() -> Vec<Named<pullbroker_core::policy::RegistryCredentialSpec>> {
    CREDENTIALS
        .iter()
        .map(|name| Named {
            name: name.to_string(),
            spec: serde_saphyr::from_str(&format!(
                "registries: [{name}.example]\nsource: {{tokenIssuer: {{signingKeySecretRef: {{name: k}}, service: {name}, issuer: i}}}}"
            ))
            .unwrap(),
        })
        .collect()
}

/// One grant as YAML: a credential, namespace globs and/or a label selector,
/// service-account globs, purposes.
fn grant() -> impl Strategy<Value = String> {
    (
        prop::sample::select(CREDENTIALS.to_vec()),
        prop::sample::subsequence(vec!["team-*", "team-a", "ops", "*", "team-?-x"], 0..3),
        prop::option::of(prop::sample::select(vec!["blue", "green"])),
        prop::sample::subsequence(vec!["app", "*", "work*", "default", "web-?"], 1..3),
        prop::sample::subsequence(vec!["sync", "pull", "resolve"], 1..3),
    )
        .prop_map(|(credential, namespaces, tier, accounts, purposes)| {
            let selector = tier.map_or(String::new(), |t| {
                format!(", namespaceSelector: {{matchLabels: {{tier: {t}}}}}")
            });
            format!(
                "credential: {credential}\nsubjects: {{namespaces: {namespaces:?}{selector}, serviceAccounts: {accounts:?}}}\nrepositories: ['**']\npurposes: [{}]\n",
                purposes.join(", ")
            )
        })
}

fn policy(grants: &[String], tiers: &[Option<&str>]) -> Policy {
    let grants = grants
        .iter()
        .enumerate()
        .map(|(i, y)| Named {
            name: format!("g{i}"),
            spec: serde_saphyr::from_str(y).unwrap(),
        })
        .collect();
    let labels: BTreeMap<String, BTreeMap<String, String>> = NAMESPACES
        .iter()
        .zip(tiers)
        .filter_map(|(ns, tier)| {
            tier.map(|t| {
                (
                    ns.to_string(),
                    BTreeMap::from([("tier".to_string(), t.to_string())]),
                )
            })
        })
        .collect();
    // A grant with no namespace at all is invalid and left out: both paths
    // see the same policy either way.
    Policy::new(credentials(), grants, labels).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A secret of credential C is synced for an account exactly when
    /// `decide` allows that account `sync` under C.
    #[test]
    fn sync_and_decide_agree(
        grants in prop::collection::vec(grant(), 0..5),
        tiers in prop::collection::vec(prop::option::of(prop::sample::select(vec!["blue", "green"])), NAMESPACES.len()),
    ) {
        let policy = policy(&grants, &tiers);
        for ns in NAMESPACES {
            for sa in ACCOUNTS {
                let synced = secrets_for_account(&policy, ns, sa);
                let subject = Subject::new(ns, sa);
                for credential in CREDENTIALS {
                    let has_secret = policy.grants().iter().any(|g| {
                        g.spec.credential == credential && synced.contains(&secret_name(&g.name))
                    });
                    let decision = policy.decide(&Request {
                        subject: &subject,
                        purpose: Purpose::Sync,
                        target: Target::Credential { credential, repository: "apps/web" },
                        on_behalf_of: None,
                        narrowed_to: None,
                    });
                    prop_assert_eq!(
                        has_secret,
                        decision.is_allowed(),
                        "{}/{} under {}: synced {:?}, decide says {}",
                        ns, sa, credential, synced, decision.reason()
                    );
                }
            }
        }
    }
}

/// `name_matches` is how a subject glob is matched; only the policy's one
/// matcher (and the glob module itself) may call it, so no adapter or other
/// core module selects grants on its own.
#[test]
fn no_other_code_matches_subjects() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let allowed = ["core/src/policy/glob.rs", "core/src/policy/decide.rs"];
    let mut offenders = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // Only library and binary sources: tests may match as they like.
                let name = path.file_name().unwrap().to_string_lossy();
                if !matches!(name.as_ref(), "tests" | "target" | "fixtures") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains("name_matches(") && !allowed.contains(&rel.as_str()) {
                    offenders.push(rel);
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "subjects matched outside Policy::selects: {offenders:?}"
    );
}
