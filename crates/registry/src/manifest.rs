//! Manifest media types and platform selection from an index.

use std::fmt;
use std::str::FromStr;

use pullbroker_core::Digest;
use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The Accept header for manifest requests. All four types are required:
/// registry 2.8 answers 404 for OCI content it may not send, and silently
/// down-converts Docker content (schema1, or the amd64 child of a list),
/// which changes the digest.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// True for multi-platform media types.
pub fn is_index(media_type: &str) -> bool {
    let mt = media_type.split(';').next().unwrap_or_default().trim();
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// A target platform, `os/arch[/variant]`, e.g. `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch or os/arch/variant (e.g. linux/amd64)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<DescPlatform>,
}

#[derive(Deserialize)]
struct DescPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Picks the manifest for `want` from an index body. A requested variant must
/// match exactly; without one, the first entry of that os/arch wins.
pub fn select_platform(index_json: &[u8], want: &Platform) -> Result<Digest, String> {
    let index: Index =
        serde_json::from_slice(index_json).map_err(|e| format!("index is not valid JSON: {e}"))?;
    let mut offered = Vec::new();
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        offered.push(match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        });
        let variant_ok = want.variant.is_none() || want.variant == p.variant;
        if p.os == want.os && p.architecture == want.architecture && variant_ok {
            return d
                .digest
                .parse()
                .map_err(|e| format!("index entry has an invalid digest: {e}"));
        }
    }
    Err(if offered.is_empty() {
        "none".into()
    } else {
        offered.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
      {"digest":"sha256:683a5ba4d6838eb126aee099c4c2cb17c6d38c20b9084c9d8dd68a48565d2c81","platform":{"os":"linux","architecture":"amd64"}},
      {"digest":"sha256:d99bca196f6f2efd8abb014f44822db3bab096e253b359b760097b9ab7c442a0","platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;

    #[test]
    fn selects_platforms() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert!(select_platform(INDEX.as_bytes(), &arm)
            .unwrap()
            .hex()
            .starts_with("d99bca"));
        let arm8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(select_platform(INDEX.as_bytes(), &arm8).is_ok());
        let arm7: Platform = "linux/arm64/v7".parse().unwrap();
        assert_eq!(
            select_platform(INDEX.as_bytes(), &arm7).unwrap_err(),
            "linux/amd64, linux/arm64/v8"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert!(is_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(!is_index(OCI_MANIFEST));
    }
}
