//! Docker config JSON (`.dockerconfigjson`, `~/.docker/config.json`, and the
//! legacy `.dockercfg`), parsed strictly, and the kubelet's rules for which
//! entry serves which image.
//!
//! Parsing walks a [`serde_json::Value`] by hand instead of deriving
//! `Deserialize`: serde's type errors quote the offending *value*
//! (`invalid type: string "hunter2"…`), and a password must never reach an
//! error message. Our errors name the entry and field only.
//!
//! Matching follows `k8s.io/kubernetes/pkg/credentialprovider` (`BasicDockerKeyring`):
//! - a key may carry a scheme (`https://`), a port, and a path; `/v1/` and
//!   `/v2/` path prefixes mean "the whole registry";
//! - hosts match label by label, each label a glob (`*` = any run of characters
//!   inside one label, `?` = one character), so `*.example.com` matches
//!   `a.example.com` but not `a.b.example.com` or `example.com`;
//! - ports must be equal (both absent, or the same number);
//! - the key's path must be a string prefix of the image's repository path;
//! - `index.docker.io` means Docker Hub (`docker.io`).
//!
//! All matching entries are returned, most specific first (longest path, then
//! fewest wildcards, then longest key), so a client can try each in turn.
//! Two differences from kubelet, both documented choices: host comparison is
//! ASCII case-insensitive (DNS is), and `[...]` character classes are not
//! special in labels.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::credential::Credential;
use crate::keychain::Keychain;
use crate::reference::{Reference, DOCKER_HUB, DOCKER_HUB_LEGACY};

mod helpers;
mod pattern;

pub use helpers::HelperCall;
use helpers::HelperInfo;
pub use pattern::AuthPattern;

/// Docker's `auth` is standard base64; tools disagree on padding, so accept both.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Fields Docker's `AuthConfig` knows; anything else in an entry is an error.
const ENTRY_FIELDS: &[&str] = &[
    "auth",
    "username",
    "password",
    "email",
    "serveraddress",
    "identitytoken",
    "registrytoken",
];

/// A parsed docker config: one entry per `auths` key.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    entries: Vec<AuthEntry>,
    helper_entries: Vec<String>,
    helpers: HelperInfo,
}

/// One `auths` entry.
#[derive(Debug, Clone)]
pub struct AuthEntry {
    key: String,
    pattern: AuthPattern,
    credential: Credential,
}

/// What is wrong with a docker config, naming the entry and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfigError {
    /// The `auths` key the problem is in, if any.
    pub entry: Option<String>,
    /// The field inside that entry, if any.
    pub field: Option<&'static str>,
    /// What is wrong. Never contains secret material.
    pub problem: String,
}

impl fmt::Display for DockerConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.entry, self.field) {
            (Some(e), Some(field)) => write!(f, "auths[{e:?}].{field}: {}", self.problem),
            (Some(e), None) => write!(f, "auths[{e:?}]: {}", self.problem),
            (None, _) => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for DockerConfigError {}

fn top(problem: impl Into<String>) -> DockerConfigError {
    DockerConfigError {
        entry: None,
        field: None,
        problem: problem.into(),
    }
}

fn entry_err(
    entry: &str,
    field: Option<&'static str>,
    problem: impl Into<String>,
) -> DockerConfigError {
    DockerConfigError {
        entry: Some(entry.to_string()),
        field,
        problem: problem.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses JSON, reporting only the position of a syntax error (serde_json's
/// syntax messages do not quote values, but we keep even those out).
pub(crate) fn parse_json(bytes: &[u8], what: &str) -> Result<Value, DockerConfigError> {
    serde_json::from_slice(bytes).map_err(|e| {
        top(format!(
            "{what} is not valid JSON ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

impl DockerConfig {
    /// Parses a `.dockerconfigjson` / `config.json` document (`{"auths": {…}}`).
    pub fn parse(bytes: &[u8]) -> Result<Self, DockerConfigError> {
        let value = parse_json(bytes, "docker config")?;
        let Value::Object(root) = value else {
            return Err(top(format!(
                "docker config must be a JSON object, found {}",
                type_name(&value)
            )));
        };
        let helpers = HelperInfo::from_root(&root)?;
        let empty = Map::new();
        let auths = match root.get("auths") {
            // A config may name only helpers (`docker-credential-gcloud configure-docker`).
            None if helpers.store.is_some() || !helpers.per_registry.is_empty() => &empty,
            None => return Err(top("docker config has no \"auths\" object")),
            Some(Value::Object(a)) => a,
            Some(other) => {
                return Err(top(format!(
                    "\"auths\" must be an object, found {}",
                    type_name(other)
                )))
            }
        };
        let mut config = Self::from_auths(auths, &helpers)?;
        config.helpers = helpers;
        Ok(config)
    }

    /// Parses a legacy `.dockercfg` document (the `auths` map at top level).
    pub fn parse_legacy(bytes: &[u8]) -> Result<Self, DockerConfigError> {
        match parse_json(bytes, ".dockercfg")? {
            Value::Object(auths) => Self::from_auths(&auths, &HelperInfo::default()),
            other => Err(top(format!(
                ".dockercfg must be a JSON object, found {}",
                type_name(&other)
            ))),
        }
    }

    fn from_auths(
        auths: &Map<String, Value>,
        helpers: &HelperInfo,
    ) -> Result<Self, DockerConfigError> {
        let mut config = DockerConfig::default();
        for (key, value) in auths {
            let pattern = AuthPattern::parse(key).map_err(|p| entry_err(key, None, p))?;
            let Value::Object(fields) = value else {
                return Err(entry_err(
                    key,
                    None,
                    format!("must be an object, found {}", type_name(value)),
                ));
            };
            if fields.is_empty() && helpers.covers(key) {
                config.helper_entries.push(key.clone());
                continue;
            }
            let credential = parse_entry(key, fields)?;
            config.entries.push(AuthEntry {
                key: key.clone(),
                pattern,
                credential,
            });
        }
        Ok(config)
    }

    /// A config with a single entry.
    pub fn single(registry: &str, credential: Credential) -> Result<Self, DockerConfigError> {
        let pattern = AuthPattern::parse(registry).map_err(|p| entry_err(registry, None, p))?;
        Ok(DockerConfig {
            entries: vec![AuthEntry {
                key: registry.to_string(),
                pattern,
                credential,
            }],
            helper_entries: Vec::new(),
            helpers: HelperInfo::default(),
        })
    }

    /// The entries `keep` accepts, as a config of their own (no helpers):
    /// one credential of a secret that holds several.
    pub fn retain(&self, keep: impl Fn(&AuthEntry) -> bool) -> DockerConfig {
        DockerConfig {
            entries: self.entries.iter().filter(|e| keep(e)).cloned().collect(),
            helper_entries: Vec::new(),
            helpers: HelperInfo::default(),
        }
    }

    /// All entries, in key order.
    pub fn entries(&self) -> &[AuthEntry] {
        &self.entries
    }

    /// Keys left to credential helpers (`credsStore`/`credHelpers`), which
    /// pullbroker does not run; callers should warn about them.
    pub fn helper_entries(&self) -> &[String] {
        &self.helper_entries
    }

    /// The credential helper Docker would run for `image`: its `credHelpers`
    /// entry first; else, when no `auths` entry holds credentials for it, the
    /// `credsStore`. `server` is what Docker passes the helper (Docker Hub's
    /// legacy `https://index.docker.io/v1/`, otherwise `host[:port]`).
    pub fn helper_for(&self, image: &Reference) -> Option<HelperCall> {
        let host = image.host().to_ascii_lowercase();
        let hostport = match image.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let hub = hostport == DOCKER_HUB;
        let server = if hub {
            "https://index.docker.io/v1/".to_string()
        } else {
            hostport.clone()
        };
        let names: Vec<&str> = if hub {
            vec!["https://index.docker.io/v1/", DOCKER_HUB, DOCKER_HUB_LEGACY]
        } else {
            vec![hostport.as_str()]
        };
        let per_registry = self.helpers.per_registry.iter().find(|(k, _)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            names
                .iter()
                .any(|n| n.trim_start_matches("https://").trim_end_matches('/') == k)
        });
        if let Some((_, helper)) = per_registry {
            return Some(HelperCall {
                helper: helper.clone(),
                server,
            });
        }
        if !self.candidates(image).is_empty() {
            return None;
        }
        self.helpers
            .store
            .clone()
            .map(|helper| HelperCall { helper, server })
    }

    /// Entries that apply to `image`, most specific first.
    pub fn candidates(&self, image: &Reference) -> Vec<&AuthEntry> {
        let mut matching: Vec<&AuthEntry> = self
            .entries
            .iter()
            .filter(|e| e.pattern.matches(image))
            .collect();
        matching.sort_by(|a, b| {
            b.pattern
                .specificity()
                .cmp(&a.pattern.specificity())
                .then_with(|| b.key.len().cmp(&a.key.len()))
                .then_with(|| b.key.cmp(&a.key))
        });
        matching
    }

    /// The document as `.dockerconfigjson` JSON. Contains the secrets: the name
    /// says so, and the caller decides where it goes.
    pub fn to_json_exposing_secrets(&self) -> String {
        let mut auths = Map::new();
        for e in &self.entries {
            let mut fields = Map::new();
            let c = &e.credential;
            match c {
                Credential::Anonymous => {}
                Credential::Basic { username, .. } => {
                    let secret = c.secret().unwrap_or_default();
                    fields.insert("username".into(), username.clone().into());
                    fields.insert("password".into(), secret.into());
                    // `auth` splits at the first ':' (Docker, kubelet): a user
                    // name with a ':' is only representable in the fields.
                    if !username.contains(':') {
                        fields.insert(
                            "auth".into(),
                            STANDARD.encode(format!("{username}:{secret}")).into(),
                        );
                    }
                }
                Credential::IdentityToken { username, .. } => {
                    fields.insert("username".into(), username.clone().into());
                    fields.insert(
                        "identitytoken".into(),
                        c.secret().unwrap_or_default().into(),
                    );
                }
                Credential::RegistryToken { .. } => {
                    fields.insert(
                        "registrytoken".into(),
                        c.secret().unwrap_or_default().into(),
                    );
                }
            }
            auths.insert(e.key.clone(), Value::Object(fields));
        }
        let mut root = Map::new();
        root.insert("auths".into(), Value::Object(auths));
        Value::Object(root).to_string()
    }
}

impl Keychain for DockerConfig {
    fn credentials_for(&self, image: &Reference) -> Vec<Credential> {
        self.candidates(image)
            .into_iter()
            .map(|e| e.credential.clone())
            .collect()
    }
}

impl AuthEntry {
    /// The key as written in the file.
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn pattern(&self) -> &AuthPattern {
        &self.pattern
    }
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
}

fn string_field<'a>(
    key: &str,
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, DockerConfigError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(entry_err(
            key,
            Some(name),
            format!("must be a string, found {}", type_name(v)),
        )),
    }
}

fn parse_entry(key: &str, fields: &Map<String, Value>) -> Result<Credential, DockerConfigError> {
    if let Some(unknown) = fields.keys().find(|k| !ENTRY_FIELDS.contains(&k.as_str())) {
        return Err(entry_err(
            key,
            None,
            format!(
                "unknown field {unknown:?} (known: {})",
                ENTRY_FIELDS.join(", ")
            ),
        ));
    }
    let auth = string_field(key, fields, "auth")?;
    let mut username = string_field(key, fields, "username")?.map(str::to_string);
    let mut password = string_field(key, fields, "password")?.map(str::to_string);
    let identity = string_field(key, fields, "identitytoken")?;
    let registry_token = string_field(key, fields, "registrytoken")?;
    string_field(key, fields, "email")?;
    string_field(key, fields, "serveraddress")?;

    if let Some(auth) = auth {
        let decoded = LENIENT_BASE64
            .decode(auth.trim())
            .map_err(|_| entry_err(key, Some("auth"), "is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| entry_err(key, Some("auth"), "does not decode to UTF-8 text"))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            entry_err(
                key,
                Some("auth"),
                "must decode to \"username:password\" (no ':' found)",
            )
        })?;
        match &username {
            Some(u) if u != user => {
                return Err(entry_err(
                    key,
                    Some("username"),
                    "contradicts the user name inside \"auth\"",
                ))
            }
            _ => username = Some(user.to_string()),
        }
        match &password {
            Some(p) if p != pass => {
                return Err(entry_err(
                    key,
                    Some("password"),
                    "contradicts the password inside \"auth\"",
                ))
            }
            _ => password = Some(pass.to_string()),
        }
    }
    let username = username.filter(|u| !u.is_empty());
    let password = password.filter(|p| !p.is_empty());

    if let Some(token) = identity {
        return Ok(Credential::IdentityToken {
            username: username.unwrap_or_else(|| "<token>".to_string()),
            token: SecretString::from(token.to_string()),
        });
    }
    if let Some(token) = registry_token {
        return Ok(Credential::RegistryToken {
            token: SecretString::from(token.to_string()),
        });
    }
    match (username, password) {
        (Some(u), Some(p)) => Ok(Credential::basic(u, p)),
        (Some(_), None) => Err(entry_err(key, Some("password"), "is missing or empty")),
        (None, Some(_)) => Err(entry_err(key, Some("username"), "is missing or empty")),
        (None, None) => Err(entry_err(
            key,
            None,
            "has no credentials (needs \"auth\", \"username\"+\"password\", \"identitytoken\" or \"registrytoken\")",
        )),
    }
}

/// A summary of entries for listings: key, kind, user — never secrets.
pub fn summarize(config: &DockerConfig) -> BTreeMap<String, (&'static str, Option<String>)> {
    config
        .entries
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                (
                    e.credential.kind(),
                    e.credential.username().map(str::to_string),
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::pattern::glob_label;
    use super::*;
    use proptest::prelude::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn cfg(json: &str) -> Result<DockerConfig, DockerConfigError> {
        DockerConfig::parse(json.as_bytes())
    }

    fn users_for(c: &DockerConfig, image: &str) -> Vec<String> {
        c.credentials_for(&Reference::parse(image).unwrap())
            .iter()
            .map(|c| c.username().unwrap_or("-").to_string())
            .collect()
    }

    #[test]
    fn parses_auth_forms() {
        let c = cfg(&format!(
            r#"{{"auths":{{
              "https://index.docker.io/v1/":{{"auth":"{}"}},
              "ghcr.io":{{"username":"bob","password":"pw:with:colons"}},
              "reg.example:5000":{{"auth":"{}","username":"carol","email":"c@example"}},
              "acr.example":{{"auth":"{}","identitytoken":"refresh"}},
              "tok.example":{{"registrytoken":"bearer"}}
            }}}}"#,
            b64("alice:pa:ss"),
            b64("carol:x"),
            b64("00000000-0000-0000-0000-000000000000:")
        ))
        .unwrap();
        let by_key = |k: &str| {
            c.entries()
                .iter()
                .find(|e| e.key() == k)
                .unwrap()
                .credential()
                .clone()
        };
        let alice = by_key("https://index.docker.io/v1/");
        assert_eq!(alice.username(), Some("alice"));
        assert_eq!(alice.secret(), Some("pa:ss"), "password may contain ':'");
        assert_eq!(by_key("ghcr.io").secret(), Some("pw:with:colons"));
        assert_eq!(by_key("reg.example:5000").username(), Some("carol"));
        assert_eq!(by_key("acr.example").kind(), "identity-token");
        assert_eq!(by_key("tok.example").kind(), "registry-token");
    }

    /// Found by the fuzzer: a user name with a ':' written into `auth` came
    /// back as another user name.
    #[test]
    fn a_user_name_with_a_colon_round_trips() {
        let c = cfg(r#"{"auths":{"r.io":{"username":"u:x","password":"p"}}}"#).unwrap();
        let again = cfg(&c.to_json_exposing_secrets()).unwrap();
        assert_eq!(again.entries()[0].credential().username(), Some("u:x"));
        assert_eq!(again.entries()[0].credential().secret(), Some("p"));
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let auth = b64("u:p1").trim_end_matches('=').to_string();
        let c = cfg(&format!(r#"{{"auths":{{"r.io":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        assert_eq!(c.entries()[0].credential().secret(), Some("p1"));
    }

    #[test]
    fn errors_name_entry_and_field_without_secrets() {
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "must be a JSON object"),
            ("{".into(), "not valid JSON"),
            (r#"{"x":1}"#.into(), "no \"auths\""),
            (r#"{"auths":[]}"#.into(), "\"auths\" must be an object"),
            (
                r#"{"auths":{"r.io":"hunter2"}}"#.into(),
                r#"auths["r.io"]: must be an object, found a string"#,
            ),
            (
                r#"{"auths":{"r.io":{}}}"#.into(),
                r#"auths["r.io"]: has no credentials"#,
            ),
            (
                r#"{"auths":{"r.io":{"auth":"!!hunter2!!"}}}"#.into(),
                r#"auths["r.io"].auth: is not valid base64"#,
            ),
            (
                format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("hunter2")),
                "no ':' found",
            ),
            (
                format!(
                    r#"{{"auths":{{"r.io":{{"auth":"{}","username":"mallory"}}}}}}"#,
                    b64("alice:hunter2")
                ),
                r#"auths["r.io"].username: contradicts"#,
            ),
            (
                format!(
                    r#"{{"auths":{{"r.io":{{"auth":"{}","password":"other"}}}}}}"#,
                    b64("alice:hunter2")
                ),
                r#"auths["r.io"].password: contradicts"#,
            ),
            (
                r#"{"auths":{"r.io":{"username":"u"}}}"#.into(),
                r#"auths["r.io"].password: is missing"#,
            ),
            (
                r#"{"auths":{"r.io":{"password":"hunter2"}}}"#.into(),
                r#"auths["r.io"].username: is missing"#,
            ),
            (
                r#"{"auths":{"r.io":{"password":5}}}"#.into(),
                r#"auths["r.io"].password: must be a string, found a number"#,
            ),
            (
                r#"{"auths":{"r.io":{"pasword":"hunter2"}}}"#.into(),
                r#"unknown field "pasword""#,
            ),
            (
                r#"{"auths":{"":{"username":"u","password":"hunter2"}}}"#.into(),
                "no registry host",
            ),
            (
                r#"{"auths":{"r.io:xx":{"username":"u","password":"hunter2"}}}"#.into(),
                "invalid port",
            ),
            (
                r#"{"auths":{"ftp://r.io":{"username":"u","password":"hunter2"}}}"#.into(),
                "unsupported URL scheme",
            ),
        ];
        for (json, want) in cases {
            let err = cfg(&json).unwrap_err().to_string();
            assert!(err.contains(want), "for {json}: got {err:?}, want {want:?}");
            assert!(!err.contains("hunter2"), "secret leaked: {err}");
        }
    }

    #[test]
    fn helper_entries_are_set_aside_not_errors() {
        let c = cfg(r#"{"auths":{"ghcr.io":{}},"credsStore":"desktop"}"#).unwrap();
        assert!(c.entries().is_empty());
        assert_eq!(c.helper_entries(), ["ghcr.io"]);
        let c = cfg(r#"{"auths":{"ghcr.io":{},"x.io":{}},"credHelpers":{"ghcr.io":"gh"}}"#);
        assert!(c.unwrap_err().to_string().contains(r#"auths["x.io"]"#));
    }

    #[test]
    fn legacy_dockercfg() {
        let c = DockerConfig::parse_legacy(
            format!(r#"{{"r.io":{{"auth":"{}"}}}}"#, b64("u:p")).as_bytes(),
        )
        .unwrap();
        assert_eq!(users_for(&c, "r.io/app"), ["u"]);
    }

    #[test]
    fn kubelet_matching_rules() {
        let c = cfg(&format!(
            r#"{{"auths":{{
              "https://index.docker.io/v1/":{{"auth":"{}"}},
              "*.example.com":{{"auth":"{}"}},
              "reg.example.com":{{"auth":"{}"}},
              "reg.example.com/team-a":{{"auth":"{}"}},
              "http://reg.example.com/v2/":{{"auth":"{}"}},
              "reg.example.com:5000":{{"auth":"{}"}},
              "[::1]:5000":{{"auth":"{}"}}
            }}}}"#,
            b64("hub:x"),
            b64("wild:x"),
            b64("exact:x"),
            b64("team:x"),
            b64("v2:x"),
            b64("port:x"),
            b64("v6:x")
        ))
        .unwrap();
        assert_eq!(users_for(&c, "nginx"), ["hub"]);
        assert_eq!(users_for(&c, "docker.io/user/app"), ["hub"]);
        // Longest path first, then exact hosts before wildcards; all are candidates.
        assert_eq!(
            users_for(&c, "reg.example.com/team-a/app"),
            ["team", "v2", "exact", "wild"]
        );
        assert_eq!(users_for(&c, "reg.example.com/team-b/app")[2], "wild");
        assert_eq!(users_for(&c, "a.example.com/x"), ["wild"]);
        assert!(
            users_for(&c, "a.b.example.com/x").is_empty(),
            "one * is one label"
        );
        assert!(users_for(&c, "example.com/x").is_empty());
        assert_eq!(users_for(&c, "reg.example.com:5000/x"), ["port"]);
        assert!(
            users_for(&c, "reg.example.com:5001/x").is_empty(),
            "ports must match"
        );
        assert_eq!(
            users_for(&c, "REG.example.com/x").len(),
            3,
            "hosts are case-insensitive"
        );
        assert_eq!(users_for(&c, "[::1]:5000/x"), ["v6"]);
        // kubelet's path prefix is a string prefix.
        assert_eq!(users_for(&c, "reg.example.com/team-ab/x")[0], "team");
    }

    #[test]
    fn round_trips_through_json() {
        let c = DockerConfig::single("r.io:5000", Credential::basic("u", "p:w")).unwrap();
        let back = cfg(&c.to_json_exposing_secrets()).unwrap();
        assert_eq!(
            back.entries()[0].credential(),
            &Credential::basic("u", "p:w")
        );
    }

    #[test]
    fn glob_labels() {
        assert!(glob_label("*", "anything"));
        assert!(glob_label("k8s-*", "k8s-prod"));
        assert!(glob_label("a?c", "abc"));
        assert!(!glob_label("a?c", "ac"));
        assert!(glob_label("*x*y", "axbxy"));
        assert!(!glob_label("ab", "abc"));
        // Character classes, as Go's filepath.Match (kubelet) has them.
        assert!(glob_label("registry-[a-c]", "registry-b"));
        assert!(!glob_label("registry-[a-c]", "registry-d"));
        assert!(glob_label("r[0-9][0-9]", "r42"));
        assert!(glob_label("eu-[^0-9]*", "eu-west"));
        assert!(!glob_label("eu-[^0-9]*", "eu-1"));
        assert!(glob_label("[a-cx]", "x"));
        assert!(glob_label("a\\*", "a*"));
        assert!(!glob_label("a\\*", "ab"));
        // Malformed patterns match nothing.
        for bad in ["[a-", "[]", "[a", "x[", "a\\", "[-a]"] {
            assert!(!glob_label(bad, "a"), "{bad}");
        }
        // Many stars (found by the fuzzer): plain backtracking would not
        // finish these in the lifetime of the test run; memoized, they are
        // at most |pattern|·|text| steps.
        assert!(!glob_label(&("a*".repeat(200) + "b"), &"a".repeat(250)));
        assert!(glob_label(
            &("*".repeat(300) + "x"),
            &"y".repeat(200).replace("yy", "yx")
        ));
    }

    #[test]
    fn credential_helpers_are_picked_as_docker_does() {
        let call = |c: &DockerConfig, image: &str| {
            c.helper_for(&Reference::parse(image).unwrap())
                .map(|h| format!("{}@{}", h.helper, h.server))
        };
        let c = cfg(&format!(
            r#"{{"auths":{{"inline.example":{{"auth":"{}"}},"stored.example":{{}}}},
                "credsStore":"desktop","credHelpers":{{"gcr.io":"gcloud","reg.example:5000":"corp"}}}}"#,
            b64("u:p")
        ))
        .unwrap();
        assert_eq!(call(&c, "gcr.io/p/app:1").as_deref(), Some("gcloud@gcr.io"));
        assert_eq!(
            call(&c, "reg.example:5000/app:1").as_deref(),
            Some("corp@reg.example:5000")
        );
        assert_eq!(
            call(&c, "stored.example/app:1").as_deref(),
            Some("desktop@stored.example")
        );
        assert_eq!(
            call(&c, "nginx:1").as_deref(),
            Some("desktop@https://index.docker.io/v1/")
        );
        assert_eq!(
            call(&c, "inline.example/app:1"),
            None,
            "inline credentials win over the store"
        );
        // Helpers only, no auths: valid (gcloud's configure-docker writes that).
        let only = cfg(r#"{"credHelpers":{"https://index.docker.io/v1/":"hub"}}"#).unwrap();
        assert_eq!(
            call(&only, "library/nginx").as_deref(),
            Some("hub@https://index.docker.io/v1/")
        );
        assert_eq!(call(&only, "ghcr.io/o/a"), None);
        // A helper name is an executable name: nothing path-like.
        for bad in [r#""../../bin/sh""#, r#""a b""#, r#""""#] {
            let doc = format!(r#"{{"auths":{{}},"credHelpers":{{"r.io":{bad}}}}}"#);
            if bad == r#""""# {
                assert!(cfg(&doc).is_err());
                continue;
            }
            let err = cfg(&doc).unwrap_err().to_string();
            assert!(err.contains("credential helper name"), "{err}");
        }
        assert!(cfg(r#"{"credsStore":"../x"}"#).is_err());
    }

    #[test]
    fn character_classes_in_auth_keys_pick_entries() {
        let c = cfg(&format!(
            r#"{{"auths":{{"ecr-[a-m].corp.example":{{"auth":"{}"}}}}}}"#,
            b64("am:pw")
        ))
        .unwrap();
        assert_eq!(users_for(&c, "ecr-b.corp.example/app:1"), ["am"]);
        assert!(users_for(&c, "ecr-x.corp.example/app:1").is_empty());
    }

    proptest! {
        #[test]
        fn glob_never_panics(p in "[a-c\\[\\]^*?\\\\-]{0,12}", t in "[a-c\\-]{0,8}") {
            let _ = glob_label(&p, &t);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = DockerConfig::parse(s.as_bytes());
        }

        #[test]
        fn entry_errors_never_echo_values(user in "[a-z]{1,8}", secret in "[A-Za-z0-9]{12,20}") {
            let doc = format!(r#"{{"auths":{{"r.io":{{"auth":"{}","password":"{secret}x"}}}}}}"#, b64(&format!("{user}:{secret}")));
            let err = cfg(&doc).unwrap_err().to_string();
            prop_assert!(!err.contains(&secret));
        }
    }
}
