//! Why a pull failed and what to do about it, for `pullbroker diagnose`.
//!
//! Two pure steps. [`classify`] reads what kubelet and containerd report (a
//! container's `waiting.message`, a `Failed` Event's note), checked against
//! what a real kubelet 1.32 with containerd reported for each kind of
//! failure (`../shared/fixtures/kubelet-events-v1.32/`). [`verdict`] weighs
//! that report with the credentials kubelet would have tried, in its order
//! (the pod's `imagePullSecrets`, then the credential-provider plugin
//! through pullbroker's policy), and what re-trying each against the
//! registry gave: the cause, the candidate that applies, the exact fix.
//!
//! [`gather`] holds the rest of the diagnosis that is not I/O: which pod
//! to look at, what kubelet reported per container, the candidates in
//! kubelet's order, and the report.

pub mod gather;

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
    /// Its name as reports print it (`unauthorized`, `not_found`, …).
    pub fn name(self) -> &'static str {
        match self {
            PullFailure::Unauthorized => "unauthorized",
            PullFailure::Forbidden => "forbidden",
            PullFailure::NotFound => "not_found",
            PullFailure::Tls => "tls",
            PullFailure::Dns => "dns",
            PullFailure::Refused => "refused",
            PullFailure::Timeout => "timeout",
            PullFailure::RateLimited => "rate_limited",
            PullFailure::InvalidImageName => "invalid_image_name",
            PullFailure::NotAPullFailure => "not_a_pull_failure",
            PullFailure::Unknown => "unknown",
        }
    }

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

/// One credential kubelet would try for an image, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Source {
    /// An entry of a Secret in the pod's `imagePullSecrets` (those copied
    /// from its service account at admission included).
    #[serde(rename_all = "camelCase")]
    PodSecret {
        secret: String,
        /// The entry's registry key as written.
        entry: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<String>,
    },
    /// The kubelet credential-provider plugin, as pullbroker's policy
    /// answers for the pod's service account.
    Plugin { grant: String, credential: String },
    /// No credential at all: kubelet pulls anonymously.
    Anonymous,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::PodSecret {
                secret,
                entry,
                username,
            } => {
                write!(f, "Secret {secret} (entry {entry}")?;
                if let Some(u) = username {
                    write!(f, ", user {u}")?;
                }
                f.write_str(")")
            }
            Source::Plugin { grant, credential } => write!(
                f,
                "the kubelet plugin (PullGrant {grant}, RegistryCredential {credential})"
            ),
            Source::Anonymous => f.write_str("no credential (anonymous)"),
        }
    }
}

/// What re-trying a candidate against the registry from here gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Check {
    NotChecked {
        why: String,
    },
    Pulled {
        digest: String,
    },
    Failed {
        failure: PullFailure,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub source: Source,
    pub check: Check,
}

/// A secret that gave kubelet nothing for this image, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "camelCase")]
pub enum SecretProblem {
    /// Named in `imagePullSecrets` but not in the namespace.
    Missing { secret: String },
    /// Of the wrong type or not valid docker config JSON.
    Unusable { secret: String, why: String },
    /// Valid, but without an entry for the image's registry.
    NoEntry { secret: String },
}

/// pullbroker's policy for the pod's service account and image (the
/// broker's `can-i`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum PluginAnswer {
    /// pullbroker's CRDs are not installed: no plugin credential.
    #[default]
    NotInstalled,
    Denied {
        reason: String,
    },
    /// Granted; `ready` is the credential's `Ready` condition.
    #[serde(rename_all = "camelCase")]
    Granted {
        grant: String,
        credential: String,
        ready: Option<bool>,
        ready_reason: String,
    },
}

/// Everything known about one image of a pod.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub service_account: &'a str,
    pub image: &'a str,
    /// What kubelet reported, classified; `None`: no pull failure reported.
    pub reported: Option<PullFailure>,
    pub candidates: &'a [Candidate],
    pub secret_problems: &'a [SecretProblem],
    /// Secrets of the service account with an entry for the image that the
    /// pod does not have: it was admitted before they were added.
    pub admission_race: &'a [String],
    pub plugin: &'a PluginAnswer,
    /// Whether the repository exists, when the registry told us.
    pub repository_exists: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The class the verdict rests on (the report's, else the re-check's).
    pub failure: Option<PullFailure>,
    pub cause: String,
    pub fix: String,
    /// Index in `candidates` of the first that pulls from here now: the one
    /// kubelet would use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applies: Option<usize>,
}

fn failed(c: &Candidate) -> Option<PullFailure> {
    match c.check {
        Check::Failed { failure, .. } => Some(failure),
        _ => None,
    }
}

fn network(f: PullFailure) -> bool {
    matches!(
        f,
        PullFailure::Tls | PullFailure::Dns | PullFailure::Refused | PullFailure::Timeout
    )
}

/// The cause and the fix for one image.
pub fn verdict(f: &Facts<'_>) -> Verdict {
    let pod = format!("{}/{}", f.namespace, f.pod);
    let applies = f
        .candidates
        .iter()
        .position(|c| matches!(c.check, Check::Pulled { .. }));
    let checked = f.candidates.iter().find_map(failed);
    let failure = f.reported.or(checked);
    let v = |cause: String, fix: String| Verdict {
        failure,
        cause,
        fix,
        applies,
    };
    let (registry, repository) = match crate::Reference::parse(f.image) {
        Ok(r) => (r.registry().to_string(), r.repository().to_string()),
        Err(e) => {
            return Verdict {
                failure: Some(PullFailure::InvalidImageName),
                cause: format!("image {:?} is not a valid reference: {e}", f.image),
                fix: "fix the image in the workload (kubelet never pulls it)".into(),
                applies: None,
            }
        }
    };
    let grant_fix = || {
        format!(
            "grant it: a PullGrant with subjects {{namespaces: [{}], serviceAccounts: [{}]}}, repositories [{repository}] on a RegistryCredential for {registry}, purposes [pull] (check with `pullbroker can-i --as system:serviceaccount:{}:{} pull {}`)",
            f.namespace, f.service_account, f.namespace, f.service_account, f.image
        )
    };
    match f.reported {
        Some(PullFailure::InvalidImageName) => {
            return v(
                format!("kubelet cannot parse the image name {:?}", f.image),
                "fix the image in the workload (kubelet never pulls it)".into(),
            )
        }
        Some(PullFailure::NotAPullFailure) => {
            return v(
                "the image was pulled; the container failed to start".into(),
                format!("not a credential problem: see `kubectl logs {pod}` and `kubectl describe pod {pod}`"),
            )
        }
        _ => {}
    }
    let auth = matches!(
        failure,
        Some(PullFailure::Unauthorized | PullFailure::Forbidden)
    );
    if !f.admission_race.is_empty() && auth {
        return v(
            format!(
                "the pod was admitted before its service account {:?} had {}: its imagePullSecrets lack {}",
                f.service_account,
                f.admission_race.join(", "),
                if f.admission_race.len() == 1 { "it" } else { "them" }
            ),
            format!("recreate the pod (imagePullSecrets are copied from the service account only at admission): kubectl delete pod -n {} {} — its controller makes a new one", f.namespace, f.pod),
        );
    }
    if let Some(i) = applies {
        let c = &f.candidates[i].source;
        return match f.reported {
            None => v(
                format!("no pull failure reported; {c} pulls it"),
                "nothing to fix".into(),
            ),
            Some(r) if network(r) => v(
                format!("{c} pulls it from here, but the node reported: {}", r.hint()),
                "the node's path to the registry differs from this machine's (DNS, proxy, firewall, trusted CAs): fix it there".into(),
            ),
            Some(_) => v(
                format!("{c} pulls it from here now: the failure kubelet reported is gone (the credential or image changed since)"),
                format!("kubelet retries with back-off; to retry now: kubectl delete pod -n {} {}", f.namespace, f.pod),
            ),
        };
    }
    let Some(failure) = failure else {
        return v(
            "no pull failure reported for this image".into(),
            "nothing to fix".into(),
        );
    };
    let secrets: Vec<&Candidate> = f
        .candidates
        .iter()
        .filter(|c| matches!(c.source, Source::PodSecret { .. }))
        .collect();
    let problems = || {
        f.secret_problems
            .iter()
            .map(|p| match p {
                SecretProblem::Missing { secret } => format!("Secret {secret} does not exist"),
                SecretProblem::Unusable { secret, why } => {
                    format!("Secret {secret} is unusable: {why}")
                }
                SecretProblem::NoEntry { secret } => {
                    format!("Secret {secret} has no entry for {registry}")
                }
            })
            .collect::<Vec<_>>()
    };
    match failure {
        PullFailure::Unauthorized | PullFailure::Forbidden => {
            let verb = if failure == PullFailure::Forbidden {
                "denies"
            } else {
                "refuses"
            };
            if let Some(c) = secrets.iter().find(|c| failed(c) == Some(failure)) {
                let Source::PodSecret { secret, .. } = &c.source else {
                    unreachable!("filtered to pod secrets")
                };
                let fix = if failure == PullFailure::Forbidden {
                    format!("give the account in Secret {}/{secret} pull access to {repository}, or use a credential that has it", f.namespace)
                } else {
                    format!("rotate Secret {}/{secret}: `pullbroker secret create --registry {registry} … | kubectl apply -f -` — or replace it with a PullGrant and delete the copy", f.namespace)
                };
                return v(format!("the registry {verb} {}", c.source), fix);
            }
            if !secrets.is_empty() && checked.is_none() {
                let names: Vec<String> = secrets.iter().map(|c| c.source.to_string()).collect();
                return v(
                    format!("the registry {verb} what kubelet sent: {} (not re-checked from here)", names.join(", ")),
                    format!("check that credential: `pullbroker resolve --secret <(kubectl get secret -n {} … -o yaml) {}`", f.namespace, f.image),
                );
            }
            let mut why = problems();
            match f.plugin {
                PluginAnswer::Granted {
                    grant,
                    credential,
                    ready: Some(false),
                    ready_reason,
                } => v(
                    format!("PullGrant {grant} grants it, but RegistryCredential {credential} is not ready: {ready_reason}"),
                    format!("fix RegistryCredential {credential}'s source (`kubectl describe registrycredential {credential}`)"),
                ),
                PluginAnswer::Granted {
                    grant, credential, ..
                } => v(
                    format!("PullGrant {grant} grants it through RegistryCredential {credential}, but the kubelet did not send that credential, or the registry {verb} it"),
                    format!("check the node runs the pullbroker kubelet plugin with a matchImages entry for {registry} (`pullbroker kubelet-config --from-cluster`), and RegistryCredential {credential}'s access to {repository}"),
                ),
                PluginAnswer::Denied { reason } => {
                    why.push(format!("no PullGrant: {reason}"));
                    v(
                        format!("no credential for {registry} reached the pull: {}", if why.len() == 1 { why[0].clone() } else { why.join("; ") }),
                        grant_fix(),
                    )
                }
                PluginAnswer::NotInstalled => {
                    why.push("pullbroker's CRDs are not installed".into());
                    v(
                        format!("no credential for {registry} reached the pull: {}", why.join("; ")),
                        format!("add a pull secret for {registry} to the pod's imagePullSecrets (or install pullbroker and {})", grant_fix()),
                    )
                }
            }
        }
        PullFailure::NotFound => match f.repository_exists {
            Some(false) => v(
                format!("repository {repository} does not exist on {registry}"),
                "fix the image name in the workload, or push the image".into(),
            ),
            Some(true) => v(
                format!(
                    "{repository} exists on {registry}, but not the tag or digest of {}",
                    f.image
                ),
                "push that tag, or fix it in the workload".into(),
            ),
            None => v(
                format!("the tag or repository of {} does not exist", f.image),
                PullFailure::NotFound.hint().into(),
            ),
        },
        other => {
            let confirmed = checked == Some(other);
            v(
                format!(
                    "{}{}",
                    other.hint(),
                    if confirmed {
                        " (the same from here)"
                    } else {
                        ""
                    }
                ),
                match other {
                    PullFailure::Tls => format!("give the nodes the CA that signed {registry}'s certificate (containerd: /etc/containerd/certs.d/{registry}/hosts.toml with ca = …), or serve a certificate they trust"),
                    PullFailure::Refused => format!("start the registry at {registry}, or fix the port in the image name"),
                    PullFailure::Timeout => format!("find what hangs between the node and {registry} (registry, proxy, firewall dropping packets)"),
                    PullFailure::Dns => format!("make {registry} resolvable from the nodes, or fix the host in the image name"),
                    PullFailure::RateLimited => format!("authenticate pulls from {registry} (limits are per account) or mirror the image"),
                    _ => "see the message kubelet reported".into(),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn names_are_the_serialized_names() {
        use PullFailure::*;
        for f in [
            Unauthorized,
            Forbidden,
            NotFound,
            Tls,
            Dns,
            Refused,
            Timeout,
            RateLimited,
            InvalidImageName,
            NotAPullFailure,
            Unknown,
        ] {
            assert_eq!(serde_json::to_value(f).unwrap(), f.name(), "{f:?}");
        }
    }

    use super::*;

    fn facts<'a>(
        reported: Option<PullFailure>,
        candidates: &'a [Candidate],
        race: &'a [String],
        plugin: &'a PluginAnswer,
    ) -> Facts<'a> {
        Facts {
            namespace: "team-a",
            pod: "web-1",
            service_account: "web",
            image: "registry.corp.example/apps/web:1",
            reported,
            candidates,
            secret_problems: &[],
            admission_race: race,
            plugin,
            repository_exists: None,
        }
    }

    fn secret(check: Check) -> Candidate {
        Candidate {
            source: Source::PodSecret {
                secret: "regcred".into(),
                entry: "registry.corp.example".into(),
                username: Some("ci".into()),
            },
            check,
        }
    }

    fn refused() -> Check {
        Check::Failed {
            failure: PullFailure::Unauthorized,
            detail: "401".into(),
        }
    }

    #[test]
    fn a_refused_pod_secret_is_named_and_rotation_is_the_fix() {
        let c = [secret(refused())];
        let v = verdict(&facts(
            Some(PullFailure::Unauthorized),
            &c,
            &[],
            &PluginAnswer::Denied {
                reason: "no grant".into(),
            },
        ));
        assert!(
            v.cause.contains("Secret regcred") && v.cause.contains("user ci"),
            "{v:?}"
        );
        assert!(v.fix.starts_with("rotate Secret team-a/regcred"), "{v:?}");
        assert_eq!(v.applies, None);
    }

    #[test]
    fn the_admission_race_wins_over_a_missing_grant() {
        let c = [Candidate {
            source: Source::Anonymous,
            check: refused(),
        }];
        let race = ["regcred".to_string()];
        let v = verdict(&facts(
            Some(PullFailure::Unauthorized),
            &c,
            &race,
            &PluginAnswer::Denied {
                reason: "no grant".into(),
            },
        ));
        assert!(v.fix.starts_with("recreate the pod"), "{v:?}");
        assert!(
            v.fix.contains("kubectl delete pod -n team-a web-1"),
            "{v:?}"
        );
    }

    #[test]
    fn no_credential_and_no_grant_proposes_the_grant() {
        let c = [Candidate {
            source: Source::Anonymous,
            check: refused(),
        }];
        let v = verdict(&facts(
            Some(PullFailure::Unauthorized),
            &c,
            &[],
            &PluginAnswer::Denied {
                reason: "no PullGrant selects it".into(),
            },
        ));
        assert!(v.fix.starts_with("grant it: a PullGrant"), "{v:?}");
        assert!(v.fix.contains("repositories [apps/web]"), "{v:?}");
    }

    #[test]
    fn a_grant_whose_credential_is_not_ready_points_at_the_credential() {
        let plugin = PluginAnswer::Granted {
            grant: "g".into(),
            credential: "corp".into(),
            ready: Some(false),
            ready_reason: "SourceUnavailable: secret gone".into(),
        };
        let v = verdict(&facts(Some(PullFailure::Unauthorized), &[], &[], &plugin));
        assert!(
            v.cause.contains("RegistryCredential corp is not ready"),
            "{v:?}"
        );
    }

    #[test]
    fn a_candidate_that_pulls_now_is_the_one_that_applies() {
        let c = [
            secret(refused()),
            Candidate {
                source: Source::Plugin {
                    grant: "g".into(),
                    credential: "corp".into(),
                },
                check: Check::Pulled {
                    digest: "sha256:ab".into(),
                },
            },
        ];
        let v = verdict(&facts(
            Some(PullFailure::Tls),
            &c,
            &[],
            &PluginAnswer::NotInstalled,
        ));
        assert_eq!(v.applies, Some(1));
        assert!(
            v.cause
                .contains("pulls it from here, but the node reported"),
            "{v:?}"
        );
    }

    #[test]
    fn not_found_tells_tag_from_repository_when_the_registry_did() {
        let mut f = facts(
            Some(PullFailure::NotFound),
            &[],
            &[],
            &PluginAnswer::NotInstalled,
        );
        f.repository_exists = Some(false);
        assert!(verdict(&f)
            .cause
            .starts_with("repository apps/web does not exist"));
        f.repository_exists = Some(true);
        assert!(verdict(&f)
            .cause
            .contains("exists on registry.corp.example, but not the tag"));
    }

    #[test]
    fn an_invalid_name_is_never_a_credential_problem() {
        let mut f = facts(None, &[], &[], &PluginAnswer::NotInstalled);
        f.image = "UPPER/Case:tag";
        let v = verdict(&f);
        assert_eq!(v.failure, Some(PullFailure::InvalidImageName));
        assert!(v.fix.starts_with("fix the image"));
    }

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
