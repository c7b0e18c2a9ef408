//! Amazon ECR registry tokens obtained with the process's own AWS identity —
//! the `ecr` credential source, so no static AWS key sits in a Secret.
//!
//! The identity is whatever the AWS SDK's default chain finds, read the way
//! every AWS SDK reads it: environment credentials, IRSA (`AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged with STS
//! `AssumeRoleWithWebIdentity`), EKS Pod Identity
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), profiles and IMDS. A credential
//! may assume a role of its own with that identity (`roleArn`). Endpoints
//! follow `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_ECR` / `_STS` (VPC or FIPS
//! endpoints) — process settings of the operator, never fields of a policy
//! document, which could otherwise send signed requests anywhere.
//!
//! The SDK is used rather than a hand-written SigV4 client because the
//! credential chain (web identity, container credentials, role chaining,
//! their caching and refresh) is the hard part, and it is exactly what the
//! SDK maintains. Its HTTPS client is built here over rustls with aws-lc-rs,
//! the TLS stack the rest of pullbroker uses.
//!
//! [`EcrToken`]'s password is a [`SecretString`]; errors carry what AWS
//! said (code and message), never a token.

use std::fmt;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::model::EcrSource;
use secrecy::SecretString;
use tokio::sync::OnceCell;

/// One ECR token source: a region and an optional role. The SDK client (and the AWS credentials it caches and renews)
/// is built on first use and kept.
pub struct Ecr {
    credential: String,
    region: String,
    role_arn: Option<String>,
    client: OnceCell<aws_sdk_ecr::Client>,
}

impl fmt::Debug for Ecr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ecr")
            .field("credential", &self.credential)
            .field("region", &self.region)
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

/// A registry token from `GetAuthorizationToken`. Debug never shows it.
pub struct EcrToken {
    /// Always `AWS` today; taken from the token itself.
    pub username: String,
    pub password: SecretString,
    /// The token's real expiry (Unix seconds), as ECR states it.
    pub expires_at: i64,
}

impl fmt::Debug for EcrToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrToken")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why no token could be had. Never holds a token or AWS secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// AWS answered with an error (`AccessDeniedException: …`,
    /// `InvalidIdentityToken: …`).
    #[error("AWS refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// No identity, no answer, or a timeout: the chain's own words.
    #[error("AWS is unreachable or no identity was found: {0}")]
    Unavailable(String),
    /// An answer without a usable token.
    #[error("ECR's answer is unusable: {0}")]
    Response(String),
}

/// Connect, attempt and whole-call bounds: a refresh fails within the exec
/// source's default 30 s, and the last good token is served meanwhile.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

impl Ecr {
    /// A source for the credential `credential` covering `registries`;
    /// fails only on a spec that [`EcrSource::region_for`] refuses.
    pub fn new(credential: &str, spec: &EcrSource, registries: &[String]) -> Result<Ecr, String> {
        Ok(Ecr {
            credential: credential.to_string(),
            region: spec.region_for(registries)?,
            role_arn: spec.role_arn.clone(),
            client: OnceCell::new(),
        })
    }

    /// The region tokens are asked in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// A fresh token. Each call asks ECR; the caller decides when (at a
    /// fraction of the previous token's lifetime).
    pub async fn token(&self) -> Result<EcrToken, Error> {
        let client = self.client.get_or_init(|| self.client()).await;
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(sdk_error)?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| Error::Response("no authorizationData".into()))?;
        let expires_at = data
            .expires_at()
            .ok_or_else(|| Error::Response("no expiresAt".into()))?
            .secs();
        let token = data
            .authorization_token()
            .ok_or_else(|| Error::Response("no authorizationToken".into()))?;
        let (username, password) = decode_token(token)?;
        Ok(EcrToken {
            username,
            password,
            expires_at,
        })
    }

    async fn client(&self) -> aws_sdk_ecr::Client {
        let base = base_config(&self.region).await;
        let mut conf = aws_sdk_ecr::config::Builder::from(&base);
        if let Some(arn) = &self.role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name(session_name(&self.credential))
                .configure(&base)
                .build()
                .await;
            conf = conf.credentials_provider(provider);
        }
        aws_sdk_ecr::Client::from_conf(conf.build())
    }
}

/// The process's AWS configuration: the default chain, the region given,
/// our HTTPS client and bounds.
async fn base_config(region: &str) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// `pullbroker-NAME`, in the characters and length STS allows, so
/// CloudTrail names the credential that assumed the role.
fn session_name(credential: &str) -> String {
    let name: String = format!("pullbroker-{credential}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    name
}

/// `base64("AWS:<password>")` into its two parts.
fn decode_token(token: &str) -> Result<(String, SecretString), Error> {
    let bad = || Error::Response("authorizationToken is not base64 of user:password".into());
    let bytes = STANDARD.decode(token.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    if user.is_empty() || password.is_empty() {
        return Err(bad());
    }
    Ok((user.to_string(), SecretString::from(password.to_string())))
}

fn sdk_error<E, R>(e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match &e {
        SdkError::ServiceError(s) => Error::Refused {
            code: s.err().code().unwrap_or("Unknown").to_string(),
            message: s.err().message().unwrap_or_default().to_string(),
        },
        _ => Error::Unavailable(DisplayErrorContext(&e).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn tokens_decode_and_never_show() {
        let (user, pw) = decode_token(&STANDARD.encode("AWS:CANARY-ecr")).unwrap();
        assert_eq!((user.as_str(), pw.expose_secret()), ("AWS", "CANARY-ecr"));
        let t = EcrToken {
            username: user,
            password: pw,
            expires_at: 1,
        };
        assert!(!format!("{t:?}").contains("CANARY"));
        for bad in [
            "not base64!".to_string(),
            STANDARD.encode("no-colon-CANARY"),
            STANDARD.encode(":CANARY"),
            STANDARD.encode("AWS:"),
            STANDARD.encode([0xff, b':', b'x']),
        ] {
            let e = decode_token(&bad).unwrap_err().to_string();
            assert!(!e.contains("CANARY"), "{e}");
        }
    }

    #[test]
    fn session_names_are_what_sts_accepts() {
        assert_eq!(session_name("ecr-prod"), "pullbroker-ecr-prod");
        let long = session_name(&"x/y".repeat(40));
        assert_eq!(long.len(), 64);
        assert!(long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)));
    }

    #[test]
    fn the_region_comes_from_the_spec_or_the_hosts() {
        let spec = EcrSource {
            region: None,
            role_arn: None,
        };
        let e = Ecr::new(
            "c",
            &spec,
            &["123456789012.dkr.ecr.ap-south-1.amazonaws.com".into()],
        )
        .unwrap();
        assert_eq!(e.region, "ap-south-1");
        assert!(Ecr::new("c", &spec, &["registry.corp".into()]).is_err());
    }
}
