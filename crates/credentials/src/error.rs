//! The crate's one error type. Messages name Secrets, keys, files and
//! commands, never their contents: no key material, token or executable's
//! output ever reaches a `Display` (they end up in statuses and logs).

use std::time::Duration;

use pullbroker_core::dockerconfig::DockerConfigError;

/// Why a credential cannot be built, minted, made or refreshed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Key or certificate material that cannot be used: `what` names it
    /// (`tls.key`, `the CA certificate`), `problem` says why.
    #[error("{what} {problem}")]
    Material { what: &'static str, problem: String },
    #[error("Secret {name:?} does not exist")]
    NoSecret { name: String },
    #[error("ConfigMap {name:?} does not exist")]
    NoConfigMap { name: String },
    #[error("Secret {name:?} has no key {key:?}")]
    NoSecretKey { name: String, key: &'static str },
    /// What a Secret holds is unusable.
    #[error("Secret {name:?}: {problem}")]
    InSecret { name: String, problem: Box<Error> },
    #[error("{0}")]
    DockerConfig(#[from] DockerConfigError),
    /// A field's value is out of its range or unreadable (durations,
    /// lifetimes, host lists); the text says which field.
    #[error("{0}")]
    Invalid(String),
    /// A duration field that does not parse; `field` names it.
    #[error("{field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: pullbroker_core::policy::model::DurationError,
    },
    /// The cryptography library refused (generating, signing).
    #[error("cannot {action}: {cause}")]
    Crypto { action: &'static str, cause: String },
    /// An exec source failed; `command` is the executable's name.
    #[error("exec source {command:?}: {problem}")]
    Exec {
        command: String,
        problem: ExecProblem,
    },
    /// An ECR source failed (AWS's code and message, never a token).
    #[error("ecr source in {region}: {problem}")]
    Ecr {
        region: String,
        problem: pullbroker_aws::Error,
    },
    /// A source's token expired before it was served (clock skew, or an
    /// upstream answering with a past expiry).
    #[error("the source's credential expired at {expires_at}, before it could be used")]
    Expired { expires_at: i64 },
}

/// Why one run of an exec source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecProblem {
    #[error("exec sources are disabled (no exec source directory configured)")]
    Disabled,
    #[error("cannot run {path}: {cause}")]
    Spawn { path: String, cause: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("exited with {0}")]
    Exited(String),
    /// The output is not a usable `CredentialProviderResponse`.
    #[error("{0}")]
    Response(String),
}

impl Error {
    pub(crate) fn material(what: &'static str, problem: impl Into<String>) -> Self {
        Error::Material {
            what,
            problem: problem.into(),
        }
    }

    pub(crate) fn crypto(action: &'static str, cause: impl std::fmt::Display) -> Self {
        Error::Crypto {
            action,
            cause: cause.to_string(),
        }
    }

    /// The duration setting `field`, `default` when unset.
    pub(crate) fn duration(
        field: &'static str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration> {
        value
            .map(pullbroker_core::policy::model::parse_duration)
            .transpose()
            .map(|d| d.unwrap_or(default))
            .map_err(|source| Error::Duration { field, source })
    }

    /// This error, as found in Secret `name`.
    pub(crate) fn in_secret(self, name: &str) -> Self {
        Error::InSecret {
            name: name.to_string(),
            problem: Box::new(self),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
