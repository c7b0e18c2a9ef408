//! The `ecr` source against AWS's APIs as moto serves them on loopback:
//! IRSA's `AssumeRoleWithWebIdentity` with a service-account-shaped token
//! file, a role per credential, then `GetAuthorizationToken`. The relay in
//! front of moto sets the token's expiry (moto's own is fixed in 2015) and
//! refuses on demand; the refresher is driven on the caller's clock, so no
//! test waits for a token to age.
//!
//! One test function: the AWS SDK reads its identity from the process
//! environment, which is set once, before any thread of this binary asks.

use pullbroker_core::policy::model::EcrSource;
use pullbroker_core::Reference;
use pullbroker_credentials::source::Refreshers;
use pullbroker_credentials::Error;
use pullbroker_testenv::aws::AwsRelay;

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The password the served docker config holds for `HOST`.
fn password(served: &pullbroker_credentials::source::Served) -> String {
    let image = Reference::parse(&format!("{HOST}/team-a/app:1")).unwrap();
    let entry = served.upstream.config.candidates(&image)[0];
    assert_eq!(entry.credential().username(), Some("AWS"));
    entry.credential().secret().unwrap().to_string()
}

#[test]
fn an_ecr_source_refreshes_before_expiry_and_serves_the_last_good_token() {
    let dir = tempfile::tempdir().unwrap();
    let relay = AwsRelay::start().expect("moto");
    let token_file = AwsRelay::web_identity_token_file(dir.path());
    // The identity IRSA gives a pod, and nothing else the chain could find.
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
        ("AWS_ROLE_SESSION_NAME", "pullbroker".into()),
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let refreshers = Refreshers::default();
        let spec = EcrSource {
            region: None,
            role_arn: None,
        };
        let r = refreshers.get_ecr("ecr", &spec, &[HOST.into()]).unwrap();

        // First use: the web identity is exchanged, then a token asked for.
        let t0 = unix_now();
        let first = r.current(t0, 0.5).await.expect("a token");
        assert_eq!(
            relay.calls(),
            ["AssumeRoleWithWebIdentity", "GetAuthorizationToken"]
        );
        let issued = relay.tokens();
        assert_eq!(password(&first), issued[0], "the token moto issued");
        let life = first.upstream.expires_at - t0;
        assert!((3595..=3605).contains(&life), "ECR's own expiresAt: {life}");
        assert!(!format!("{first:?}").contains(&issued[0]));

        // Before half its life: served from memory, AWS not asked.
        let again = r.current(t0 + life / 2 - 5, 0.5).await.unwrap();
        assert_eq!(password(&again), issued[0]);
        assert_eq!(relay.calls().len(), 2);

        // Past half its life, well before it expires: refreshed, with the
        // AWS credentials the SDK cached (no second STS call).
        let t1 = t0 + life / 2 + 5;
        let second = r.current(t1, 0.5).await.unwrap();
        assert_eq!(relay.tokens().len(), 2);
        assert_eq!(password(&second), relay.tokens()[1]);
        assert!(second.refresh_failed.is_none());
        assert_eq!(
            relay.calls(),
            [
                "AssumeRoleWithWebIdentity",
                "GetAuthorizationToken",
                "GetAuthorizationToken"
            ]
        );

        // The role loses ecr:GetAuthorizationToken: the valid token is
        // still served, saying why it was not renewed.
        relay.set(|s| s.deny_ecr = true);
        let expires = second.upstream.expires_at;
        let due = t1 + (expires - t1) / 2 + 5;
        let stale = r.current(due, 0.5).await.unwrap();
        assert_eq!(password(&stale), relay.tokens()[1]);
        let why = stale
            .refresh_failed
            .clone()
            .expect("the failure is reported");
        assert!(
            matches!(&why, Error::Ecr { region, .. } if region == "us-east-1"),
            "{why:?}"
        );
        let text = why.to_string();
        assert!(text.contains("AccessDeniedException"), "{text}");
        for t in relay.tokens() {
            assert!(!text.contains(&t) && !format!("{why:?}").contains(&t));
        }
        // Once it has expired, nothing is served.
        let gone = r.current(expires + 1, 0.5).await.unwrap_err();
        assert!(matches!(gone, Error::Ecr { .. }), "{gone:?}");

        // Back: the next try after the backoff gets a new token.
        relay.set(|s| s.deny_ecr = false);
        let back = r.current(expires + 120, 0.5).await;
        // The relay dates tokens on the real clock; ours is ahead of it.
        assert!(
            matches!(back, Err(Error::Expired { .. })),
            "a token already expired on our clock is refused: {back:?}"
        );
        relay.set(|s| s.expires_in = Some(10 * 3600));
        let back = r.current(expires + 240, 0.5).await.unwrap();
        assert!(back.refresh_failed.is_none());
        assert_eq!(password(&back), *relay.tokens().last().unwrap());

        // moto's own date (2015): refused, not served as valid.
        relay.set(|s| s.expires_in = None);
        let other = refreshers
            .get_ecr(
                "ecr-2015",
                &EcrSource {
                    region: Some("us-east-1".into()),
                    role_arn: None,
                },
                &[HOST.into()],
            )
            .unwrap();
        let e = other.current(unix_now(), 0.5).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Expired {
                    expires_at: 1420070400
                }
            ),
            "{e:?}"
        );

        // A role of the credential's own, assumed with the broker's identity.
        relay.set(|s| s.expires_in = Some(3600));
        let before = relay.calls().len();
        let role = refreshers
            .get_ecr(
                "ecr-role",
                &EcrSource {
                    region: None,
                    role_arn: Some("arn:aws:iam::210987654321:role/pull-only".into()),
                },
                &[HOST.into()],
            )
            .unwrap();
        let served = role.current(unix_now(), 0.5).await.unwrap();
        assert_eq!(password(&served), *relay.tokens().last().unwrap());
        let calls = relay.calls()[before..].to_vec();
        assert!(calls.contains(&"AssumeRole".to_string()), "{calls:?}");
        assert_eq!(
            calls.last().map(String::as_str),
            Some("GetAuthorizationToken")
        );
    });
}
