//! Image references, parsed and normalized exactly as Docker and containerd do
//! (`github.com/distribution/reference`, `ParseNormalizedNamed` + `TagNameOnly`).
//!
//! Written by hand rather than taken from `oci-client`: we need the Docker
//! normalization rules (`docker.io`, `library/`, `index.docker.io`), error
//! messages that say *where* the input is wrong, and a dependency-free core.
//!
//! Grammar (from the distribution reference package):
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | \[ IPv6address \]
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! ```
//!
//! Two deliberate strictness choices, both about strings no registry could serve:
//! an IPv6 host must be a valid IPv6 address (Docker's regex accepts `[:::]`),
//! and a port must fit in 16 bits (Docker accepts any digit string).

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry that unqualified names (`nginx`, `user/app`) live on.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, normalized to [`DOCKER_HUB`].
pub const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Docker Hub's single-component names live under `library/`.
const OFFICIAL_PREFIX: &str = "library/";
/// Maximum length of the normalized `domain/path` name.
pub const NAME_MAX: usize = 255;
/// Maximum length of a tag.
pub const TAG_MAX: usize = 128;

/// A normalized image reference: registry, repository, and a tag and/or digest.
///
/// A reference without tag and digest gets the tag `latest`, as `docker pull`
/// does. A reference with both keeps both; the digest is what identifies the
/// content, the tag is kept for humans.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A malformed image reference: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError {
    input: String,
    offset: usize,
    kind: ReferenceErrorKind,
}

/// The rule a reference broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    #[error("reference is empty")]
    Empty,
    #[error("repository name is empty")]
    EmptyRepository,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository name cannot be a 64-character hex string (did you mean `@sha256:…`?)")]
    HexOnlyName,
    #[error("invalid character {0:?} in repository name")]
    BadPathChar(char),
    #[error("repository path component is empty (doubled or trailing `/`)")]
    EmptyPathComponent,
    #[error("repository path component must start and end with a lowercase letter or digit")]
    BadPathEdge,
    #[error("invalid separator {0:?} in repository name (allowed: `.`, `_`, `__`, or dashes)")]
    BadSeparator(String),
    #[error("repository name is {0} characters long, the limit is {NAME_MAX}")]
    NameTooLong(usize),
    #[error("registry host is empty")]
    EmptyHost,
    #[error("invalid registry host label {0:?} (letters, digits and inner dashes only)")]
    BadHostLabel(String),
    #[error("invalid IPv6 address {0:?} in registry host")]
    BadIpv6(String),
    #[error("invalid registry port {0:?} (a number from 0 to 65535)")]
    BadPort(String),
    #[error("tag is empty")]
    EmptyTag,
    #[error("invalid tag {0:?} (letters, digits, `_`, `.` and `-`, not starting with `.` or `-`)")]
    BadTag(String),
    #[error("tag is {0} characters long, the limit is {TAG_MAX}")]
    TagTooLong(usize),
    #[error("digest is empty")]
    EmptyDigest,
    #[error("invalid digest: {0}")]
    Digest(DigestError),
}

impl ReferenceError {
    fn new(input: &str, offset: usize, kind: ReferenceErrorKind) -> Self {
        ReferenceError {
            input: input.to_string(),
            offset,
            kind,
        }
    }

    /// The rule that was broken.
    pub fn kind(&self) -> &ReferenceErrorKind {
        &self.kind
    }

    /// Byte offset in the input where the problem starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep messages readable for absurd inputs (fuzzers, pasted files).
        const SHOW: usize = 120;
        let shown: String = self.input.chars().take(SHOW).collect();
        let ellipsis = if self.input.chars().count() > SHOW {
            "…"
        } else {
            ""
        };
        write!(
            f,
            "invalid image reference {shown:?}{ellipsis}: {} (at byte {})",
            self.kind, self.offset
        )
    }
}

impl std::error::Error for ReferenceError {}

impl Reference {
    /// Parses and normalizes `input` the way `docker pull` would.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |offset, kind| Err(ReferenceError::new(input, offset, kind));
        if input.is_empty() {
            return err(0, ReferenceErrorKind::Empty);
        }

        // Digest: everything after the first '@'.
        let (before_digest, digest) = match input.find('@') {
            Some(at) => {
                let text = &input[at + 1..];
                if text.is_empty() {
                    return err(at + 1, ReferenceErrorKind::EmptyDigest);
                }
                match text.parse::<Digest>() {
                    Ok(d) => (&input[..at], Some(d)),
                    Err(e) => {
                        return err(at + 1 + e.offset(text), ReferenceErrorKind::Digest(e));
                    }
                }
            }
            None => (input, None),
        };

        // Tag: a ':' after the last '/' (a ':' before it belongs to host:port).
        let last_slash = before_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match before_digest[last_slash..].rfind(':') {
            Some(rel) => {
                let colon = last_slash + rel;
                let tag = &before_digest[colon + 1..];
                validate_tag(tag).map_err(|k| ReferenceError::new(input, colon + 1, k))?;
                (&before_digest[..colon], Some(tag.to_string()))
            }
            None => (before_digest, None),
        };
        if name.is_empty() {
            return err(0, ReferenceErrorKind::EmptyRepository);
        }
        if name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return err(0, ReferenceErrorKind::HexOnlyName);
        }

        // Domain split, exactly as distribution's splitDockerDomain.
        let (domain, remainder, remainder_offset) = match name.find('/') {
            Some(i) if looks_like_domain(&name[..i]) => (&name[..i], &name[i + 1..], i + 1),
            _ => (DOCKER_HUB, name, 0),
        };
        if domain != DOCKER_HUB || remainder_offset > 0 {
            validate_domain(domain).map_err(|(off, k)| ReferenceError::new(input, off, k))?;
        }
        if let Some(i) = remainder.find(|c: char| c.is_ascii_uppercase()) {
            return err(remainder_offset + i, ReferenceErrorKind::Uppercase);
        }
        validate_path(remainder)
            .map_err(|(off, k)| ReferenceError::new(input, remainder_offset + off, k))?;

        let registry = if domain == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            domain
        };
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("{OFFICIAL_PREFIX}{remainder}")
        } else {
            remainder.to_string()
        };
        let full_len = registry.len() + 1 + repository.len();
        if full_len > NAME_MAX {
            return err(0, ReferenceErrorKind::NameTooLong(full_len));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, the fully qualified name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("parse() always sets a tag or a digest"),
        }
    }

    /// The same image pinned to `digest`, keeping the tag for readability.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with only `digest` (no tag).
    pub fn by_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The registry's host without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        split_host_port(&self.registry).0
    }

    /// The registry's port, if the reference names one.
    pub fn port(&self) -> Option<u16> {
        split_host_port(&self.registry)
            .1
            .and_then(|p| p.parse().ok())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `host[:port]` → (host without brackets, port). Accepts `[v6]:port`.
pub fn split_host_port(domain: &str) -> (&str, Option<&str>) {
    if let Some(rest) = domain.strip_prefix('[') {
        if let Some(close) = rest.find(']') {
            let host = &rest[..close];
            let port = rest[close + 1..].strip_prefix(':');
            return (host, port);
        }
    }
    match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    }
}

/// distribution's rule: the first component is a domain if it contains `.` or
/// `:`, is `localhost`, or has an uppercase letter (a path never can).
fn looks_like_domain(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first
}

fn validate_domain(domain: &str) -> Result<(), (usize, ReferenceErrorKind)> {
    if domain.is_empty() {
        return Err((0, ReferenceErrorKind::EmptyHost));
    }
    let (host, port, port_offset) = if let Some(rest) = domain.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or((0, ReferenceErrorKind::BadIpv6(domain.to_string())))?;
        let addr = &rest[..close];
        let valid_chars =
            !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
        if !valid_chars || addr.parse::<Ipv6Addr>().is_err() {
            return Err((1, ReferenceErrorKind::BadIpv6(addr.to_string())));
        }
        let after = &rest[close + 1..];
        match after.strip_prefix(':') {
            Some(p) => (None, Some(p), close + 3),
            None if after.is_empty() => (None, None, 0),
            None => return Err((close + 2, ReferenceErrorKind::BadPort(after.to_string()))),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p), h.len() + 1),
            None => (Some(domain), None, 0),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err((0, ReferenceErrorKind::EmptyHost));
        }
        let mut offset = 0;
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err((offset, ReferenceErrorKind::BadHostLabel(label.to_string())));
            }
            offset += label.len() + 1;
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535);
        if !ok {
            return Err((port_offset, ReferenceErrorKind::BadPort(port.to_string())));
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), (usize, ReferenceErrorKind)> {
    if path.is_empty() {
        return Err((0, ReferenceErrorKind::EmptyRepository));
    }
    let mut offset = 0;
    for component in path.split('/') {
        validate_component(component).map_err(|(o, k)| (offset + o, k))?;
        offset += component.len() + 1;
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), (usize, ReferenceErrorKind)> {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return Err((0, ReferenceErrorKind::EmptyPathComponent));
    }
    if let Some((i, ch)) = c
        .char_indices()
        .find(|&(_, ch)| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
    {
        return Err((i, ReferenceErrorKind::BadPathChar(ch)));
    }
    if !is_alnum(bytes[0]) {
        return Err((0, ReferenceErrorKind::BadPathEdge));
    }
    if !is_alnum(bytes[bytes.len() - 1]) {
        return Err((bytes.len() - 1, ReferenceErrorKind::BadPathEdge));
    }
    // Every run of separators between alphanumerics must be one allowed separator.
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let allowed = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !allowed {
            return Err((start, ReferenceErrorKind::BadSeparator(sep.to_string())));
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), ReferenceErrorKind> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err(ReferenceErrorKind::EmptyTag),
        Some(c) if !word(c) => return Err(ReferenceErrorKind::BadTag(tag.to_string())),
        _ => {}
    }
    if !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err(ReferenceErrorKind::BadTag(tag.to_string()));
    }
    if tag.len() > TAG_MAX {
        return Err(ReferenceErrorKind::TagTooLong(tag.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:683a5ba4d6838eb126aee099c4c2cb17c6d38c20b9084c9d8dd68a48565d2c81";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    fn kind(s: &str) -> ReferenceErrorKind {
        Reference::parse(s).unwrap_err().kind().clone()
    }

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("user/app", "docker.io/user/app:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
            (
                "index.docker.io/library/nginx:1",
                "docker.io/library/nginx:1",
            ),
            ("docker.io/library/nginx", "docker.io/library/nginx:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("localhost", "docker.io/library/localhost:latest"),
            ("127.0.0.1:5001/demo/app:v1", "127.0.0.1:5001/demo/app:v1"),
            ("[::1]:5000/demo/app", "[::1]:5000/demo/app:latest"),
            ("[2001:db8::1]/demo", "[2001:db8::1]/demo:latest"),
            (
                "Registry.Example.com/app",
                "Registry.Example.com/app:latest",
            ),
            (
                "ghcr.io/org/team/app:v1.2.3-rc_1",
                "ghcr.io/org/team/app:v1.2.3-rc_1",
            ),
            ("a.b/c__d/e--f.g_h:T", "a.b/c__d/e--f.g_h:T"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "input {input}");
        }
    }

    #[test]
    fn keeps_tag_and_digest() {
        let r = Reference::parse(&format!("nginx:1.25@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.25"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.manifest_reference(), D);
        let r = Reference::parse(&format!("nginx@{D}")).unwrap();
        assert_eq!(r.tag(), None, "a digest reference gets no default tag");
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{D}"));
    }

    #[test]
    fn host_and_port() {
        let r = Reference::parse("[::1]:5000/a").unwrap();
        assert_eq!((r.host(), r.port()), ("::1", Some(5000)));
        let r = Reference::parse("example.com/a").unwrap();
        assert_eq!((r.host(), r.port()), ("example.com", None));
    }

    #[test]
    fn rejects_with_precise_errors() {
        use ReferenceErrorKind::*;
        assert_eq!(kind(""), Empty);
        assert_eq!(kind("Nginx"), Uppercase);
        assert_eq!(kind("example.com/Team/app"), Uppercase);
        assert_eq!(kind("example.com/"), EmptyRepository);
        assert_eq!(kind("example.com//app"), EmptyPathComponent);
        assert_eq!(kind("a/b/"), EmptyPathComponent);
        assert_eq!(kind("-app"), BadPathEdge);
        assert_eq!(kind("app-"), BadPathEdge);
        assert_eq!(kind("a..b"), BadSeparator("..".into()));
        assert_eq!(kind("a___b"), BadSeparator("___".into()));
        assert_eq!(kind("a.-b"), BadSeparator(".-".into()));
        assert_eq!(kind("a b"), BadPathChar(' '));
        assert_eq!(kind("nginx:"), EmptyTag);
        assert_eq!(kind("nginx:-x"), BadTag("-x".into()));
        // The ':' stands before the last '/', so "nginx:a" is a host:port.
        assert_eq!(kind("nginx:a/b"), BadPort("a".into()));
        assert_eq!(kind(&format!("nginx:{}", "a".repeat(129))), TagTooLong(129));
        assert_eq!(kind("nginx@"), EmptyDigest);
        assert!(matches!(kind("nginx@sha256:abc"), Digest(_)));
        assert!(matches!(
            kind(&format!("nginx@md5:{}", "a".repeat(32))),
            Digest(_)
        ));
        assert_eq!(kind(&"a".repeat(64)), HexOnlyName);
        assert_eq!(
            kind("exa_mple.com:5000/app"),
            BadHostLabel("exa_mple".into())
        );
        assert_eq!(kind("-ex.com/app"), BadHostLabel("-ex".into()));
        assert_eq!(kind("ex.com:99999/app"), BadPort("99999".into()));
        assert_eq!(kind("ex.com:/app"), BadPort("".into()));
        assert_eq!(kind("ex.com:5x/app"), BadPort("5x".into()));
        assert_eq!(kind("[:::]:5000/app"), BadIpv6(":::".into()));
        assert_eq!(kind("[fe80::1%eth0]/app"), BadIpv6("fe80::1%eth0".into()));
        assert_eq!(kind(":5000/app"), EmptyHost);
        assert!(matches!(
            kind(&format!("ex.com/{}", "a".repeat(250))),
            NameTooLong(257)
        ));
    }

    #[test]
    fn error_says_where() {
        let e = Reference::parse("example.com/team/App:v1").unwrap_err();
        assert_eq!(e.offset(), 17);
        let msg = e.to_string();
        assert!(msg.contains("must be lowercase"), "{msg}");
        assert!(msg.contains("at byte 17"), "{msg}");
        let e = Reference::parse(&format!("a@sha256:{}", "A".repeat(64))).unwrap_err();
        assert_eq!(e.offset(), 9);
        let long = "x".repeat(10_000) + " ";
        assert!(Reference::parse(&long).unwrap_err().to_string().len() < 400);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = Reference::parse(&s);
        }

        #[test]
        fn never_panics_on_reference_like_input(s in "[a-zA-Z0-9:/@._\\[\\]-]{0,80}") {
            let _ = Reference::parse(&s);
        }

        #[test]
        fn normalization_is_idempotent(
            host in prop::option::of("[a-z][a-z0-9]{0,8}\\.[a-z]{2,4}(:[0-9]{1,4})?"),
            // A first component with '.' would be read as a domain, as Docker does.
            path in "[a-z0-9]{1,6}([_-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?){0,2}",
            tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut s = match host { Some(h) => format!("{h}/{path}"), None => path };
            if let Some(t) = tag { s = format!("{s}:{t}"); }
            let once = Reference::parse(&s).unwrap();
            let twice = Reference::parse(&once.to_string()).unwrap();
            prop_assert_eq!(once, twice);
        }
    }
}
