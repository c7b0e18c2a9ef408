//! An `ecr` credential served with the process's own AWS identity (IRSA
//! against moto's STS and ECR on loopback): the controller syncs the token
//! on the operator's opt-in and reports the source's health, the broker
//! hands it out on exchange, and no token reaches a log line, an Event or
//! a status.
//!
//! One test function: the AWS SDK reads its identity from the process
//! environment, which is set before anything in this binary asks.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams};
use pullbroker_core::policy::RegistryCredential;
use pullbroker_testenv::aws::AwsRelay;
use pullbroker_testenv::logs::capture_all;
use serde_json::json;
use support::*;

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

async fn ready(c: &Cluster) -> Option<(String, String, String)> {
    let cred = Api::<RegistryCredential>::all(c.client.clone())
        .get("ecr")
        .await
        .ok()?;
    let cond = cred.status?.conditions.into_iter().next()?;
    Some((cond.status, cond.reason, cond.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecr_token_is_synced_exchanged_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let relay = AwsRelay::start().expect("moto");
    let token_file = AwsRelay::web_identity_token_file(dir.path());
    for (k, v) in [
        ("AWS_ENDPOINT_URL", relay.url()),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/pullbroker".into(),
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        (
            "AWS_CONFIG_FILE",
            dir.path().join("none").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("none").display().to_string(),
        ),
    ] {
        std::env::set_var(k, v);
    }
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        std::env::remove_var(k);
    }
    // Debug everywhere, the AWS SDK included: its logs must not carry a token either.
    let capture = capture_all(
        "debug,pullbroker_controller=trace,pullbroker_credentials=trace,pullbroker_broker=trace",
    );

    let c = Cluster::start(REGISTRY, None).await;
    c.create::<RegistryCredential>(
        json!({"apiVersion": "pullbroker.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "ecr"}, "spec": {"registries": [HOST], "source": {"ecr": {}}}}),
    )
    .await;
    c.tenant("team-a", &[("app", &[])]).await;
    c.grant(
        "ecr",
        json!({"credential": "ecr", "subjects": {"namespaces": ["team-a"], "serviceAccounts": ["app"]},
               "repositories": ["**"], "purposes": ["sync", "pull"], "allowUpstreamCopy": true}),
    )
    .await;
    let replica = Replica::start(c.controller.clone(), settings("r1"));

    // Sync: the copy holds the ECR user and the token moto issued.
    let secret = eventually("synced", WAIT, || async {
        c.secret("team-a", "pullbroker-ecr").await
    })
    .await;
    let (user, password) = credential_in(&secret, HOST);
    assert_eq!(user, "AWS");
    assert!(relay.tokens().contains(&password), "a token ECR issued");
    assert!(relay
        .calls()
        .iter()
        .any(|c| c == "AssumeRoleWithWebIdentity"));
    let (status, reason, _) = eventually("Ready", WAIT, || async {
        ready(&c).await.filter(|r| r.0 == "True")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "SourceAvailable")
    );

    // Exchange: the broker asks with its own identity and hands the token out.
    let file = dir.path().join("broker.yaml");
    std::fs::write(&file, format!(
        "apiVersion: pullbroker.dev/v1alpha1\nkind: BrokerConfig\nmetadata: {{name: b}}\nspec:\n  insecurePlainHttp: true\n  serviceAccountIssuer: {{issuer: https://kubernetes.default.svc, discoveryUrl: {}}}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: ecr}}\nspec: {{registries: ['{HOST}'], source: {{ecr: {{}}}}}}\n---\napiVersion: pullbroker.dev/v1alpha1\nkind: PullGrant\nmetadata: {{name: g}}\nspec: {{credential: ecr, subjects: {{namespaces: [team-a], serviceAccounts: [app]}}, repositories: ['team-a/**'], purposes: [pull], ttl: 10m}}\n",
        c.fake.url)).unwrap();
    let (_broker, url, _server) = serve_broker(&file).await;
    let token = token(&c, "team-a", "app").await;
    let (code, body) = exchange(&url, &token, &format!("{HOST}/team-a/app:1")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["username"], "AWS");
    assert!(relay
        .tokens()
        .contains(&body["password"].as_str().unwrap().to_string()));
    // The grant still decides: another team's repository is denied.
    let (code, _) = exchange(&url, &token, &format!("{HOST}/team-b/app:1")).await;
    assert_eq!(code, 403);

    // A role ECR refuses: the status says so, naming AWS's reason.
    relay.set(|s| s.deny_ecr = true);
    Api::<RegistryCredential>::all(c.client.clone())
        .patch(
            "ecr",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"ecr": {"roleArn": "arn:aws:iam::123456789012:role/no-ecr"}}}})),
        )
        .await
        .unwrap();
    let (_, reason, message) = eventually("refusal in status", WAIT, || async {
        ready(&c).await.filter(|r| r.0 == "False")
    })
    .await;
    assert_eq!(reason, "SourceUnavailable");
    assert!(message.contains("AccessDeniedException"), "{message}");
    replica.stop().await;

    // The canary: no token, raw or as `auth`, anywhere we write.
    let mut observed = capture.text();
    for e in Api::<Event>::all(c.client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
    {
        observed.push_str(&serde_json::to_string(&e).unwrap());
    }
    observed.push_str(&message);
    assert!(
        observed.contains("credential source refreshed"),
        "logs were captured"
    );
    let tokens = relay.tokens();
    assert!(!tokens.is_empty());
    for t in tokens {
        assert!(!observed.contains(&t), "an ECR token leaked");
        let auth = STANDARD.encode(format!("AWS:{t}"));
        assert!(
            !observed.contains(&auth[..auth.len() - 4]),
            "an ECR token leaked as auth"
        );
    }
}
