//! Kubernetes `Secret` manifests of type `kubernetes.io/dockerconfigjson`
//! (and the legacy `kubernetes.io/dockercfg`): reading them from YAML/JSON and
//! writing them for GitOps.
//!
//! Like [`crate::dockerconfig`], reading walks untyped values so that no error
//! can quote secret data; YAML errors are reported by position only.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::credential::Credential;
use crate::dockerconfig::{DockerConfig, DockerConfigError};

pub const TYPE_DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
pub const KEY_DOCKERCONFIGJSON: &str = ".dockerconfigjson";
pub const KEY_DOCKERCFG: &str = ".dockercfg";

/// A pull secret read from a manifest.
#[derive(Debug, Clone)]
pub struct PullSecret {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub secret_type: String,
    pub config: DockerConfig,
}

/// What is wrong with a Secret manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("not valid YAML or JSON (at line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("not valid YAML or JSON")]
    SyntaxNoLocation,
    #[error("{0}")]
    Shape(String),
    #[error("data[{key:?}] is not valid base64")]
    Base64 { key: &'static str },
    #[error("data[{key:?}]: {source}")]
    Config {
        key: &'static str,
        source: DockerConfigError,
    },
}

fn shape(msg: impl Into<String>) -> SecretError {
    SecretError::Shape(msg.into())
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl PullSecret {
    /// Reads a Secret manifest (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        // Only the position: the parser's own message may quote the text.
        let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
            match e.location().filter(|l| l.line() > 0) {
                Some(l) => SecretError::Syntax {
                    line: l.line() as usize,
                    column: l.column() as usize,
                },
                None => SecretError::SyntaxNoLocation,
            }
        })?;
        if !doc.is_object() {
            return Err(shape("a Secret manifest must be a mapping"));
        }
        match str_at(&doc, "kind") {
            Some("Secret") => {}
            Some(other) => return Err(shape(format!("kind is {other:?}, expected \"Secret\""))),
            None => return Err(shape("kind is missing (expected \"Secret\")")),
        }
        if let Some(api) = str_at(&doc, "apiVersion") {
            if api != "v1" {
                return Err(shape(format!("apiVersion is {api:?}, expected \"v1\"")));
            }
        }
        let secret_type = str_at(&doc, "type").unwrap_or("Opaque").to_string();
        let key = match secret_type.as_str() {
            TYPE_DOCKERCONFIGJSON => KEY_DOCKERCONFIGJSON,
            TYPE_DOCKERCFG => KEY_DOCKERCFG,
            other => {
                return Err(shape(format!(
                    "type is {other:?}, expected {TYPE_DOCKERCONFIGJSON:?} or {TYPE_DOCKERCFG:?}"
                )))
            }
        };
        let meta = doc.get("metadata");
        let meta_str = |k| meta.and_then(|m| str_at(m, k)).map(str::to_string);
        let bytes = match (
            doc.get("data").and_then(|d| d.get(key)),
            doc.get("stringData").and_then(|d| d.get(key)),
        ) {
            (_, Some(Value::String(s))) => s.clone().into_bytes(),
            (_, Some(_)) => return Err(shape(format!("stringData[{key:?}] must be a string"))),
            (Some(Value::String(s)), None) => {
                let compact: String = s.split_whitespace().collect();
                STANDARD
                    .decode(compact)
                    .map_err(|_| SecretError::Base64 { key })?
            }
            (Some(_), None) => return Err(shape(format!("data[{key:?}] must be a base64 string"))),
            (None, None) => return Err(shape(format!("data[{key:?}] is missing"))),
        };
        let parse = if key == KEY_DOCKERCFG {
            DockerConfig::parse_legacy
        } else {
            DockerConfig::parse
        };
        let config = parse(&bytes).map_err(|source| SecretError::Config { key, source })?;
        Ok(PullSecret {
            name: meta_str("name"),
            namespace: meta_str("namespace"),
            secret_type,
            config,
        })
    }
}

/// Output format of a rendered manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretManifest<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    #[serde(rename = "type")]
    secret_type: &'static str,
    data: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'static str, &'static str>,
}

/// Renders a `kubernetes.io/dockerconfigjson` Secret for one registry.
/// The output contains the credential (base64, as Kubernetes stores it).
pub fn render_pull_secret(
    name: &str,
    namespace: &str,
    registry: &str,
    credential: Credential,
    format: ManifestFormat,
) -> Result<String, String> {
    validate_dns_subdomain(name).map_err(|e| format!("secret name {name:?}: {e}"))?;
    validate_dns_label(namespace).map_err(|e| format!("namespace {namespace:?}: {e}"))?;
    let config = DockerConfig::single(registry, credential).map_err(|e| e.to_string())?;
    let manifest = SecretManifest {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata {
            name,
            namespace,
            labels: BTreeMap::from([("app.kubernetes.io/created-by", "pullbroker")]),
        },
        secret_type: TYPE_DOCKERCONFIGJSON,
        data: BTreeMap::from([(
            KEY_DOCKERCONFIGJSON,
            STANDARD.encode(config.to_json_exposing_secrets()),
        )]),
    };
    Ok(match format {
        ManifestFormat::Yaml => serde_saphyr::to_string(&manifest).map_err(|e| e.to_string())?,
        ManifestFormat::Json => {
            serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())? + "\n"
        }
    })
}

/// RFC 1123 subdomain, as Kubernetes requires for most object names.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for label in s.split('.') {
        validate_label_chars(label)?;
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes requires for namespace names.
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    validate_label_chars(s)
}

fn validate_label_chars(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(
            "must be lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        for format in [ManifestFormat::Yaml, ManifestFormat::Json] {
            let text = render_pull_secret(
                "corp-pull",
                "team-a",
                "reg.example:5000",
                Credential::basic("bot", "hunter2"),
                format,
            )
            .unwrap();
            assert!(
                !text.contains("hunter2"),
                "stored base64-encoded, as Kubernetes does"
            );
            let s = PullSecret::parse(&text).unwrap();
            assert_eq!(s.name.as_deref(), Some("corp-pull"));
            assert_eq!(s.namespace.as_deref(), Some("team-a"));
            assert_eq!(s.secret_type, TYPE_DOCKERCONFIGJSON);
            assert_eq!(
                s.config.entries()[0].credential(),
                &Credential::basic("bot", "hunter2")
            );
        }
    }

    #[test]
    fn rejects_bad_names() {
        let r = |n, ns| {
            render_pull_secret(
                n,
                ns,
                "r.io",
                Credential::basic("u", "p"),
                ManifestFormat::Yaml,
            )
        };
        assert!(r("Bad_Name", "ns").unwrap_err().contains("secret name"));
        assert!(r("ok", "ns.with.dots").unwrap_err().contains("namespace"));
        assert!(r("ok", "ns").is_ok());
    }

    #[test]
    fn string_data_and_errors() {
        let ok = "kind: Secret\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{\"auths\":{\"r.io\":{\"username\":\"u\",\"password\":\"p\"}}}'\n";
        assert_eq!(PullSecret::parse(ok).unwrap().config.entries().len(), 1);
        let cases = [
            ("kind: ConfigMap\n", "expected \"Secret\""),
            ("kind: Secret\ntype: Opaque\n", "type is \"Opaque\""),
            ("kind: Secret\ntype: kubernetes.io/dockerconfigjson\n", "is missing"),
            ("kind: Secret\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: '%%%hunter2'\n", "not valid base64"),
            ("kind: Secret\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{\"auths\":{\"r.io\":{\"password\":\"hunter2\"}}}'\n", "auths[\"r.io\"].username"),
            ("kind: [Secret\n", "not valid YAML"),
            ("- a\n", "must be a mapping"),
        ];
        for (doc, want) in cases {
            let e = PullSecret::parse(doc).unwrap_err().to_string();
            assert!(e.contains(want), "{doc:?}: got {e}");
            assert!(!e.contains("hunter2"));
        }
    }
}
