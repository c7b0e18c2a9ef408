//! Bounds on every request to the API server.
//!
//! kube's client has no read timeout by default (exec and attach sessions
//! must survive), so an API server that accepts connections and never
//! answers — overloaded, or partitioned behind a load balancer — would hold
//! a list, a status write or a re-list forever. Our components make no
//! long-lived calls other than watches, so every response is bounded by
//! [`READ_TIMEOUT`], and every watch asks the server to end it after
//! [`WATCH_TIMEOUT_SECS`] (kube's watcher then resumes from its last
//! resourceVersion, no re-list), which keeps an idle watch within the bound.

use std::time::Duration;

use kube::runtime::watcher;

/// The longest wait for any response (or between two reads of a body).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-side watch timeout: well under [`READ_TIMEOUT`], so a healthy but
/// quiet watch ends normally before the read timeout would cut it.
pub const WATCH_TIMEOUT_SECS: u32 = 20;

/// `config` with the read bound set (counted from each request, not from
/// when a pooled connection went idle).
pub fn bounded(mut config: kube::Config) -> kube::Config {
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    // kube takes `HTTPS_PROXY` for a kubeconfig's cluster. That variable is
    // for registry traffic; the API server is never reached through it (and
    // this build has no proxy connector: every request would fail).
    let from_env = ["HTTPS_PROXY", "https_proxy"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter_map(|v| v.parse().ok())
        .any(|v| config.proxy_url.as_ref() == Some(&v));
    if from_env {
        config.proxy_url = None;
    }
    config
}

/// The in-cluster service account or `KUBECONFIG`, bounded.
pub async fn client() -> Result<kube::Client, crate::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| crate::Error::Connect(e.to_string()))?;
    kube::Client::try_from(bounded(config))
        .map_err(|e| crate::Error::Kube("building the client", e))
}

/// Every watch's configuration: the server ends it within
/// [`WATCH_TIMEOUT_SECS`].
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_watch_ends_before_the_read_bound_cuts_it() {
        assert!(
            Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + Duration::from_secs(5)
                < READ_TIMEOUT
        );
        assert_eq!(watch_config().timeout, Some(WATCH_TIMEOUT_SECS));
        let config = bounded(kube::Config::new("https://127.0.0.1:6443".parse().unwrap()));
        assert_eq!(config.read_timeout, Some(READ_TIMEOUT));
    }
}
