//! Decisions and the policy-bypass suite at the core level (no I/O).

use std::collections::BTreeMap;

use pullbroker_core::policy::{
    Named, Policy, PullGrantSpec, Purpose, RegistryCredentialSpec, Request, Subject, Target,
};

fn policy() -> Policy {
    let creds: Vec<Named<RegistryCredentialSpec>> = vec![
        named("corp", "registries: [registry.corp.example, '*.mirror.corp.example:5000']\nsource: {tokenIssuer: {signingKeySecretRef: {name: k}, service: reg, issuer: pb}}"),
        named("hub", "registries: [docker.io]\nsource: {secretRef: {name: hub-auth}}"),
    ];
    let grants: Vec<Named<PullGrantSpec>> = vec![
        named("team-a", "credential: corp\nsubjects: {namespaces: [team-a, team-a-*], serviceAccounts: ['*']}\nrepositories: [apps/team-a/**]\npurposes: [pull, resolve, sync]\nttl: 10m\nresolvers: [knative-serving/controller]"),
        named("tenant-b", "credential: corp\nsubjects: {namespaceSelector: {matchLabels: {tenant: b}}, serviceAccounts: [builder]}\nrepositories: ['apps/team-b/*']\npurposes: [pull]"),
        named("hub-readonly", "credential: hub\nsubjects: {namespaces: ['*'], serviceAccounts: [default]}\nrepositories: [library/*]\npurposes: [resolve]"),
    ];
    let labels = BTreeMap::from([
        (
            "b-prod".to_string(),
            BTreeMap::from([("tenant".to_string(), "b".to_string())]),
        ),
        (
            "team-a".to_string(),
            BTreeMap::from([("tenant".to_string(), "a".to_string())]),
        ),
    ]);
    let (p, problems) = Policy::new(creds, grants, labels);
    assert!(problems.is_empty(), "{problems:?}");
    p
}

fn named<T: serde::de::DeserializeOwned>(name: &str, yaml: &str) -> Named<T> {
    Named {
        name: name.to_string(),
        spec: serde_saphyr::from_str(yaml).unwrap(),
    }
}

fn ask(
    p: &Policy,
    ns: &str,
    sa: &str,
    purpose: Purpose,
    registry: &str,
    repo: &str,
) -> pullbroker_core::policy::Decision {
    let subject = Subject::new(ns, sa);
    p.decide(&Request {
        subject: &subject,
        purpose,
        target: Target::Image {
            registry,
            repository: repo,
        },
        on_behalf_of: None,
        narrowed_to: None,
    })
}

#[test]
fn allows_with_grant_and_ttl() {
    let p = policy();
    let d = ask(
        &p,
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    assert!(d.is_allowed(), "{}", d.reason());
    assert_eq!(d.allow().map(|a| a.grant.as_str()), Some("team-a"));
    assert_eq!(d.allow().map(|a| a.credential.as_str()), Some("corp"));
    assert_eq!(d.allow().unwrap().ttl.as_secs(), 600);
    assert!(ask(
        &p,
        "team-a-dev",
        "x",
        Purpose::Pull,
        "eu.mirror.corp.example:5000",
        "apps/team-a/web/api"
    )
    .is_allowed());
    assert!(ask(
        &p,
        "b-prod",
        "builder",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b/tool"
    )
    .is_allowed());
    assert!(ask(
        &p,
        "anything",
        "default",
        Purpose::Resolve,
        "docker.io",
        "library/nginx"
    )
    .is_allowed());
}

#[test]
fn default_deny_with_reasons() {
    let p = policy();
    let d = ask(
        &p,
        "team-c",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    assert!(!d.is_allowed());
    assert!(
        d.reason()
            .contains("team-a: namespace team-c is not a subject"),
        "{}",
        d.reason()
    );
    let d = ask(
        &p,
        "team-a",
        "web",
        Purpose::Pull,
        "unknown.example",
        "apps/team-a/web",
    );
    assert!(
        d.reason().contains("no grant covers this registry"),
        "{}",
        d.reason()
    );
    let d = ask(
        &p,
        "x",
        "default",
        Purpose::Pull,
        "docker.io",
        "library/nginx",
    );
    assert!(
        d.reason()
            .contains("hub-readonly: purpose pull is not granted"),
        "{}",
        d.reason()
    );
    let d = ask(
        &p,
        "b-prod",
        "default",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b/tool",
    );
    assert!(
        d.reason()
            .contains("service account default is not a subject"),
        "{}",
        d.reason()
    );
    assert!(!Policy::default()
        .decide(&Request {
            subject: &Subject::new("a", "b"),
            purpose: Purpose::Pull,
            target: Target::Image {
                registry: "r",
                repository: "x"
            },
            on_behalf_of: None,
            narrowed_to: None,
        })
        .is_allowed());
}

/// Attempts to get more than granted. Every one must be denied.
#[test]
fn bypass_suite() {
    let p = policy();
    let denied = |ns: &str, sa: &str, purpose: Purpose, registry: &str, repo: &str| {
        let d = ask(&p, ns, sa, purpose, registry, repo);
        assert!(
            !d.is_allowed(),
            "BYPASS: {ns}/{sa} {purpose} {registry}/{repo} allowed by {:?}",
            d.allow().map(|a| &a.grant)
        );
    };
    // Namespace name prefix tricks.
    denied(
        "team-ab",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    denied(
        "team-a.evil",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    denied(
        "xteam-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    denied(
        "team",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a/web",
    );
    // Repository glob edges.
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-ab/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-a-evil/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example",
        "apps",
    );
    denied(
        "b-prod",
        "builder",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b/tool/nested",
    );
    denied(
        "b-prod",
        "builder",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b",
    );
    // Registry lookalikes.
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example.evil.com",
        "apps/team-a/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "registry.corp.example:5000",
        "apps/team-a/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "a.b.mirror.corp.example:5000",
        "apps/team-a/web",
    );
    denied(
        "team-a",
        "web",
        Purpose::Pull,
        "mirror.corp.example:5000",
        "apps/team-a/web",
    );
    // Purpose widening.
    denied(
        "b-prod",
        "builder",
        Purpose::Sync,
        "registry.corp.example",
        "apps/team-b/tool",
    );
    denied("ns", "default", Purpose::Pull, "docker.io", "library/nginx");
    // Labels come from the operator's namespace store, never from the caller:
    // an unknown namespace has no labels.
    denied(
        "b-staging",
        "builder",
        Purpose::Pull,
        "registry.corp.example",
        "apps/team-b/tool",
    );
}

#[test]
fn annotations_only_narrow() {
    let p = policy();
    let subject = Subject::new("team-a", "web");
    let ask = |narrow: &[String], repo: &str| {
        p.decide(&Request {
            subject: &subject,
            purpose: Purpose::Pull,
            target: Target::Image {
                registry: "registry.corp.example",
                repository: repo,
            },
            on_behalf_of: None,
            narrowed_to: Some(narrow),
        })
    };
    // A self-granting annotation (asking for everything) gives nothing extra.
    let everything = vec!["**".to_string()];
    assert!(!ask(&everything, "apps/team-b/web").is_allowed());
    assert!(ask(&everything, "apps/team-a/web").is_allowed());
    // A narrowing annotation removes what the grant allowed.
    let narrow = vec!["apps/team-a/web".to_string()];
    assert!(ask(&narrow, "apps/team-a/web").is_allowed());
    let d = ask(&narrow, "apps/team-a/worker");
    assert!(
        !d.is_allowed() && d.reason().contains("annotation"),
        "{}",
        d.reason()
    );
}

#[test]
fn resolve_on_behalf_requires_being_a_listed_resolver() {
    let p = policy();
    let controller = Subject::new("knative-serving", "controller");
    let on_behalf = |caller: &Subject, ns: &str, purpose: Purpose, repo: &str| {
        p.decide(&Request {
            subject: caller,
            purpose,
            target: Target::Image {
                registry: "registry.corp.example",
                repository: repo,
            },
            on_behalf_of: Some(ns),
            narrowed_to: None,
        })
    };
    assert!(on_behalf(&controller, "team-a", Purpose::Resolve, "apps/team-a/web").is_allowed());
    // Confused deputy: a namespace the controller is not granted for.
    let d = on_behalf(&controller, "b-prod", Purpose::Resolve, "apps/team-b/tool");
    assert!(!d.is_allowed(), "{}", d.reason());
    // Right namespace, someone else's repository.
    assert!(!on_behalf(&controller, "team-a", Purpose::Resolve, "apps/team-b/tool").is_allowed());
    // Another service account in the controller's namespace.
    assert!(!on_behalf(
        &Subject::new("knative-serving", "webhook"),
        "team-a",
        Purpose::Resolve,
        "apps/team-a/web"
    )
    .is_allowed());
    // A workload in the subject namespace is not a resolver for others.
    assert!(!on_behalf(
        &Subject::new("team-a", "web"),
        "team-a",
        Purpose::Resolve,
        "apps/team-a/web"
    )
    .is_allowed());
    // On-behalf pulls are not a thing.
    let d = on_behalf(&controller, "team-a", Purpose::Pull, "apps/team-a/web");
    assert!(!d.is_allowed() && d.reason().contains("only possible for resolve"));
}

#[test]
fn invalid_documents_are_left_out_and_reported() {
    let creds = vec![named::<RegistryCredentialSpec>(
        "c",
        "registries: [r.io]\nsource: {secretRef: {name: s}}",
    )];
    let grants = vec![
        named::<PullGrantSpec>("ok", "credential: c\nsubjects: {namespaces: [a], serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [pull]"),
        named::<PullGrantSpec>("dangling", "credential: nope\nsubjects: {namespaces: [a], serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [pull]"),
        named::<PullGrantSpec>("bad-ttl", "credential: c\nsubjects: {namespaces: ['*'], serviceAccounts: ['*']}\nrepositories: ['**']\npurposes: [pull]\nttl: 99h"),
    ];
    let (p, problems) = Policy::new(creds, grants, BTreeMap::new());
    assert_eq!(p.grants().len(), 1);
    assert_eq!(problems.len(), 2, "{problems:?}");
    // The invalid wide grant did not widen anything.
    assert!(!ask(&p, "b", "x", Purpose::Pull, "r.io", "x").is_allowed());
}

#[test]
fn subject_usernames() {
    assert_eq!(
        Subject::parse_username("system:serviceaccount:team-a:app").unwrap(),
        Subject::new("team-a", "app")
    );
    for bad in [
        "system:serviceaccount:team-a",
        "system:serviceaccount::app",
        "system:node:n1",
        "system:serviceaccount:a:b:c",
        "alice",
    ] {
        assert!(Subject::parse_username(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_whole_namespace_holds_only_sync_credentials() {
    let p = policy();
    let ask_ns = |ns: &str, purpose, repo: &str| {
        let subject = Subject::namespace(ns);
        p.decide(&Request {
            subject: &subject,
            purpose,
            target: Target::Image {
                registry: "registry.corp.example",
                repository: repo,
            },
            on_behalf_of: None,
            narrowed_to: None,
        })
    };
    let d = ask_ns("team-a", Purpose::Sync, "apps/team-a/web");
    assert!(d.is_allowed(), "{}", d.reason());
    assert_eq!(d.allow().map(|a| a.grant.as_str()), Some("team-a"));
    // Namespace-wide holds nothing but sync, and only where a grant syncs.
    for purpose in [Purpose::Pull, Purpose::Resolve] {
        let d = ask_ns("team-a", purpose, "apps/team-a/web");
        assert!(!d.is_allowed());
        assert!(
            d.reason().contains("whole namespace may only hold sync"),
            "{}",
            d.reason()
        );
    }
    assert!(!ask_ns("team-a", Purpose::Sync, "apps/team-b/web").is_allowed());
    let other = ask_ns("b-prod", Purpose::Sync, "apps/team-b/x");
    assert!(!other.is_allowed(), "tenant-b has no sync purpose");
    assert!(
        other.reason().contains("system:serviceaccounts:b-prod"),
        "{}",
        other.reason()
    );
}
