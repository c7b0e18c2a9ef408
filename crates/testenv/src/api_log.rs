//! What each client identity asked the fake API server, as RBAC sees a
//! request (verb, API group, resource, subresource, namespace, name, or a
//! non-resource path), written to `target/api-requests/` so a check after
//! the whole suite can hold the requests our components made against the
//! RBAC we ship (`crates/cli/tests/rbac.rs`).
//!
//! Clients identify themselves with a bearer token that is the user name
//! ([`crate::fakeapi::FakeApi::kubeconfig_as`]): the fake authenticates
//! nobody, it only records. Requests without a token (the tests' own
//! set-up, as cluster-admin) are not recorded.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The controller's service account, as the API server names it.
pub const CONTROLLER: &str = "system:serviceaccount:pullbroker-system:pullbroker-controller";
/// The broker's.
pub const BROKER: &str = "system:serviceaccount:pullbroker-system:pullbroker-broker";

/// One request as the RBAC authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApiRequest {
    pub user: String,
    pub verb: String,
    /// Empty for the core group and for non-resource requests.
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The path of a non-resource request (`/openid/v1/jwks`), else empty.
    pub non_resource_path: String,
}

/// Where the records go: `PULLBROKER_API_LOG_DIR`, else the workspace's
/// `target/api-requests`.
pub fn dir() -> PathBuf {
    std::env::var_os("PULLBROKER_API_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/api-requests"
            ))
        })
}

/// Every request recorded so far, by every fake server of every test process.
pub fn read_all() -> std::io::Result<Vec<ApiRequest>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir())? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let r: ApiRequest = serde_json::from_str(line).map_err(std::io::Error::other)?;
            out.insert(r);
        }
    }
    Ok(out.into_iter().collect())
}

/// One fake server's log: each distinct request once.
pub(crate) struct Recorder {
    seen: Mutex<(BTreeSet<ApiRequest>, Option<std::fs::File>)>,
    file: PathBuf,
}

impl Recorder {
    pub(crate) fn new(port: u16) -> Recorder {
        Recorder {
            seen: Mutex::new((BTreeSet::new(), None)),
            file: dir().join(format!("{}-{port}.jsonl", std::process::id())),
        }
    }

    pub(crate) fn record(&self, r: ApiRequest) {
        let mut guard = self.seen.lock().expect("poisoned");
        let (seen, file) = &mut *guard;
        if !seen.insert(r.clone()) {
            return;
        }
        if file.is_none() {
            let _ = std::fs::create_dir_all(dir());
            *file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)
                .ok();
        }
        if let Some(f) = file {
            let mut line = serde_json::to_string(&r).expect("serializable");
            line.push('\n');
            // One write per line: lines from concurrent servers never interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The RBAC verb of a request.
pub(crate) fn verb(method: &str, named: bool, watch: bool) -> &'static str {
    match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}
