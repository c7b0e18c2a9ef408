//! Credentials on the wire: `Authorization` headers and bearer tokens.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::time::UnixTime;
use pullbroker_core::Credential;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use super::endpoint::{AuthScheme, Endpoint};
use super::transport::read_limited;
use super::RegistryClient;
use crate::error::RegistryError;
use crate::token::{Token, TokenKey, TokenResponse};

/// Token endpoint answers above this size are refused.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// May `credential` be sent to the token realm `realm`? Secrets (a password,
/// an identity token) never travel to a plain-HTTP realm unless plain HTTP to
/// this registry was accepted already (loopback, or the operator marked it
/// plain-HTTP/insecure): an HTTPS registry naming an `http://` realm would
/// otherwise get its credentials sent in clear text.
pub fn realm_may_carry(
    registry: &str,
    realm: &reqwest::Url,
    credential: &Credential,
    plain_accepted: bool,
) -> Result<(), RegistryError> {
    let secret = matches!(
        credential,
        Credential::Basic { .. } | Credential::IdentityToken { .. }
    );
    if realm.scheme() == "https" || !secret || plain_accepted {
        return Ok(());
    }
    Err(RegistryError::Protocol {
        registry: registry.to_string(),
        detail: format!(
            "token realm {realm} is plain HTTP while the registry is served over HTTPS: refusing to send {credential} in clear text (mark the registry plain-HTTP or insecure to allow it)"
        ),
    })
}

/// One token to fetch: from which realm, for which key, with which
/// credential. Owned, so a single-flight run can carry it.
struct TokenRequest {
    ep: Endpoint,
    realm: String,
    service: Option<String>,
    key: TokenKey,
    credential: Credential,
}

impl RegistryClient {
    /// The `Authorization` header for `repository` with `credential`, and the
    /// token cache key when it is a cached bearer token.
    pub(super) async fn authorize(
        &self,
        ep: &Endpoint,
        repository: &str,
        credential: &Credential,
    ) -> Result<(Option<HeaderValue>, Option<TokenKey>), RegistryError> {
        let header = |v: String| {
            let mut h = HeaderValue::from_str(&v).map_err(|_| RegistryError::Protocol {
                registry: ep.registry.clone(),
                detail: "credential contains characters not allowed in an HTTP header".into(),
            })?;
            h.set_sensitive(true);
            Ok::<_, RegistryError>(h)
        };
        match (&ep.auth, credential) {
            (_, Credential::RegistryToken { token }) => Ok((
                Some(header(format!("Bearer {}", token.expose_secret()))?),
                None,
            )),
            (AuthScheme::None, _) => Ok((None, None)),
            (AuthScheme::Basic, Credential::Basic { username, password }) => {
                let raw = format!("{username}:{}", password.expose_secret());
                Ok((
                    Some(header(format!("Basic {}", STANDARD.encode(raw)))?),
                    None,
                ))
            }
            (AuthScheme::Basic, _) => Ok((None, None)),
            (AuthScheme::Bearer { realm, service }, _) => {
                let key = TokenKey {
                    registry: ep.registry.clone(),
                    scope: format!("repository:{repository}:pull"),
                    credential: credential.id(),
                };
                // The hot path: a cached token needs no owned request.
                let token = match self.inner.tokens.get(&key) {
                    Some(t) => t,
                    None => {
                        self.shared_fetch(TokenRequest {
                            ep: ep.clone(),
                            realm: realm.clone(),
                            service: service.clone(),
                            key: key.clone(),
                            credential: credential.clone(),
                        })
                        .await?
                    }
                };
                Ok((
                    Some(header(format!("Bearer {}", token.expose_secret()))?),
                    Some(key),
                ))
            }
        }
    }

    /// One fetch of `request`'s token, shared by every caller asking for
    /// the same key at once, and cached.
    async fn shared_fetch(
        &self,
        request: TokenRequest,
    ) -> Result<secrecy::SecretString, RegistryError> {
        let this = self.clone();
        let token = self
            .inner
            .token_fetches
            .run(request.key.clone(), move || async move {
                let t = this.fetch_token(&request).await?;
                this.inner.tokens.insert(request.key, &t);
                Ok(t)
            })
            .await?;
        Ok(token.value)
    }

    /// Fetches a token from the realm: OAuth2 refresh-token POST for identity
    /// tokens, otherwise GET with Basic auth (or anonymously), as Docker does.
    async fn fetch_token(&self, request: &TokenRequest) -> Result<Token, RegistryError> {
        let TokenRequest {
            ep,
            realm,
            service,
            key,
            credential,
        } = request;
        let (registry, verify) = (ep.registry.as_str(), ep.verify_tls);
        let realm_url = reqwest::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| RegistryError::Protocol {
                registry: registry.to_string(),
                detail: format!("token realm {realm:?} is not an http(s) URL"),
            })?;
        // Plain HTTP to the registry itself was already accepted (loopback, or
        // marked plain-HTTP/insecure by the operator): then a plain realm is too.
        let plain_accepted = ep.base.starts_with("http://") || !ep.verify_tls;
        realm_may_carry(registry, &realm_url, credential, plain_accepted)?;
        let http = self.http(registry, verify);
        let resp = self
            .send(registry, || {
                let mut q: Vec<(&str, &str)> = vec![("scope", key.scope.as_str())];
                if let Some(s) = service {
                    q.push(("service", s.as_str()));
                }
                match credential {
                    Credential::IdentityToken { token, .. } => {
                        q.extend([
                            ("grant_type", "refresh_token"),
                            ("refresh_token", token.expose_secret()),
                            ("client_id", "pullbroker"),
                        ]);
                        http.post(realm_url.clone()).form(&q)
                    }
                    Credential::Basic { username, password } => {
                        q.push(("account", username));
                        http.get(realm_url.clone())
                            .query(&q)
                            .basic_auth(username, Some(password.expose_secret()))
                    }
                    _ => http.get(realm_url.clone()).query(&q),
                }
            })
            .await?;
        let repository = key.scope.split(':').nth(1).unwrap_or_default().to_string();
        match resp.status() {
            StatusCode::OK => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    repository,
                    detail: format!("token endpoint refused {credential} (HTTP {})", s.as_u16()),
                })
            }
            s => {
                return Err(RegistryError::Protocol {
                    registry: registry.to_string(),
                    detail: format!("token endpoint answered HTTP {}", s.as_u16()),
                })
            }
        }
        let body = read_limited(
            resp,
            MAX_TOKEN_RESPONSE,
            registry,
            self.inner.settings.timeout,
        )
        .await?;
        let now = UnixTime::from_system(SystemTime::now()).0;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|r| r.into_token(now))
            .ok_or_else(|| RegistryError::Protocol {
                registry: registry.to_string(),
                detail: "token endpoint answer has no token".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_go_to_a_plain_realm_of_an_https_registry() {
        let plain = reqwest::Url::parse("http://auth.example/token").unwrap();
        let tls = reqwest::Url::parse("https://auth.example/token").unwrap();
        let basic = Credential::Basic {
            username: "u".into(),
            password: "pw-CANARY".to_string().into(),
        };
        let identity = Credential::IdentityToken {
            username: "u".into(),
            token: "id-CANARY".to_string().into(),
        };
        for secret in [&basic, &identity] {
            let err = realm_may_carry("r.example", &plain, secret, false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("clear text") && !err.contains("CANARY"),
                "{err}"
            );
            assert!(realm_may_carry("r.example", &tls, secret, false).is_ok());
            assert!(
                realm_may_carry("r.example", &plain, secret, true).is_ok(),
                "plain HTTP accepted for this registry"
            );
        }
        assert!(
            realm_may_carry("r.example", &plain, &Credential::Anonymous, false).is_ok(),
            "nothing secret to send"
        );
    }
}
