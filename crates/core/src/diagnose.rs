//! Why a pull failed, from what kubelet and containerd report (a container's
//! `waiting.message`, a `Failed` Event's note): the first step of
//! `pullbroker diagnose`. Pure string classification, checked against what
//! a real kubelet 1.32 with containerd reported for each kind of failure
//! (`../shared/fixtures/kubelet-events-v1.32/`).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullFailure {
    /// 401: no credential, or a wrong one.
    Unauthorized,
    /// 403: the credential is valid but may not pull this repository.
    Forbidden,
    /// The tag, digest or repository does not exist (containerd reports
    /// both as `not found`; the registry's 404 does not tell them apart).
    NotFound,
    /// The registry's certificate is not trusted (or not valid for its name).
    Tls,
    /// The registry's host name does not resolve.
    Dns,
    /// Nothing listens at the registry's address.
    Refused,
    /// The registry did not answer in time.
    Timeout,
    /// 429 / `toomanyrequests`.
    RateLimited,
    /// The image reference itself is invalid (kubelet never pulls).
    InvalidImageName,
    /// Not a pull failure (the image was pulled; the container did not start).
    NotAPullFailure,
    Unknown,
}

impl PullFailure {
    /// What to do about it, in one line.
    pub fn hint(self) -> &'static str {
        match self {
            PullFailure::Unauthorized => "no credential the registry accepts reached the pull: check which one applied (pod imagePullSecrets, then the kubelet plugin) and that it is valid",
            PullFailure::Forbidden => "the credential is valid but not for this repository: grant the repository, or use a credential that may pull it",
            PullFailure::NotFound => "the tag or repository does not exist: check the image name and tag",
            PullFailure::Tls => "the node does not trust the registry's certificate: install its CA on the nodes (containerd hosts.toml) or fix the certificate",
            PullFailure::Dns => "the registry's host name does not resolve from the node",
            PullFailure::Refused => "nothing listens at the registry's address: is the registry up, and is the port right?",
            PullFailure::Timeout => "the registry did not answer in time: network path, proxy or a hung registry",
            PullFailure::RateLimited => "the registry rate-limits these pulls: authenticate (rate limits are per account) or mirror the image",
            PullFailure::InvalidImageName => "the image reference is invalid: fix it in the workload",
            PullFailure::NotAPullFailure => "the image was pulled; the container failed to start",
            PullFailure::Unknown => "unrecognised failure: see the message",
        }
    }
}

/// Classifies a kubelet/containerd pull message. The most specific
/// evidence wins: an HTTP status from the registry over transport noise.
pub fn classify(message: &str) -> PullFailure {
    let m = message.to_ascii_lowercase();
    let has = |s: &str| m.contains(s);
    if has("invalid reference format")
        || has("couldn't parse image name")
        || has("invalidimagename")
    {
        PullFailure::InvalidImageName
    } else if has("oci runtime create failed")
        || has("failed to create containerd task")
        || has("restarting failed container")
    {
        PullFailure::NotAPullFailure
    } else if has("429 too many requests") || has("toomanyrequests") {
        PullFailure::RateLimited
    } else if has("401 unauthorized")
        || has("authorization failed")
        || has("no basic auth credentials")
        || has("failed to fetch oauth token")
        || has("failed to fetch anonymous token")
    {
        PullFailure::Unauthorized
    } else if has("403 forbidden") || has("denied: requested access to the resource is denied") {
        PullFailure::Forbidden
    } else if has("x509:") || has("tls: ") || has("certificate") {
        PullFailure::Tls
    } else if has("no such host") || has("server misbehaving") {
        PullFailure::Dns
    } else if has("connection refused") {
        PullFailure::Refused
    } else if has("i/o timeout")
        || has("deadline exceeded")
        || has("timeout awaiting")
        || has("tls handshake timeout")
    {
        PullFailure::Timeout
    } else if has(": not found")
        || has("manifest unknown")
        || has("code = notfound")
        || has("404 not found")
    {
        PullFailure::NotFound
    } else {
        PullFailure::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages that the fixtures do not hold, in the forms containerd 1.6–1.7
    /// prints them (for the classes no fixture case produced).
    #[test]
    fn the_classes_the_fixtures_do_not_cover() {
        for (m, want) in [
            ("failed to pull and unpack image \"r.example/a:1\": failed to resolve reference \"r.example/a:1\": pulling from host r.example failed with status code [manifests 1]: 403 Forbidden", PullFailure::Forbidden),
            ("failed to resolve reference \"r.example/a:1\": failed to do request: Head \"https://r.example/v2/a/manifests/1\": dial tcp: lookup r.example on 10.96.0.10:53: no such host", PullFailure::Dns),
            ("failed to resolve reference \"r.example/a:1\": failed to do request: Head \"https://r.example/v2/a/manifests/1\": dial tcp 10.0.0.1:443: i/o timeout", PullFailure::Timeout),
            ("failed to copy: httpReadSeeker: failed open: unexpected status code https://r.example/v2/a/blobs/sha256:ab: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit", PullFailure::RateLimited),
            ("something else entirely", PullFailure::Unknown),
        ] {
            assert_eq!(classify(m), want, "{m}");
        }
    }
}
