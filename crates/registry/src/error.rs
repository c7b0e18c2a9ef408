//! Errors of the registry adapter. Every variant names the registry (and the
//! repository where known); none carries credentials — details come from
//! status codes, registry error codes and transport causes only.

use std::time::Duration;

/// Why a registry operation failed. `Clone` so de-duplicated callers share it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: unauthorized for repository {repository:?}: {detail}")]
    Unauthorized {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("{registry}: access to repository {repository:?} denied: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("{registry}: {repository}:{reference} not found: {detail}")]
    NotFound {
        registry: String,
        repository: String,
        reference: String,
        detail: String,
    },
    #[error("{registry}: connection failed: {detail}")]
    Connect { registry: String, detail: String },
    #[error("{registry}: no answer within {timeout:?}")]
    Timeout { registry: String, timeout: Duration },
    /// 429 Too Many Requests: retried while the registry's `Retry-After`
    /// fits the client's backoff, then given up (never waited out).
    #[error("{registry}: rate-limited (HTTP 429) after {attempts} attempt(s){}", retry_after.map(|s| format!("; the registry asks to retry after {s}s")).unwrap_or_default())]
    RateLimited {
        registry: String,
        attempts: u32,
        /// The registry's `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    #[error("{registry}: HTTP {status} after {attempts} attempt(s)")]
    Unavailable {
        registry: String,
        status: u16,
        attempts: u32,
    },
    #[error("{registry}: digest mismatch for {repository}: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        registry: String,
        repository: String,
        expected: String,
        actual: String,
    },
    #[error("{registry}: {detail}")]
    Protocol { registry: String, detail: String },
    #[error("{image}: no manifest for platform {platform} (index offers: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
}

impl RegistryError {
    /// True when another credential might succeed where this one failed.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. }
        )
    }

    /// A short stable class name, for JSON output and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::Denied { .. } => "denied",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Connect { .. } => "connect",
            RegistryError::Timeout { .. } => "timeout",
            RegistryError::RateLimited { .. } => "rate_limited",
            RegistryError::Unavailable { .. } => "unavailable",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::Protocol { .. } => "protocol",
            RegistryError::NoPlatform { .. } => "no_platform",
        }
    }
}

/// Why an HTTP client could not be built from [`crate::ClientSettings`]:
/// a setup problem, found before any registry is contacted.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid CA bundle: {0}")]
    CaBundle(#[source] reqwest::Error),
    #[error("cannot build HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The innermost cause of a transport error, without the URL (URLs of token
/// endpoints carry query parameters we prefer not to repeat).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut msg = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if msg.is_empty() {
        "transport error".into()
    } else {
        msg
    }
}

/// Classifies a transport error for `registry`.
pub(crate) fn from_transport(
    registry: &str,
    e: &reqwest::Error,
    timeout: Duration,
) -> RegistryError {
    if e.is_timeout() {
        RegistryError::Timeout {
            registry: registry.to_string(),
            timeout,
        }
    } else {
        RegistryError::Connect {
            registry: registry.to_string(),
            detail: tls_named(describe(e)),
        }
    }
}

/// rustls names certificate problems by enum variant; say them as an
/// operator searches for them (Go's and curl's words), keeping rustls's.
fn tls_named(detail: String) -> String {
    let said = if detail.contains("UnknownIssuer") {
        "certificate signed by unknown authority (trust its CA: RegistryCredential transport.caBundle)"
    } else if detail.contains("NotValidForName") {
        "certificate name mismatch: it is not valid for this registry's host name"
    } else if detail.contains("Expired") {
        "certificate has expired"
    } else if detail.contains("NotValidYet") {
        "certificate is not valid yet"
    } else {
        return detail;
    };
    format!("TLS: {said} — {detail}")
}
