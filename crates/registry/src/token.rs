//! Registry bearer tokens: the token endpoint's response and a cache keyed by
//! registry, scope and credential identity, so a token fetched with one
//! credential is never handed to a caller holding another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pullbroker_core::credential::CredentialId;
use pullbroker_core::time::{secs, UnixTime};
use secrecy::SecretString;
use serde::Deserialize;

/// Lifetime assumed when the server sends none, and the minimum honoured
/// (the distribution token spec and Docker both use 60 s).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The longest we keep a token, whatever `expires_in` says: a registry (or
/// anything answering as one) cannot make us keep a token for ever, nor
/// overflow the clock arithmetic with a huge value.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The token endpoint's JSON answer (distribution token spec + OAuth2).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    issued_at: Option<String>,
}

/// A usable token and how long to use it.
#[derive(Clone)]
pub struct Token {
    pub value: SecretString,
    pub lifetime: Duration,
}

impl TokenResponse {
    /// Extracts the token. `token` wins over `access_token` (as in Docker).
    /// The remaining lifetime honours `issued_at` when the server sends it:
    /// a token issued a while ago (by a cache in between) has less left.
    pub fn into_token(self, now_unix: i64) -> Option<Token> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let expires_in = self
            .expires_in
            .filter(|&s| s > 0)
            .map(|s| s.clamp(secs(DEFAULT_LIFETIME), secs(MAX_LIFETIME)))
            .unwrap_or(secs(DEFAULT_LIFETIME));
        let issued = self
            .issued_at
            .as_deref()
            .and_then(|s| UnixTime::parse_rfc3339(s).ok())
            .map(|t| t.0);
        let remaining = match issued {
            // Trust issued_at only when it is in the past and not absurdly so.
            Some(t) if t <= now_unix && now_unix.saturating_sub(t) < expires_in => {
                expires_in - (now_unix - t)
            }
            _ => expires_in,
        };
        Some(Token {
            value: SecretString::from(value),
            // In 0..=MAX_LIFETIME by the clamp and the guard above.
            lifetime: Duration::from_secs(u64::try_from(remaining).unwrap_or(0)),
        })
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TokenKey {
    pub registry: String,
    pub scope: String,
    pub credential: CredentialId,
}

/// Cached tokens, each dropped a safety margin before it expires.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, (SecretString, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, key: &TokenKey) -> Option<SecretString> {
        let map = self.tokens.lock().expect("token cache poisoned");
        map.get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    pub fn insert(&self, key: TokenKey, token: &Token) {
        // Refresh early: 10% of the lifetime, at most 10 s.
        let margin = (token.lifetime / 10).min(Duration::from_secs(10));
        let lifetime = token.lifetime.min(MAX_LIFETIME);
        let margin = margin.min(lifetime);
        let Some(until) = Instant::now().checked_add(lifetime - margin) else {
            return;
        };
        let mut map = self.tokens.lock().expect("token cache poisoned");
        if map.len() > 10_000 {
            let now = Instant::now();
            map.retain(|_, (_, u)| *u > now);
        }
        map.insert(key, (token.value.clone(), until));
    }

    /// Forgets a token the registry rejected.
    pub fn remove(&self, key: &TokenKey) {
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    proptest::proptest! {
        /// Whatever a token endpoint says about lifetimes, parsing and caching
        /// never panic, and nothing is kept longer than MAX_LIFETIME.
        #[test]
        fn extreme_lifetimes_never_panic(expires in proptest::prelude::any::<i64>(),
                                         issued in proptest::prelude::any::<i32>(),
                                         now in proptest::prelude::any::<i64>()) {
            let issued_at = chrono::DateTime::from_timestamp(i64::from(issued) * 64, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            let json = format!(r#"{{"token":"t","expires_in":{expires},"issued_at":"{issued_at}"}}"#);
            let token = parse(&json, now).expect("a token");
            proptest::prop_assert!(token.lifetime <= MAX_LIFETIME);
            TokenCache::default().insert(
                TokenKey { registry: "r".into(), scope: "s".into(), credential: pullbroker_core::Credential::Anonymous.id() },
                &Token { value: "v".to_string().into(), lifetime: Duration::MAX },
            );
        }
    }

    #[test]
    fn huge_expires_in_is_capped() {
        for huge in [i64::MAX, u32::MAX as i64 * 1000, 10_000_000_000] {
            let t = parse(&format!(r#"{{"token":"a","expires_in":{huge}}}"#), 0).unwrap();
            assert_eq!(t.lifetime, MAX_LIFETIME);
        }
    }

    fn parse(json: &str, now: i64) -> Option<Token> {
        serde_json::from_str::<TokenResponse>(json)
            .unwrap()
            .into_token(now)
    }

    #[test]
    fn token_fields() {
        let t = parse(r#"{"token":"a","access_token":"b","expires_in":300}"#, 0).unwrap();
        assert_eq!(t.value.expose_secret(), "a");
        assert_eq!(t.lifetime, Duration::from_secs(300));
        let t = parse(r#"{"access_token":"b"}"#, 0).unwrap();
        assert_eq!(t.value.expose_secret(), "b");
        assert_eq!(t.lifetime, DEFAULT_LIFETIME, "default lifetime");
        assert_eq!(
            parse(r#"{"token":"a","expires_in":5}"#, 0)
                .unwrap()
                .lifetime,
            DEFAULT_LIFETIME,
            "minimum 60 s"
        );
        assert!(parse(r#"{"expires_in":5}"#, 0).is_none());
        assert!(parse(r#"{"token":""}"#, 0).is_none());
    }

    #[test]
    fn issued_at_shortens_remaining_lifetime() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:45:11Z")
            .unwrap()
            .timestamp();
        let t = parse(
            r#"{"token":"a","expires_in":300,"issued_at":"2026-11-22T10:42:11Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(120));
        // Future or garbage issued_at: fall back to expires_in.
        let t = parse(
            r#"{"token":"a","expires_in":300,"issued_at":"2099-01-01T00:00:00Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(300));
        let t = parse(
            r#"{"token":"a","expires_in":300,"issued_at":"yesterday"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(300));
    }

    #[test]
    fn cache_is_keyed_by_credential() {
        use pullbroker_core::Credential;
        let cache = TokenCache::default();
        let key = |c: &Credential| TokenKey {
            registry: "r".into(),
            scope: "repository:a:pull".into(),
            credential: c.id(),
        };
        let alice = Credential::basic("alice", "x");
        let bob = Credential::basic("bob", "x");
        cache.insert(
            key(&alice),
            &Token {
                value: "t".to_string().into(),
                lifetime: Duration::from_secs(60),
            },
        );
        assert!(cache.get(&key(&alice)).is_some());
        assert!(cache.get(&key(&bob)).is_none());
        cache.remove(&key(&alice));
        assert!(cache.get(&key(&alice)).is_none());
    }
}
