//! Registry credentials. Secrets are held in [`SecretString`], whose `Debug`
//! prints `[REDACTED]`, and [`Credential`]'s `Display` names only the kind and
//! the user — so a credential can go into a log line or an error by accident
//! without leaking.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};

/// What a client presents to a registry.
#[derive(Clone, Debug)]
pub enum Credential {
    /// No credentials.
    Anonymous,
    /// `username:password`, sent as HTTP Basic or exchanged at a token endpoint.
    Basic {
        username: String,
        password: SecretString,
    },
    /// An OAuth2 refresh token (docker config `identitytoken`), exchanged at the
    /// registry's token endpoint with `grant_type=refresh_token`.
    IdentityToken {
        username: String,
        token: SecretString,
    },
    /// A bearer token sent to the registry as is (docker config `registrytoken`).
    RegistryToken { token: SecretString },
}

/// Stable identity of a credential, used to key caches (tokens fetched with one
/// credential are never served to another). `Debug` hides the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialId([u8; 32]);

impl CredentialId {
    /// The hash itself (to key a cache or, hashed again with a key, to
    /// group equal credentials; never to show).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialId(..)")
    }
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic {
            username: username.into(),
            password: SecretString::from(password.into()),
        }
    }

    /// Short name of the kind, for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Anonymous => "anonymous",
            Credential::Basic { .. } => "basic",
            Credential::IdentityToken { .. } => "identity-token",
            Credential::RegistryToken { .. } => "registry-token",
        }
    }

    /// The user name, where the credential has one.
    pub fn username(&self) -> Option<&str> {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                Some(username)
            }
            _ => None,
        }
    }

    /// The secret part, for adapters that must put it on the wire.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Credential::Anonymous => None,
            Credential::Basic { password, .. } => Some(password.expose_secret()),
            Credential::IdentityToken { token, .. } | Credential::RegistryToken { token } => {
                Some(token.expose_secret())
            }
        }
    }

    /// A hash of kind, user and secret: equal credentials get equal ids.
    pub fn id(&self) -> CredentialId {
        let mut h = Sha256::new();
        h.update(self.kind());
        h.update([0]);
        h.update(self.username().unwrap_or_default());
        h.update([0]);
        h.update(self.secret().unwrap_or_default());
        CredentialId(h.finalize().into())
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for Credential {}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("anonymous"),
            Credential::Basic { username, .. } => write!(f, "basic auth as {username:?}"),
            Credential::IdentityToken { username, .. } => {
                write!(f, "identity token for {username:?}")
            }
            Credential::RegistryToken { .. } => f.write_str("registry token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "s3cr3t-CANARY-7f1d";

    fn all() -> Vec<Credential> {
        vec![
            Credential::basic("alice", CANARY),
            Credential::IdentityToken {
                username: "<token>".into(),
                token: CANARY.to_string().into(),
            },
            Credential::RegistryToken {
                token: CANARY.to_string().into(),
            },
        ]
    }

    #[test]
    fn debug_and_display_redact_the_secret() {
        for c in all() {
            let shown = format!("{c:?} {c} {:?} {:#?}", c.id(), vec![c.clone()]);
            assert!(!shown.contains(CANARY), "leaked: {shown}");
            assert!(!shown.contains("7f1d"), "leaked part: {shown}");
            assert_eq!(c.secret(), Some(CANARY));
        }
        assert!(format!("{}", all()[0]).contains("alice"));
    }

    #[test]
    fn identity_distinguishes_secrets() {
        let a = Credential::basic("u", "p1");
        assert_eq!(a, Credential::basic("u", "p1"));
        assert_ne!(a, Credential::basic("u", "p2"));
        assert_ne!(a, Credential::basic("v", "p1"));
        assert_ne!(a.id(), Credential::Anonymous.id());
    }
}
