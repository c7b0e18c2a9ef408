//! Reading a JWT's claims *without verifying it*, to show an expiry to a human
//! (`pullbroker secret inspect`). Never use this to make a trust decision.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// `exp` of a JWT-shaped string, or `None` if it is not a JWT or has no `exp`.
pub fn unverified_expiry(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header.get("alg")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            unverified_expiry(&jwt(r#"{"exp":1795344431}"#)),
            Some(1795344431)
        );
        assert_eq!(unverified_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(unverified_expiry("hunter2"), None);
        assert_eq!(unverified_expiry("a.b.c"), None);
    }
}
