//! The broker library's error at its boundary: loading a config, building
//! a broker, serving TLS. Request-time failures are answered over HTTP
//! (`server::ApiError`) and never reach here. No variant carries a secret:
//! file problems name the file, issuer problems the setting.

use std::path::PathBuf;

/// Why a configuration was refused or the broker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the configuration needs could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A document of the config file is not YAML at all.
    #[error("{}: document {document} is not valid YAML{}", .path.display(), .line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        path: PathBuf,
        document: usize,
        line: Option<usize>,
    },
    /// The config file parses but is not a valid configuration; every
    /// problem found is listed, not only the first.
    #[error("{} is invalid:\n  - {}", .path.display(), .problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// The service-account issuer settings can never work (a static JWKS
    /// without usable keys, a leeway beyond the cap).
    #[error("service-account issuer: {0}")]
    Issuer(String),
    /// The HTTP client for the broker's own calls could not be built.
    #[error(transparent)]
    Client(#[from] pullbroker_registry::SetupError),
    /// The serving certificate or key does not load.
    #[error("{0}")]
    Tls(String),
}

impl Error {
    /// For `map_err` on reading `path`.
    pub(crate) fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Read { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
