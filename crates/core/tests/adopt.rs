//! `adopt::plan` on small clusters, one messy case each: the credentials and
//! grants it writes, the proof, the notes and the clean-up order.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use pullbroker_core::adopt::{self, Inputs, Options, Plan, Step};
use pullbroker_core::audit::{AccountInfo, PodInfo, SecretInfo, TYPE_DOCKERCFG};
use pullbroker_core::policy::model::Purpose;
use serde_json::json;

const REG: &str = "registry.corp.example";

fn secret(ns: &str, name: &str, created: i64, auths: serde_json::Value) -> SecretInfo {
    SecretInfo {
        namespace: ns.into(),
        name: name.into(),
        type_: "kubernetes.io/dockerconfigjson".into(),
        created: Some(created),
        config: Some(json!({ "auths": auths }).to_string().into_bytes()),
        ..Default::default()
    }
}

fn basic(user: &str, password: &str) -> serde_json::Value {
    json!({"username": user, "password": password})
}

fn pod(ns: &str, name: &str, sa: &str, images: &[&str], secrets: &[&str]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        service_account: sa.into(),
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        images: images.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn account(ns: &str, name: &str, secrets: &[&str]) -> AccountInfo {
    AccountInfo {
        namespace: ns.into(),
        name: name.into(),
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
    }
}

fn run(secrets: &[SecretInfo], accounts: &[AccountInfo], pods: &[PodInfo], sync: bool) -> Plan {
    let resolving = BTreeSet::from(["knative".to_string()]);
    adopt::plan(&Inputs {
        secrets,
        accounts,
        pods,
        policy: None,
        resolving_namespaces: &resolving,
        options: Options {
            system_namespace: "pullbroker-system".into(),
            sync,
        },
    })
}

fn codes(plan: &Plan) -> BTreeSet<&str> {
    plan.notes.iter().map(|n| n.code).collect()
}

#[test]
fn copies_become_one_credential_and_a_grant_per_shape_of_use() {
    let mut secrets = Vec::new();
    let mut accounts = Vec::new();
    let mut pods = Vec::new();
    for ns in ["a", "b", "c", "knative"] {
        secrets.push(secret(ns, "regcred", 100, json!({REG: basic("bot", "pw")})));
        accounts.push(account(ns, "default", &["regcred"]));
        pods.push(pod(
            ns,
            "web",
            "default",
            &[&format!("{REG}/apps/web:1"), "nginx:1"],
            &["regcred"],
        ));
    }
    // c's pod uses another service account and repository.
    pods.push(pod(
        "c",
        "job",
        "batch",
        &[&format!("{REG}/apps/batch:2")],
        &["regcred"],
    ));
    // A namespace without a copy.
    pods.push(pod(
        "d",
        "web",
        "default",
        &[&format!("{REG}/apps/web:1")],
        &[],
    ));
    let plan = run(&secrets, &accounts, &pods, false);
    assert!(plan.is_safe(), "{:?}", plan.proof);
    assert_eq!(plan.proof.checked, 5, "one per pod pulling from {REG}");
    assert_eq!(plan.credentials.len(), 1);
    let c = &plan.credentials[0];
    assert_eq!(c.name, "regcred");
    assert_eq!(c.spec.registries, vec![REG.to_string()]);
    assert_eq!(c.copies.len(), 4);
    let pw = c.config_json_exposing_secrets();
    assert!(pw.contains("\"pw\""), "the central secret holds the value");
    assert!(!serde_json::to_string(&plan).unwrap().contains("\"pw\""));

    let grants: BTreeMap<&str, _> = plan
        .grants
        .iter()
        .map(|g| (g.name.as_str(), &g.spec))
        .collect();
    assert_eq!(grants.len(), 3, "{grants:#?}");
    type Shape = (Vec<String>, Vec<String>, Vec<String>, Vec<Purpose>);
    let shapes: BTreeSet<Shape> = grants
        .values()
        .map(|g| {
            (
                g.subjects.namespaces.clone(),
                g.subjects.service_accounts.clone(),
                g.repositories.clone(),
                g.purposes.clone(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(shapes.contains(&(
        s(&["a", "b"]),
        s(&["default"]),
        s(&["apps/web"]),
        vec![Purpose::Pull]
    )));
    assert!(shapes.contains(&(
        s(&["c"]),
        s(&["batch", "default"]),
        s(&["apps/batch", "apps/web"]),
        vec![Purpose::Pull]
    )));
    assert!(shapes.contains(&(
        s(&["knative"]),
        s(&["default"]),
        s(&["apps/web"]),
        vec![Purpose::Pull, Purpose::Resolve]
    )));
    assert!(grants.values().all(|g| !g.allow_upstream_copy));

    // Order: apply, wait, account entries, pods, deletions.
    let rank = |s: &Step| match s {
        Step::Apply { .. } => 0,
        Step::WaitReady { .. } => 1,
        Step::RemoveAccountEntry { .. } => 2,
        Step::RecreatePod { .. } => 3,
        Step::DeleteSecret { .. } => 4,
    };
    let ranks: Vec<i32> = plan.cleanup.iter().map(rank).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    assert_eq!(ranks.iter().filter(|r| **r == 2).count(), 4);
    assert_eq!(ranks.iter().filter(|r| **r == 3).count(), 5);
    assert_eq!(ranks.iter().filter(|r| **r == 4).count(), 4);
}

#[test]
fn sync_mode_grants_sync_with_the_upstream_copy_flagged() {
    let secrets = [
        secret("a", "regcred", 1, json!({REG: basic("bot", "pw")})),
        secret("b", "regcred", 1, json!({REG: basic("bot", "pw")})),
    ];
    let pods = [
        pod("a", "p", "default", &[&format!("{REG}/x:1")], &["regcred"]),
        pod("b", "p", "default", &[&format!("{REG}/x:1")], &["regcred"]),
    ];
    let plan = run(&secrets, &[], &pods, true);
    assert!(plan.is_safe());
    let g = &plan.grants[0].spec;
    assert_eq!(g.purposes, vec![Purpose::Pull, Purpose::Sync]);
    assert!(g.allow_upstream_copy);
    assert!(codes(&plan).contains("adopt.sync-copy"));
}

#[test]
fn a_rotation_that_reached_some_copies_gives_the_newest_value_the_first_name() {
    let secrets = [
        secret("a", "regcred", 100, json!({REG: basic("bot", "old")})),
        secret("b", "regcred", 100, json!({REG: basic("bot", "old")})),
        secret("c", "regcred", 500, json!({REG: basic("bot", "new")})),
    ];
    let pods: Vec<PodInfo> = ["a", "b", "c"]
        .iter()
        .map(|ns| pod(ns, "p", "default", &[&format!("{REG}/x:1")], &["regcred"]))
        .collect();
    let plan = run(&secrets, &[], &pods, false);
    assert!(plan.is_safe());
    let names: Vec<(&str, usize)> = plan
        .credentials
        .iter()
        .map(|c| (c.name.as_str(), c.rotation_rank))
        .collect();
    assert_eq!(names, vec![("regcred", 0), ("regcred-previous", 1)]);
    assert!(plan.credentials[0]
        .config_json_exposing_secrets()
        .contains("new"));
    assert_eq!(plan.credentials[0].copies[0].namespace, "c");
    let rotated = plan
        .notes
        .iter()
        .find(|n| n.code == "adopt.rotated")
        .unwrap();
    assert_eq!(
        rotated.objects,
        vec!["Secret a/regcred", "Secret b/regcred"]
    );
    // The newest value's grant sorts first, so it wins where both apply.
    let mut names: Vec<&str> = plan.grants.iter().map(|g| g.name.as_str()).collect();
    let sorted = {
        let mut s = names.clone();
        s.sort();
        s
    };
    assert_eq!(names[0], "regcred");
    names.sort();
    assert_eq!(names, sorted);
}

#[test]
fn legacy_multi_registry_unused_partial_and_taken_names() {
    let legacy = |ns: &str| SecretInfo {
        namespace: ns.into(),
        name: "old".into(),
        type_: TYPE_DOCKERCFG.into(),
        created: Some(1),
        config: Some(
            json!({REG: {"auth": base64::engine::general_purpose::STANDARD.encode("legacy:pw0")}})
                .to_string()
                .into_bytes(),
        ),
        ..Default::default()
    };
    let multi = |ns: &str| {
        secret(
            ns,
            "multi",
            1,
            json!({"a.example": basic("u", "p1"), "b.example": basic("u", "p1")}),
        )
    };
    let secrets = vec![
        legacy("x"),
        legacy("y"),
        multi("x"),
        multi("y"),
        // An unused copy pair.
        secret("x", "stale", 1, json!({"c.example": basic("s", "p2")})),
        secret("y", "stale", 1, json!({"c.example": basic("s", "p2")})),
        // A secret with a copied value and one of its own: kept.
        secret(
            "x",
            "mixed",
            1,
            json!({"d.example": basic("m", "p3"), "e.example": basic("own", "p4")}),
        ),
        secret("y", "mixed2", 1, json!({"d.example": basic("m", "p3")})),
        // Taken name in the system namespace.
        secret(
            "pullbroker-system",
            "multi",
            1,
            json!({"z.example": basic("z", "z")}),
        ),
    ];
    let pods = vec![
        pod(
            "x",
            "p",
            "default",
            &[&format!("{REG}/x:1"), "a.example/app:1", "d.example/app:1"],
            &["old", "multi", "stale", "mixed"],
        ),
        pod(
            "y",
            "p",
            "default",
            &[&format!("{REG}/x:1"), "a.example/app:1", "d.example/app:1"],
            &["old", "multi", "mixed2"],
        ),
    ];
    let plan = run(&secrets, &[], &pods, false);
    assert!(plan.is_safe(), "{:?}", plan.proof);
    let by_name: BTreeMap<&str, &adopt::PlannedCredential> = plan
        .credentials
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        vec!["mixed", "multi-2", "old"]
    );
    // The multi-registry credential keeps both entries, and covers the registry pods use.
    assert_eq!(by_name["multi-2"].spec.registries, vec!["a.example"]);
    let multi_json = by_name["multi-2"].config_json_exposing_secrets();
    assert!(multi_json.contains("a.example") && multi_json.contains("b.example"));
    // The legacy copy is written as a dockerconfigjson.
    assert!(by_name["old"]
        .config_json_exposing_secrets()
        .starts_with("{\"auths\""));
    let c = codes(&plan);
    for code in [
        "adopt.legacy",
        "adopt.multi-registry",
        "adopt.unused",
        "adopt.renamed",
        "adopt.partial",
    ] {
        assert!(c.contains(code), "{code} missing from {c:?}");
    }
    let deleted: BTreeSet<String> = plan
        .cleanup
        .iter()
        .filter_map(|s| match s {
            Step::DeleteSecret { secret, .. } => Some(secret.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        deleted.contains("x/stale") && deleted.contains("x/old") && deleted.contains("y/mixed2")
    );
    assert!(
        !deleted.contains("x/mixed"),
        "it holds a credential of its own"
    );
    assert!(!plan
        .credentials
        .iter()
        .any(|c| c.spec.registries.contains(&"c.example".to_string())));
}

#[test]
fn many_sibling_repositories_become_one_component_glob() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        adopt::repository_globs(&set(&["apps/a", "apps/b"])),
        vec!["apps/a", "apps/b"]
    );
    assert_eq!(
        adopt::repository_globs(&set(&["apps/a", "apps/b", "apps/c", "tools/x", "top"])),
        vec!["apps/*", "tools/x", "top"]
    );
    // Top-level names never collapse to `*`.
    assert_eq!(
        adopt::repository_globs(&set(&["a", "b", "c"])),
        vec!["a", "b", "c"]
    );
}

#[test]
fn a_copy_in_one_namespace_only_is_not_adopted() {
    let secrets = [secret("a", "own", 1, json!({REG: basic("bot", "pw")}))];
    let pods = [pod("a", "p", "default", &[&format!("{REG}/x:1")], &["own"])];
    let plan = run(&secrets, &[], &pods, false);
    assert!(plan.credentials.is_empty() && plan.grants.is_empty() && plan.cleanup.is_empty());
}

#[test]
fn a_second_run_reuses_its_own_names_and_avoids_everyone_elses() {
    use pullbroker_core::policy::model::{
        CredentialSource, PullGrantSpec, RegistryCredentialSpec, SecretRef, Subjects,
    };
    use pullbroker_core::policy::{Named, Policy};
    let secrets = vec![
        secret("a", "regcred", 1, json!({REG: basic("bot", "pw")})),
        secret("b", "regcred", 1, json!({REG: basic("bot", "pw")})),
        // What the first run applied: the central copy of the same value.
        secret(
            "pullbroker-system",
            "regcred",
            2,
            json!({REG: basic("bot", "pw")}),
        ),
    ];
    let pods = [
        pod("a", "p", "default", &[&format!("{REG}/x:1")], &["regcred"]),
        pod("b", "p", "default", &[&format!("{REG}/x:1")], &["regcred"]),
    ];
    let cred = |secret: &str| RegistryCredentialSpec {
        registries: vec![REG.into()],
        source: CredentialSource {
            secret_ref: Some(SecretRef {
                name: secret.into(),
            }),
            ..Default::default()
        },
        transport: None,
    };
    let grant = |credential: &str| PullGrantSpec {
        credential: credential.into(),
        subjects: Subjects {
            namespaces: vec!["a".into(), "b".into()],
            namespace_selector: None,
            service_accounts: vec!["default".into()],
        },
        repositories: vec!["x".into()],
        purposes: vec![Purpose::Pull],
        ttl: None,
        resolvers: vec![],
        allow_upstream_copy: false,
        allow_static_copy: false,
        admission: None,
    };
    let plan_with = |policy: &Policy| {
        adopt::plan(&Inputs {
            secrets: &secrets,
            accounts: &[],
            pods: &pods,
            policy: Some(policy),
            resolving_namespaces: &BTreeSet::new(),
            options: Options {
                system_namespace: "pullbroker-system".into(),
                sync: false,
            },
        })
    };
    // Its own: same names, and the central Secret is not a copy to delete.
    let (ours, problems) = Policy::new(
        vec![Named {
            name: "regcred".into(),
            spec: cred("regcred"),
        }],
        vec![Named {
            name: "regcred".into(),
            spec: grant("regcred"),
        }],
        BTreeMap::new(),
    );
    assert!(problems.is_empty());
    let plan = plan_with(&ours);
    assert!(plan.is_safe(), "{:?}", plan.proof);
    assert_eq!(plan.credentials[0].name, "regcred");
    assert_eq!(plan.grants[0].name, "regcred");
    assert!(!plan.cleanup.iter().any(|s| matches!(s,
        Step::DeleteSecret { secret, .. } if secret.namespace == "pullbroker-system")));
    // Someone else's credential and grant of that name: new names.
    let (theirs, _) = Policy::new(
        vec![Named {
            name: "regcred".into(),
            spec: cred("other-secret"),
        }],
        vec![Named {
            name: "regcred".into(),
            spec: grant("regcred"),
        }],
        BTreeMap::new(),
    );
    let plan = plan_with(&theirs);
    assert_eq!(plan.credentials[0].name, "regcred-2");
    assert_eq!(plan.grants[0].name, "regcred-2");
    assert!(plan.is_safe());
}
