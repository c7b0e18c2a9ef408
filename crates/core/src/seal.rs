//! The seal on the pull secrets the controller writes into tenants'
//! namespaces: a keyed MAC (HMAC-SHA256, the controller's [`SealKey`]) over
//! a secret's data, type and what is ours of its metadata. A tenant can edit
//! a secret in its own namespace; one whose seal does not verify is damaged
//! and reissued whole, so nothing a tenant writes — a moved expiry, an added
//! key — can steer rotation. Pure: the key's storage is the controller's.

use std::collections::BTreeMap;

use sha2::Sha256;

use crate::sync::MANAGED_BY;

/// Annotation carrying a managed secret's [`seal`].
pub const SEAL: &str = "pullbroker.dev/seal";

/// The controller's key for [`seal`]s. Kept in the system namespace, where
/// tenants cannot read it; Debug never shows it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl SealKey {
    pub const LEN: usize = 32;

    /// A key from stored bytes; anything but exactly [`SealKey::LEN`] bytes is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealKeyLength> {
        let key: [u8; Self::LEN] = bytes.try_into().map_err(|_| SealKeyLength(bytes.len()))?;
        Ok(SealKey(key))
    }
}

/// Stored seal-key bytes of the wrong length (the count, never the bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a seal key is {len} bytes, this one has {0}", len = SealKey::LEN)]
pub struct SealKeyLength(pub usize);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// What a managed secret's seal covers: all of its data and its type, and
/// of its metadata what is ours (our labels, our `pullbroker.dev/`
/// annotations — the rotation times among them). Labels and annotations of
/// other tools are left out, so a tool that adds its own never makes us
/// fight it.
pub struct SealedContent<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub type_: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub data: &'a BTreeMap<String, Vec<u8>>,
}

fn ours(key: &str) -> bool {
    key == MANAGED_BY.0 || key.starts_with("pullbroker.dev/")
}

fn seal_mac(key: &SealKey, c: &SealedContent<'_>) -> hmac::Hmac<Sha256> {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(&key.0).expect("HMAC takes any key length");
    // Every field length-prefixed and tagged: no two contents encode alike.
    let mut field = |tag: u8, bytes: &[u8]| {
        mac.update(&[tag]);
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(b'n', c.namespace.as_bytes());
    field(b'm', c.name.as_bytes());
    field(b't', c.type_.as_bytes());
    for (k, v) in c.labels.iter().filter(|(k, _)| ours(k)) {
        field(b'l', k.as_bytes());
        field(b'v', v.as_bytes());
    }
    for (k, v) in c.annotations.iter().filter(|(k, _)| ours(k) && *k != SEAL) {
        field(b'a', k.as_bytes());
        field(b'v', v.as_bytes());
    }
    for (k, v) in c.data {
        field(b'd', k.as_bytes());
        field(b'v', v);
    }
    mac
}

/// The seal the controller writes into [`SEAL`] for `content`.
pub fn seal(key: &SealKey, content: &SealedContent<'_>) -> String {
    use hmac::Mac as _;
    let tag = seal_mac(key, content).finalize().into_bytes();
    format!("v1.{}", data_encoding::BASE64URL_NOPAD.encode(&tag))
}

/// Whether `content` carries a valid seal (compared in constant time).
pub fn seal_verifies(key: &SealKey, content: &SealedContent<'_>) -> bool {
    use hmac::Mac as _;
    let Some(tag) = content
        .annotations
        .get(SEAL)
        .and_then(|s| s.strip_prefix("v1."))
        .and_then(|t| data_encoding::BASE64URL_NOPAD.decode(t.as_bytes()).ok())
    else {
        return false;
    };
    seal_mac(key, content).verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::GRANT_LABEL;

    #[test]
    fn a_seal_covers_data_our_labels_and_our_annotations_only() {
        let key = SealKey::from_bytes(&[7; 32]).unwrap();
        let labels = BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (GRANT_LABEL.to_string(), "g".to_string()),
        ]);
        let annotations = BTreeMap::from([(
            "pullbroker.dev/expires-at".to_string(),
            "2026-12-02T00:00:00Z".to_string(),
        )]);
        let data = BTreeMap::from([(".dockerconfigjson".to_string(), b"{}".to_vec())]);
        let content = |labels, annotations, data| SealedContent {
            namespace: "team-a",
            name: "pullbroker-g",
            type_: "kubernetes.io/dockerconfigjson",
            labels,
            annotations,
            data,
        };
        let mut sealed = annotations.clone();
        sealed.insert(
            SEAL.into(),
            seal(&key, &content(&labels, &annotations, &data)),
        );
        assert!(seal_verifies(&key, &content(&labels, &sealed, &data)));
        assert!(
            !seal_verifies(&key, &content(&labels, &annotations, &data)),
            "no seal"
        );
        let other = SealKey::from_bytes(&[8; 32]).unwrap();
        assert!(!seal_verifies(&other, &content(&labels, &sealed, &data)));

        // What a tenant might change: each breaks the seal.
        let mut moved = sealed.clone();
        moved.insert(
            "pullbroker.dev/expires-at".into(),
            "2099-01-01T00:00:00Z".into(),
        );
        assert!(!seal_verifies(&key, &content(&labels, &moved, &data)));
        let mut added = sealed.clone();
        added.insert("pullbroker.dev/static-copy".into(), "true".into());
        assert!(!seal_verifies(&key, &content(&labels, &added, &data)));
        let mut extra = data.clone();
        extra.insert("extra".into(), b"x".to_vec());
        assert!(!seal_verifies(&key, &content(&labels, &sealed, &extra)));
        let edited = BTreeMap::from([(".dockerconfigjson".to_string(), b"{ }".to_vec())]);
        assert!(!seal_verifies(&key, &content(&labels, &sealed, &edited)));
        let mut relabelled = labels.clone();
        relabelled.remove(GRANT_LABEL);
        assert!(!seal_verifies(&key, &content(&relabelled, &sealed, &data)));

        // Other tools' labels and annotations are not ours to fight over.
        let mut tooled = labels.clone();
        tooled.insert("team".into(), "a".into());
        let mut noted = sealed.clone();
        noted.insert("argocd.argoproj.io/tracking-id".into(), "x".into());
        assert!(seal_verifies(&key, &content(&tooled, &noted, &data)));

        assert_eq!(SealKey::from_bytes(&[0; 31]).err(), Some(SealKeyLength(31)));
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
    }
}
