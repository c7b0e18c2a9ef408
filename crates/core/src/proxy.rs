//! Which proxy a request goes through, by the rules Kubernetes components
//! and containerd follow: Go's `http.ProxyFromEnvironment`
//! (`golang.org/x/net/http/httpproxy`). Pure: the variables are passed in.
//!
//! - `HTTPS_PROXY` for `https://` URLs, `HTTP_PROXY` for `http://` ones
//!   (upper case first, then lower case); an empty value means none, a value
//!   without a scheme is `http://`.
//! - `localhost` and loopback addresses are never proxied.
//! - `NO_PROXY` (comma-separated): `*` disables proxying; an IP address or
//!   CIDR matches addresses; `example.com` matches it and its subdomains,
//!   `.example.com` and `*.example.com` its subdomains only; an entry with
//!   `:port` matches that port only.
//!
//! Written by hand: reqwest's own `NO_PROXY` reading follows curl (no ports,
//! different suffix rules), and cluster operators write these variables for
//! Go programs.

use std::net::IpAddr;

/// The proxy variables of an environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: String,
}

impl std::fmt::Debug for ProxyEnv {
    // Proxy URLs may carry a user and password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEnv")
            .field("http_proxy", &self.http_proxy.as_ref().map(|_| "[set]"))
            .field("https_proxy", &self.https_proxy.as_ref().map(|_| "[set]"))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyEnv {
    /// Reads the variables through `var` (`std::env::var(..).ok()` in a
    /// binary), as Go does: upper case wins over lower case.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> ProxyEnv {
        let get = |upper: &str, lower: &str| {
            var(upper)
                .or_else(|| var(lower))
                .filter(|v| !v.trim().is_empty())
        };
        ProxyEnv {
            http_proxy: get("HTTP_PROXY", "http_proxy"),
            https_proxy: get("HTTPS_PROXY", "https_proxy"),
            no_proxy: get("NO_PROXY", "no_proxy").unwrap_or_default(),
        }
    }

    /// Whether any proxy is set at all.
    pub fn is_set(&self) -> bool {
        self.http_proxy.is_some() || self.https_proxy.is_some()
    }

    /// The proxy URL for a request to `scheme://host:port`, if any. `host`
    /// is a DNS name or an IP address (IPv6 without brackets).
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Option<String> {
        let proxy = match scheme {
            "https" => self.https_proxy.as_ref(),
            "http" => self.http_proxy.as_ref(),
            _ => None,
        }?;
        if !self.use_proxy(host, port) {
            return None;
        }
        let proxy = proxy.trim();
        Some(if proxy.contains("://") {
            proxy.to_string()
        } else {
            format!("http://{proxy}")
        })
    }

    /// Go's `useProxy`: false for loopback and whatever `NO_PROXY` names.
    fn use_proxy(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return false;
        }
        for entry in self.no_proxy.split(',') {
            let entry = entry.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                return false;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                if let (Ok(net), Ok(bits), Some(ip)) = (net.parse::<IpAddr>(), bits.parse(), ip) {
                    if cidr_contains(net, bits, ip) {
                        return false;
                    }
                }
                continue;
            }
            let (phost, pport) = split_port(&entry);
            if let Ok(pip) = phost
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                if ip == Some(pip) && pport.is_none_or(|p| p == port) {
                    return false;
                }
                continue;
            }
            // `*.example.com` is `.example.com`; a name without a leading dot
            // also matches itself.
            let phost = phost.strip_prefix('*').unwrap_or(phost);
            let (suffix, exact) = match phost.strip_prefix('.') {
                Some(_) => (phost.to_string(), false),
                None => (format!(".{phost}"), true),
            };
            let matches = host.ends_with(&suffix) || (exact && host == suffix[1..]);
            if matches && pport.is_none_or(|p| p == port) {
                return false;
            }
        }
        true
    }
}

/// `host:port` into its parts; a bare IPv6 address has no port.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if entry.starts_with('[') {
        if let Some((h, rest)) = entry.split_once(']') {
            return (&h[1..], rest.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn cidr_contains(net: IpAddr, bits: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(no_proxy: &str) -> ProxyEnv {
        ProxyEnv {
            http_proxy: Some("proxy.corp:3128".into()),
            https_proxy: Some("http://proxy.corp:3128".into()),
            no_proxy: no_proxy.into(),
        }
    }

    /// Cases from Go's `httpproxy` tests (`proxy_test.go`), and ours.
    #[test]
    fn go_rules() {
        let via = Some("http://proxy.corp:3128".to_string());
        let e = env("");
        assert_eq!(e.proxy_for("https", "registry.corp", 443), via);
        assert_eq!(
            e.proxy_for("http", "registry.corp", 80),
            via,
            "scheme added"
        );
        for host in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
            assert_eq!(e.proxy_for("https", host, 443), None, "{host}");
        }
        assert_eq!(env("*").proxy_for("https", "a.b", 443), None);
        let e = env("foobar.com, .barbaz.net, *.qux.org, 10.0.0.0/8, 192.168.1.7, example.org:8443, [2001:db8::1]:5000");
        let direct = |host: &str, port: u16| e.proxy_for("https", host, port).is_none();
        assert!(direct("foobar.com", 443));
        assert!(direct("www.foobar.com", 443));
        assert!(!direct("xfoobar.com", 443), "a suffix match is by label");
        assert!(!direct("barbaz.net", 443), ".domain: subdomains only");
        assert!(direct("www.barbaz.net", 443));
        assert!(!direct("qux.org", 443), "*.domain: subdomains only");
        assert!(direct("a.qux.org", 443));
        assert!(direct("10.1.2.3", 443));
        assert!(!direct("11.1.2.3", 443));
        assert!(direct("192.168.1.7", 443));
        assert!(!direct("192.168.1.8", 443));
        assert!(direct("example.org", 8443));
        assert!(
            !direct("example.org", 443),
            "a port entry matches its port only"
        );
        assert!(direct("2001:db8::1", 5000));
        assert!(!direct("2001:db8::1", 443));
        assert!(!direct("registry.corp", 443));
    }

    #[test]
    fn variables_are_read_as_go_reads_them() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            ProxyEnv::from_vars(move |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let e = vars(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
        ]);
        assert_eq!(e.https_proxy.as_deref(), Some("http://upper:1"));
        let e = vars(&[("https_proxy", "http://lower:1"), ("no_proxy", ".corp")]);
        assert_eq!(e.https_proxy.as_deref(), Some("http://lower:1"));
        assert_eq!(e.no_proxy, ".corp");
        // https URLs never fall back to HTTP_PROXY.
        let e = vars(&[("HTTP_PROXY", "http://p:1")]);
        assert_eq!(e.proxy_for("https", "r.example", 443), None);
        assert!(vars(&[("HTTPS_PROXY", " ")]).https_proxy.is_none());
        let secret = vars(&[("HTTPS_PROXY", "http://user:CANARY@p:1")]);
        assert!(!format!("{secret:?}").contains("CANARY"));
    }
}
