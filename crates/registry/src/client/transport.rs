//! HTTP: the clients, bounded retries, bounded reads, registry error bodies.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::RegistryClient;
use crate::challenge;
use crate::error::{from_transport, RegistryError, SetupError};
use crate::settings::{ClientSettings, RegistryTls};

/// An HTTP client with the settings' timeouts and trusted CAs (rustls on
/// ring); `verify: false` skips certificate checks. Also used by the broker
/// for its own outbound calls, so both agree on TLS and timeouts.
pub fn build_http(settings: &ClientSettings, verify: bool) -> Result<reqwest::Client, SetupError> {
    build_http_with(settings, verify, None)
}

/// [`build_http`] trusting a registry's own CAs as well (or only them).
pub(super) fn build_http_with(
    settings: &ClientSettings,
    verify: bool,
    tls: Option<&RegistryTls>,
) -> Result<reqwest::Client, SetupError> {
    // reqwest is built without a default crypto provider; ring is ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .user_agent(settings.user_agent.clone())
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_host)
        .redirect(reqwest::redirect::Policy::limited(5))
        .tcp_nodelay(true);
    b = match settings.proxy.clone() {
        // Every request asks the rules; loopback and NO_PROXY go direct.
        Some(env) => b.proxy(reqwest::Proxy::custom(move |url| {
            env.proxy_for(url.scheme(), url.host_str()?, url.port_or_known_default()?)
        })),
        None => b.no_proxy(),
    };
    for pem in &settings.ca_pems {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(SetupError::CaBundle)?;
        b = b.tls_certs_merge(certs);
    }
    if let Some(t) = tls {
        let mut certs = Vec::new();
        for pem in &t.ca_pems {
            certs.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(SetupError::CaBundle)?);
        }
        b = if t.ca_only {
            b.tls_certs_only(certs)
        } else {
            b.tls_certs_merge(certs)
        };
    }
    if !verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(SetupError::Client)
}

impl RegistryClient {
    /// Sends with bounded retries on 429 and 5xx (honouring `Retry-After`).
    /// Connection errors are not retried: a registry that is down should be
    /// reported within the timeout, not after several.
    pub(super) async fn send(
        &self,
        registry: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let s = &self.inner.settings;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = build()
                .send()
                .await
                .map_err(|e| from_transport(registry, &e, s.timeout))?;
            let status = resp.status();
            let limited = status == StatusCode::TOO_MANY_REQUESTS;
            if !limited && !status.is_server_error() {
                return Ok(resp);
            }
            let asked = retry_after(resp.headers());
            if limited {
                if let Some(hook) = &s.on_rate_limited {
                    (hook.0)(registry);
                }
                // A registry asking for longer than we would back off is
                // not retried sooner than it asks: give up now.
                if attempt > s.retries || asked.is_some_and(|a| a > s.max_backoff) {
                    return Err(RegistryError::RateLimited {
                        registry: registry.to_string(),
                        attempts: attempt,
                        retry_after: asked.map(|a| a.as_secs()),
                    });
                }
            } else if attempt > s.retries {
                return Err(RegistryError::Unavailable {
                    registry: registry.to_string(),
                    status: status.as_u16(),
                    attempts: attempt,
                });
            }
            let backoff = s.backoff.saturating_mul(1 << (attempt - 1).min(16));
            let delay = asked.unwrap_or(backoff).min(s.max_backoff);
            tracing::debug!(registry, %status, attempt, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The `error=` of a bearer challenge (`invalid_token`, `insufficient_scope`).
pub(super) fn challenge_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenge::parse)
        .find_map(|c| c.param("error").map(str::to_string))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `CODE: message` from a registry error body.
pub(super) fn registry_error_detail(body: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: String,
        #[serde(default)]
        message: String,
    }
    let errors: Errors = serde_json::from_slice(body?).ok()?;
    let parts: Vec<String> = errors
        .errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                e.code.clone()
            } else {
                format!("{}: {}", e.code, e.message)
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub(super) async fn read_limited(
    mut resp: Response,
    limit: usize,
    registry: &str,
    timeout: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| from_transport(registry, &e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol {
                registry: registry.to_string(),
                detail: format!("response larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v1"}}]}"#;
        assert_eq!(
            registry_error_detail(Some(body)).unwrap(),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_error_detail(Some(b"<html>")), None);
    }
}
