//! The kubelet credential provider exec protocol
//! (`credentialprovider.kubelet.k8s.io/v1`, and `v1beta1`/`v1alpha1`
//! answered in their own version), with pullbroker behind it.
//!
//! Kubelet execs the plugin per pull with a `CredentialProviderRequest` on
//! stdin — since KEP-4412 including the pod's service-account token — and
//! reads a `CredentialProviderResponse` from stdout. The plugin exchanges the
//! token at the broker (`POST /v1/exchange`) and answers with credentials keyed
//! by exactly the granted `registry/repository`, cached until shortly before
//! they expire. Every failure is a non-zero exit with one line on stderr that
//! never contains the token; no response with partial or empty credentials is
//! ever written.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const API_V1: &str = "credentialprovider.kubelet.k8s.io/v1";
pub const API_V1BETA1: &str = "credentialprovider.kubelet.k8s.io/v1beta1";
pub const API_V1ALPHA1: &str = "credentialprovider.kubelet.k8s.io/v1alpha1";
const SUPPORTED: [&str; 3] = [API_V1, API_V1BETA1, API_V1ALPHA1];
/// Requests larger than this are refused (a token is a few KiB).
pub const MAX_REQUEST: usize = 256 * 1024;

/// What kubelet sends.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderRequest {
    pub api_version: String,
    pub kind: String,
    pub image: String,
    #[serde(default)]
    pub service_account_token: Option<String>,
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
}

/// What kubelet reads back (`k8s.io/kubelet/pkg/apis/credentialprovider/v1`).
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderResponse {
    pub kind: &'static str,
    pub api_version: String,
    /// `Image`: kubelet caches per registry/path, matching our `authKey`.
    pub cache_key_type: &'static str,
    /// A Go duration; `0s` disables caching.
    pub cache_duration: String,
    pub auth: BTreeMap<String, AuthConfig>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

/// The broker's answer to an exchange.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeAnswer {
    pub registry: String,
    pub auth_key: String,
    pub username: String,
    pub password: String,
    /// Seconds until the credential expires, as the broker counts them.
    pub cache_seconds: i64,
}

/// A one-line, token-free reason for kubelet's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError(pub String);

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> PluginError {
    PluginError(msg.into())
}

/// Reads and checks a request. serde's messages can quote values (a token
/// in the wrong field), so only the position of a JSON error is reported.
pub fn parse_request(input: &[u8]) -> Result<CredentialProviderRequest, PluginError> {
    if input.len() > MAX_REQUEST {
        return Err(err(format!(
            "request on stdin is larger than {MAX_REQUEST} bytes"
        )));
    }
    let req: CredentialProviderRequest = serde_json::from_slice(input).map_err(|e| {
        err(format!(
            "request on stdin is not a valid CredentialProviderRequest (JSON {:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if !SUPPORTED.contains(&req.api_version.as_str()) {
        let shown: String = req.api_version.chars().take(80).collect();
        return Err(err(format!(
            "unsupported apiVersion {shown:?} (supported: {})",
            SUPPORTED.join(", ")
        )));
    }
    if req.kind != "CredentialProviderRequest" {
        let shown: String = req.kind.chars().take(80).collect();
        return Err(err(format!(
            "kind is {shown:?}, expected \"CredentialProviderRequest\""
        )));
    }
    if req.image.trim().is_empty() {
        return Err(err("request has no image"));
    }
    Ok(req)
}

/// `cacheDuration`: the credential's remaining life minus a safety margin
/// (a tenth of it, at least 30 s), so kubelet never uses an expired one.
pub fn cache_duration(remaining_secs: i64) -> Duration {
    let remaining = remaining_secs.max(0) as u64;
    let margin = (remaining / 10).max(30);
    Duration::from_secs(remaining.saturating_sub(margin))
}

/// Builds the response, refusing answers that would make kubelet cache a
/// useless or too-broad credential.
pub fn build_response(
    req: &CredentialProviderRequest,
    answer: ExchangeAnswer,
) -> Result<CredentialProviderResponse, PluginError> {
    if answer.username.is_empty() || answer.password.is_empty() {
        return Err(err("pullbroker answered with an empty credential"));
    }
    let image_path = image_path(&req.image);
    let key = answer.auth_key.trim_end_matches('/');
    let covers = key.split('/').next() == Some(answer.registry.as_str())
        && (image_path == key
            || image_path.starts_with(&format!("{key}/"))
            || key == answer.registry);
    if !covers {
        return Err(err(format!("pullbroker answered with auth key {key:?}, which does not cover the image being pulled")));
    }
    let mut auth = BTreeMap::new();
    auth.insert(
        key.to_string(),
        AuthConfig {
            username: answer.username,
            password: answer.password,
        },
    );
    Ok(CredentialProviderResponse {
        kind: "CredentialProviderResponse",
        api_version: req.api_version.clone(),
        cache_key_type: "Image",
        cache_duration: format!("{}s", cache_duration(answer.cache_seconds).as_secs()),
        auth,
    })
}

/// `registry/path` of an image as kubelet matches it (no tag or digest, and
/// Docker Hub names normalized so they compare with the broker's answer).
pub fn image_path(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let name = match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_registry = !first.is_empty() && (first.contains(['.', ':']) || first == "localhost");
    match (has_registry, first) {
        (true, "index.docker.io") => format!("docker.io/{rest}"),
        (true, _) => name.to_string(),
        (false, _) if name.contains('/') => format!("docker.io/{name}"),
        (false, _) => format!("docker.io/library/{name}"),
    }
}

/// Removes `secret` from a message (defence in depth: the broker's errors
/// never carry the token, but a proxy's might).
pub fn scrub(message: &str, secret: Option<&str>) -> String {
    let one_line: String = message.replace(['\n', '\r'], " ");
    match secret {
        Some(s) if s.len() >= 8 => one_line.replace(s, "<redacted>"),
        _ => one_line,
    }
}

/// The broker URL must be `https://`: the pod's service-account token travels
/// in the request. Plain `http://` only to a loopback broker (development).
pub fn check_broker_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("the broker URL must start with https://".into());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "the broker URL must be https:// (the service-account token travels in the request); plain http:// is only allowed to a loopback broker, not {host:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn broker_url_is_https_or_loopback_http() {
        for ok in [
            "https://pullbroker.svc:8443",
            "http://127.0.0.1:8480",
            "http://[::1]:1/x",
            "http://localhost:8480",
        ] {
            assert!(super::check_broker_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://pullbroker.svc:8480",
            "http://10.0.0.1",
            "ftp://x",
            "pullbroker:8480",
            "http://127.0.0.1.evil.example/",
        ] {
            assert!(super::check_broker_url(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    fn request(api: &str, image: &str) -> CredentialProviderRequest {
        parse_request(format!(r#"{{"apiVersion":"{api}","kind":"CredentialProviderRequest","image":"{image}","serviceAccountToken":"t"}}"#).as_bytes()).unwrap()
    }

    fn answer(key: &str) -> ExchangeAnswer {
        ExchangeAnswer {
            registry: key.split('/').next().unwrap().to_string(),
            auth_key: key.to_string(),
            username: "pullbroker".into(),
            password: "pbc1.x.y".into(),
            cache_seconds: 600,
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(request(API_V1BETA1, "a/b").api_version, API_V1BETA1);
        let bad = |s: &str| parse_request(s.as_bytes()).unwrap_err().0;
        assert!(bad("{").contains("not a valid CredentialProviderRequest"));
        assert!(bad(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v2","kind":"CredentialProviderRequest","image":"x"}"#).contains("unsupported apiVersion"));
        assert!(bad(
            r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","image":"x"}"#
        )
        .contains("kind is"));
        assert!(bad(r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":""}"#).contains("no image"));
        let leaky = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"x","serviceAccountAnnotations":"eyJSECRETTOKEN"}"#;
        assert!(!bad(leaky).contains("eyJSECRETTOKEN"));
    }

    #[test]
    fn cache_durations_keep_a_margin() {
        assert_eq!(cache_duration(600).as_secs(), 540);
        assert_eq!(cache_duration(100).as_secs(), 70);
        assert_eq!(cache_duration(20).as_secs(), 0);
        assert_eq!(cache_duration(-5).as_secs(), 0);
        assert_eq!(cache_duration(3600).as_secs(), 3240);
    }

    #[test]
    fn image_paths() {
        assert_eq!(
            image_path("reg.example:5000/a/b:v1"),
            "reg.example:5000/a/b"
        );
        assert_eq!(image_path("reg.example/a/b@sha256:abc"), "reg.example/a/b");
        assert_eq!(image_path("nginx:1.27"), "docker.io/library/nginx");
        assert_eq!(image_path("user/app"), "docker.io/user/app");
        assert_eq!(
            image_path("index.docker.io/user/app:1"),
            "docker.io/user/app"
        );
        assert_eq!(image_path("localhost/app:1"), "localhost/app");
    }

    #[test]
    fn responses_cover_exactly_the_image() {
        let req = request(API_V1, "reg.example:5000/demo/app:v1");
        let resp = build_response(&req, answer("reg.example:5000/demo/app")).unwrap();
        assert_eq!(resp.api_version, API_V1);
        assert_eq!(resp.cache_duration, "540s");
        assert!(resp.auth.contains_key("reg.example:5000/demo/app"));
        // A key for another repository, or a lookalike prefix, is refused.
        assert!(build_response(&req, answer("reg.example:5000/demo/other")).is_err());
        assert!(build_response(
            &request(API_V1, "reg.example:5000/demo/app-evil:v1"),
            answer("reg.example:5000/demo/app")
        )
        .is_err());
        assert!(build_response(&req, answer("evil.example/demo/app")).is_err());
        let mut empty = answer("reg.example:5000/demo/app");
        empty.password.clear();
        assert!(build_response(&req, empty).is_err());
    }

    /// kubelet's provider cache as `kubernetes-facts.md` records it: an entry
    /// is stored under the key its `cacheKeyType` names and found again by
    /// the same key for a later image; a hit hands over the cached auth map,
    /// whose keys kubelet then matches by string prefix (URLsMatch).
    struct KubeletCache(Vec<(String, CredentialProviderResponse)>);

    fn cache_key(cache_type: &str, image: &str) -> String {
        let path = image_path(image);
        match cache_type {
            "Image" => path,
            "Registry" => path.split('/').next().unwrap_or_default().to_string(),
            "Global" => String::new(),
            other => panic!("kubelet ignores a response with cacheKeyType {other:?}"),
        }
    }

    impl KubeletCache {
        fn store(&mut self, image: &str, resp: CredentialProviderResponse) {
            self.0.push((cache_key(resp.cache_key_type, image), resp));
        }
        /// The credential kubelet would use for `image` from its cache alone.
        fn offered(&self, image: &str) -> Option<String> {
            let path = image_path(image);
            self.0
                .iter()
                .filter(|(k, r)| *k == cache_key(r.cache_key_type, image))
                .flat_map(|(_, r)| r.auth.iter())
                .find(|(key, _)| path.starts_with(key.as_str()))
                .map(|(_, a)| a.password.clone())
        }
    }

    /// Whatever is granted, the plugin answers `Image`: a credential for one
    /// repository is never offered from kubelet's cache for another — not a
    /// sibling, not a lookalike prefix (`app` vs `app-admin`), not a child.
    #[test]
    fn kubelets_cache_never_offers_a_credential_for_another_repository() {
        let granted = [
            "reg.example/team-a/app:v1",
            "reg.example:5000/team-a/app:v1",
            "nginx:1.27",
            "reg.example/team-a/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ];
        let others = [
            "reg.example/team-a/app-admin:v1",
            "reg.example/team-a/app/sub:v1",
            "reg.example/team-a/other:v1",
            "reg.example/team-b/app:v1",
            "reg.example:5000/team-a/other:v1",
            "docker.io/library/nginx-admin:1",
            "redis:7",
        ];
        for g in granted {
            let req = request(API_V1, g);
            let resp = build_response(&req, answer(&image_path(g))).unwrap();
            assert_eq!(resp.cache_key_type, "Image", "the narrowest key, always");
            let mut cache = KubeletCache(Vec::new());
            cache.store(g, resp);
            assert!(cache.offered(g).is_some(), "{g}: its own image hits");
            let same_repo_other_tag = format!("{}:v2", image_path(g));
            assert!(
                cache.offered(&same_repo_other_tag).is_some(),
                "{g}: a tag of the same repository hits"
            );
            for o in others {
                assert_eq!(cache.offered(o), None, "{g}'s credential offered for {o}");
            }
        }
        // Why not `Registry`: the same answer cached per registry would be
        // offered for the lookalike `app-admin` by kubelet's prefix match.
        let g = "reg.example/team-a/app:v1";
        let mut wide =
            build_response(&request(API_V1, g), answer("reg.example/team-a/app")).unwrap();
        wide.cache_key_type = "Registry";
        let mut cache = KubeletCache(Vec::new());
        cache.store(g, wide);
        assert!(cache.offered("reg.example/team-a/app-admin:v1").is_some());
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub("bad token eyJabcdefgh\nsecond", Some("eyJabcdefgh")),
            "bad token <redacted> second"
        );
    }
}
