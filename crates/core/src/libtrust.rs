//! docker/libtrust key IDs: what registry 2.8 matches a token's `kid` against.

use sha2::{Digest as _, Sha256};

/// Base32 (RFC 4648, no padding) of the first 240 bits of SHA-256 over the
/// DER SubjectPublicKeyInfo, in 12 groups of 4 joined by `:`.
pub fn key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let b32 = data_encoding::BASE32_NOPAD.encode(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn format() {
        let kid = super::key_id(b"any spki");
        assert_eq!(kid.len(), 59);
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c) || c == ':'));
    }
}
