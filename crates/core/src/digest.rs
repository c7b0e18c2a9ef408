//! Content digests as the OCI image spec and `go-digest` define them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm registered with the OCI image spec (`go-digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Number of lowercase hex characters of an encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest, e.g. `sha256:683a5b…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest. Messages name the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is missing the `algorithm:` prefix")]
    MissingAlgorithm,
    #[error("digest algorithm `{0}` is not well formed")]
    MalformedAlgorithm(String),
    #[error("unsupported digest algorithm `{0}` (supported: sha256, sha384, sha512)")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must have {expected} hex characters, found {found}")]
    WrongLength {
        algorithm: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("digest hex must be lowercase 0-9a-f; found {found:?} at offset {offset}")]
    BadHex { found: char, offset: usize },
}

impl DigestError {
    /// Byte offset inside the digest string where the problem starts.
    pub fn offset(&self, input: &str) -> usize {
        let colon = input.find(':').map(|i| i + 1).unwrap_or(0);
        match self {
            DigestError::MissingAlgorithm
            | DigestError::MalformedAlgorithm(_)
            | DigestError::UnsupportedAlgorithm(_) => 0,
            DigestError::WrongLength { .. } => colon,
            DigestError::BadHex { offset, .. } => colon + offset,
        }
    }
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` under this digest's algorithm; used to verify content.
    pub fn recompute(&self, bytes: &[u8]) -> Self {
        let hex = match self.algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            Algorithm::Sha384 => hex::encode(sha2::Sha384::digest(bytes)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        };
        Digest {
            algorithm: self.algorithm,
            hex,
        }
    }

    /// True when `bytes` hash to this digest.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        self.recompute(bytes) == *self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        if !algorithm_is_well_formed(alg) {
            return Err(DigestError::MalformedAlgorithm(alg.to_string()));
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_string())),
        };
        if let Some((offset, found)) = hex
            .char_indices()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(DigestError::BadHex { found, offset });
        }
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                found: hex.len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

/// `digest-algorithm := component [ separator component ]*`, with
/// `component := [A-Za-z][A-Za-z0-9]*` and `separator := [+._-]`.
fn algorithm_is_well_formed(alg: &str) -> bool {
    !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|component| {
            let mut chars = component.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric())
        })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "683a5ba4d6838eb126aee099c4c2cb17c6d38c20b9084c9d8dd68a48565d2c81";

    #[test]
    fn parses_sha256() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!("abc".parse::<Digest>(), Err(DigestError::MissingAlgorithm));
        assert!(matches!(
            format!("md5:{HEX}").parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            format!("1sha:{HEX}").parse::<Digest>(),
            Err(DigestError::MalformedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::WrongLength { found: 3, .. })
        ));
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert!(matches!(
            upper.parse::<Digest>(),
            Err(DigestError::BadHex { offset: 3, .. })
        ));
    }

    #[test]
    fn verifies_content() {
        let d = Digest::sha256_of(b"hello");
        assert!(d.verifies(b"hello"));
        assert!(!d.verifies(b"hellO"));
        assert_eq!(
            d.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
