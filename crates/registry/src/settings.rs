//! How the client reaches registries: timeouts, retries, TLS trust, and which
//! registries are spoken to over plain HTTP.

use std::net::IpAddr;
use std::time::Duration;

/// Client-wide settings. `Default` is right for public registries.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Limit for one HTTP request, from connect to the last body byte.
    pub timeout: Duration,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Extra attempts after a 429 or 5xx answer (never after connection errors).
    pub retries: u32,
    /// First backoff delay; doubles per attempt, capped by `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Registries (`host[:port]`) reached over plain HTTP only.
    pub plain_http: Vec<String>,
    /// Registries whose TLS certificate is not verified; like Docker's
    /// "insecure registries" they also fall back to plain HTTP.
    pub insecure: Vec<String>,
    /// Extra trusted CA certificates (PEM bundles).
    pub ca_pems: Vec<Vec<u8>>,
    /// Idle connections kept per host; should cover the resolver's concurrency.
    pub max_idle_per_host: usize,
    pub user_agent: String,
    /// How long a registry's `/v2/` answer (transport, auth scheme, token
    /// realm) is trusted before it is asked again.
    pub endpoint_ttl: Duration,
    /// Told the registry's name each time it answers 429 (the broker counts
    /// them in `/metrics`).
    pub on_rate_limited: Option<OnRateLimited>,
    /// Per-registry trust and transport, first match wins; replaceable at
    /// run time ([`crate::RegistryClient::set_registry_tls`]).
    pub registry_tls: Vec<RegistryTls>,
    /// The proxy variables registry requests follow (Go's rules); `None`:
    /// never proxied. Binaries pass their environment's.
    pub proxy: Option<pullbroker_core::proxy::ProxyEnv>,
}

/// How a set of registries (grant-style patterns, `*` per DNS label) is
/// reached: CAs to trust (beside the system's roots unless `ca_only`), or
/// plain HTTP the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTls {
    pub registries: Vec<String>,
    pub ca_pems: Vec<Vec<u8>>,
    pub ca_only: bool,
    pub plain_http: bool,
}

impl RegistryTls {
    pub fn covers(&self, registry: &str) -> bool {
        self.registries
            .iter()
            .any(|p| pullbroker_core::policy::glob::registry_matches(p, registry))
    }
}

/// A hook called with a registry's name for each 429 it answers.
#[derive(Clone)]
pub struct OnRateLimited(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for OnRateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRateLimited(..)")
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            plain_http: Vec::new(),
            insecure: Vec::new(),
            ca_pems: Vec::new(),
            max_idle_per_host: 64,
            user_agent: concat!("pullbroker/", env!("CARGO_PKG_VERSION")).to_string(),
            endpoint_ttl: Duration::from_secs(600),
            on_rate_limited: None,
            registry_tls: Vec::new(),
            proxy: None,
        }
    }
}

/// One way of reaching a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    HttpsNoVerify,
    Http,
}

impl ClientSettings {
    /// The defaults, with the process's proxy variables: what a binary
    /// that talks to registries starts from.
    pub fn from_env() -> Self {
        let proxy = pullbroker_core::proxy::ProxyEnv::from_vars(|k| std::env::var(k).ok());
        ClientSettings {
            proxy: proxy.is_set().then_some(proxy),
            ..Default::default()
        }
    }

    /// Transports to try for `registry`, in order. Loopback registries follow
    /// Docker: HTTPS first, then plain HTTP (containerd goes straight to HTTP).
    pub fn transports(&self, registry: &str) -> Vec<Transport> {
        self.transports_with(registry, None)
    }

    /// [`Self::transports`], with the registry's own [`RegistryTls`] if any:
    /// plain HTTP when it asks for it, HTTPS only when it names CAs.
    pub fn transports_with(&self, registry: &str, tls: Option<&RegistryTls>) -> Vec<Transport> {
        match tls {
            Some(t) if t.plain_http => return vec![Transport::Http],
            Some(t) if !t.ca_pems.is_empty() => return vec![Transport::Https],
            _ => {}
        }
        if self.plain_http.iter().any(|r| r == registry) {
            vec![Transport::Http]
        } else if self.insecure.iter().any(|r| r == registry) {
            vec![Transport::HttpsNoVerify, Transport::Http]
        } else if is_loopback(registry) {
            vec![Transport::Https, Transport::Http]
        } else {
            vec![Transport::Https]
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let (host, _) = pullbroker_core::reference::split_host_port(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The API host for a registry name: Docker Hub is served from `registry-1.docker.io`.
pub fn api_host(registry: &str) -> &str {
    if registry == pullbroker_core::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_choice() {
        let s = ClientSettings {
            plain_http: vec!["lab:5000".into()],
            insecure: vec!["self-signed.example".into()],
            ..Default::default()
        };
        assert_eq!(s.transports("lab:5000"), [Transport::Http]);
        assert_eq!(
            s.transports("self-signed.example"),
            [Transport::HttpsNoVerify, Transport::Http]
        );
        assert_eq!(
            s.transports("127.0.0.1:5001"),
            [Transport::Https, Transport::Http]
        );
        assert_eq!(
            s.transports("[::1]:5001"),
            [Transport::Https, Transport::Http]
        );
        assert_eq!(
            s.transports("localhost"),
            [Transport::Https, Transport::Http]
        );
        assert_eq!(s.transports("ghcr.io"), [Transport::Https]);
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
    }
}
