//! Reading a config file's documents: the YAML stream split into
//! documents (problems name the document and the file's line), each
//! checked for its kind and apiVersion, Secret and ConfigMap data decoded,
//! and the policy's inputs put together — `secretFiles` read, the
//! system namespace checked, `BrokerConfig.spec.namespaces` merged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::model::API_VERSION;
use pullbroker_core::policy::{Named, PullGrantSpec, RegistryCredentialSpec};
use serde_json::Value;

use super::spec::{BrokerConfigSpec, PolicySource};
use super::{resolve, ConfigMaps, Secrets};
use crate::Error;

/// A file's documents, by kind.
#[derive(Default)]
pub(super) struct Documents {
    pub broker: Option<BrokerConfigSpec>,
    pub credentials: Vec<Named<RegistryCredentialSpec>>,
    pub grants: Vec<Named<PullGrantSpec>>,
    pub secrets: Secrets,
    /// Shaped like the Secrets (name → namespace, data) until the namespace is checked.
    pub config_maps: Secrets,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the policy is assembled from.
pub(super) struct PolicyInputs {
    pub credentials: Vec<Named<RegistryCredentialSpec>>,
    pub grants: Vec<Named<PullGrantSpec>>,
    pub secrets: Secrets,
    pub config_maps: ConfigMaps,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// The documents of config `text` (read from `path`). A YAML syntax error
/// is returned at once (nothing after it can be trusted); any other
/// problem with a document is pushed and the document skipped.
pub(super) fn read(
    text: &str,
    path: &Path,
    problems: &mut Vec<String>,
) -> crate::Result<Documents> {
    let mut d = Documents::default();
    for (i, (first_line, source)) in documents(text).into_iter().enumerate() {
        if blank(&source) {
            continue;
        }
        let doc = match serde_saphyr::from_str::<Value>(&source) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                return Err(Error::Yaml {
                    path: path.to_path_buf(),
                    document: i + 1,
                    // The line in the file, not in the document.
                    line: e
                        .location()
                        .filter(|l| l.line() > 0)
                        .map(|l| first_line + l.line() as usize - 1),
                });
            }
        };
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let api = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = match meta_name(&doc) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("document {} ({kind}): {e}", i + 1));
                continue;
            }
        };
        let what = format!("{kind} {name:?}");
        let expect_api = |want: &str| -> Result<(), String> {
            if api == want {
                Ok(())
            } else {
                Err(format!("{what}: apiVersion must be {want}, found {api:?}"))
            }
        };
        let result: Result<(), String> = match kind.as_str() {
            "BrokerConfig" => expect_api(API_VERSION).and_then(|_| {
                if d.broker.is_some() {
                    return Err("more than one BrokerConfig".into());
                }
                d.broker = Some(spec(&doc, &what)?);
                Ok(())
            }),
            "RegistryCredential" => expect_api(API_VERSION).and_then(|_| {
                d.credentials.push(Named { name: name.clone(), spec: spec::<RegistryCredentialSpec>(&doc, &what)? });
                Ok(())
            }),
            "PullGrant" => expect_api(API_VERSION).and_then(|_| {
                d.grants.push(Named { name: name.clone(), spec: spec::<PullGrantSpec>(&doc, &what)? });
                Ok(())
            }),
            "Secret" => expect_api("v1").and_then(|_| {
                let data = secret_data(&doc).map_err(|e| format!("{what}: {e}"))?;
                let ns = doc.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
                d.secrets.insert(name.clone(), (ns, data));
                Ok(())
            }),
            "ConfigMap" => expect_api("v1").and_then(|_| {
                let data = config_map_data(&doc).map_err(|e| format!("{what}: {e}"))?;
                let ns = doc.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
                d.config_maps.insert(name.clone(), (ns, data));
                Ok(())
            }),
            "Namespace" => expect_api("v1").and_then(|_| {
                let labels = doc
                    .get("metadata")
                    .and_then(|m| m.get("labels"))
                    .cloned()
                    .map(serde_json::from_value::<BTreeMap<String, String>>)
                    .transpose()
                    .map_err(|e| format!("{what}: labels: {e}"))?
                    .unwrap_or_default();
                d.namespaces.insert(name.clone(), labels);
                Ok(())
            }),
            other => Err(format!("document {} has unsupported kind {other:?} (BrokerConfig, RegistryCredential, PullGrant, Secret, ConfigMap, Namespace)", i + 1)),
        };
        if let Err(e) = result {
            problems.push(e);
        }
    }
    Ok(d)
}

/// The policy's inputs from the documents and `broker`'s `secretFiles`
/// (read, relative to `base`, and added to `watched`) and `namespaces`.
pub(super) fn policy_inputs(
    broker: &BrokerConfigSpec,
    docs: Documents,
    base: &Path,
    problems: &mut Vec<String>,
    watched: &mut Vec<PathBuf>,
) -> PolicyInputs {
    let Documents {
        credentials,
        grants,
        mut secrets,
        config_maps,
        mut namespaces,
        ..
    } = docs;
    if broker.policy_source == PolicySource::Kubernetes
        && !(credentials.is_empty()
            && grants.is_empty()
            && secrets.is_empty()
            && config_maps.is_empty()
            && namespaces.is_empty())
    {
        problems.push("with policySource: kubernetes, RegistryCredentials, PullGrants, Secrets, ConfigMaps and Namespaces come from the cluster; remove them from the file".into());
    }
    let system_ns = broker.system_namespace();
    for (kind, name, ns) in secrets
        .iter()
        .map(|(name, (ns, _))| ("Secret", name, ns))
        .chain(
            config_maps
                .iter()
                .map(|(name, (ns, _))| ("ConfigMap", name, ns)),
        )
    {
        if ns.as_deref().is_some_and(|n| n != system_ns) {
            problems.push(format!(
                "{kind} {name:?}: central secrets and CA bundles live in namespace {system_ns:?}"
            ));
        }
    }
    let config_maps: ConfigMaps = config_maps
        .into_iter()
        .map(|(name, (_, data))| (name, data))
        .collect();
    for (secret, files) in &broker.secret_files {
        let entry = secrets.entry(secret.clone()).or_default();
        for (key, file) in files {
            let file = resolve(base, file);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    entry.1.insert(key.clone(), bytes);
                }
                Err(e) => problems.push(format!(
                    "secretFiles[{secret:?}][{key:?}]: cannot read {}: {e}",
                    file.display()
                )),
            }
            watched.push(file);
        }
    }
    for (ns, labels) in &broker.namespaces {
        namespaces
            .entry(ns.clone())
            .or_default()
            .extend(labels.clone());
    }

    PolicyInputs {
        credentials,
        grants,
        secrets,
        config_maps,
        namespaces,
    }
}

/// The documents of a YAML stream, each with the line of the file it starts
/// on. Split by hand because the YAML parser's stream API skips empty
/// documents, and problems are reported by document number: a `---` at
/// column 0 is always a document marker (YAML forbids it as content, even
/// in block or quoted scalars), so splitting there is exact. A marker may
/// carry content (`--- {…}`); an empty stretch before the first marker is
/// no document.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs: Vec<(usize, String)> = vec![(1, String::new())];
    for (n, line) in text.lines().enumerate() {
        let rest = line
            .strip_prefix("---")
            .filter(|r| r.is_empty() || r.starts_with([' ', '\t']));
        match rest {
            Some(rest) => docs.push((n + 1, format!("{rest}\n"))),
            None => {
                let doc = &mut docs.last_mut().expect("one at least").1;
                doc.push_str(line);
                doc.push('\n');
            }
        }
    }
    if docs.len() > 1 && blank(&docs[0].1) {
        docs.remove(0);
    }
    docs
}

/// Only blank lines and comments: an empty document.
fn blank(doc: &str) -> bool {
    doc.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

fn meta_name(doc: &Value) -> Result<String, String> {
    doc.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "metadata.name is required".to_string())
}

fn spec<T: serde::de::DeserializeOwned>(doc: &Value, what: &str) -> Result<T, String> {
    let spec = doc
        .get("spec")
        .cloned()
        .ok_or_else(|| format!("{what}: spec is required"))?;
    // serde's messages quote values; specs hold no secrets, so keep them.
    serde_json::from_value(spec).map_err(|e| format!("{what}: {e}"))
}

/// A Secret's `data` (base64) and `stringData` (text).
fn secret_data(doc: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = entries(doc, "data", Encoding::Base64)?;
    out.extend(entries(doc, "stringData", Encoding::Text)?);
    Ok(out)
}

/// A ConfigMap's `data` (text) and `binaryData` (base64).
fn config_map_data(doc: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = entries(doc, "data", Encoding::Text)?;
    out.extend(entries(doc, "binaryData", Encoding::Base64)?);
    Ok(out)
}

#[derive(Clone, Copy)]
enum Encoding {
    Base64,
    Text,
}

/// The string map at `field`, decoded.
fn entries(
    doc: &Value,
    field: &str,
    encoding: Encoding,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let Some(data) = doc.get(field).and_then(Value::as_object) else {
        return Ok(out);
    };
    for (k, v) in data {
        let v = v.as_str().ok_or_else(|| match encoding {
            Encoding::Base64 => format!("{field}[{k:?}] must be a base64 string"),
            Encoding::Text => format!("{field}[{k:?}] must be a string"),
        })?;
        let bytes = match encoding {
            Encoding::Text => v.as_bytes().to_vec(),
            Encoding::Base64 => {
                let compact: String = v.split_whitespace().collect();
                STANDARD
                    .decode(compact)
                    .map_err(|_| format!("{field}[{k:?}] is not valid base64"))?
            }
        };
        out.insert(k.clone(), bytes);
    }
    Ok(out)
}
