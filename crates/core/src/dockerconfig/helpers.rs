//! Docker credential helpers named in a config (`credsStore`,
//! `credHelpers`): which helper serves which registry. Only names are kept
//! here; running `docker-credential-<name>` is an adapter's job, and a name
//! that could leave that prefix is refused.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{top, type_name, DockerConfigError};

/// A Docker credential helper to run for an image: `docker-credential-<helper>
/// get` with `server` on stdin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HelperCall {
    pub helper: String,
    pub server: String,
}

#[derive(Debug, Clone, Default)]
pub(super) struct HelperInfo {
    pub(super) store: Option<String>,
    /// Registry key → helper name.
    pub(super) per_registry: BTreeMap<String, String>,
}

/// A helper name becomes part of an executable's name: nothing that could
/// leave `docker-credential-` (a path, a space, a shell character).
fn helper_name(name: &str, field: &str) -> Result<String, DockerConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name.starts_with('.')
    {
        return Err(top(format!(
            "{field}: {name:?} is not a credential helper name (letters, digits, '-', '_', '.')"
        )));
    }
    Ok(name.to_string())
}

impl HelperInfo {
    pub(super) fn from_root(root: &Map<String, Value>) -> Result<Self, DockerConfigError> {
        let store = match root.get("credsStore") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(helper_name(s, "credsStore")?),
            Some(v) => {
                return Err(top(format!(
                    "\"credsStore\" must be a string, found {}",
                    type_name(v)
                )))
            }
        };
        let per_registry = match root.get("credHelpers") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => {
                        Ok((k.clone(), helper_name(s, &format!("credHelpers[{k:?}]"))?))
                    }
                    v => Err(top(format!(
                        "credHelpers[{k:?}] must be a string, found {}",
                        type_name(v)
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(top(format!(
                    "\"credHelpers\" must be an object, found {}",
                    type_name(v)
                )))
            }
        };
        Ok(HelperInfo {
            store,
            per_registry,
        })
    }

    pub(super) fn covers(&self, key: &str) -> bool {
        self.store.is_some() || self.per_registry.contains_key(key)
    }
}
