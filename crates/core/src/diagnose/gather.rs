//! The gathering and choosing half of `pullbroker diagnose`, pure: which of
//! a workload's pods to look at, what kubelet reported for each container
//! (its waiting state and newest pull-failure Event), the credentials
//! kubelet would try for an image in its order, whether a re-check from
//! here is worth making, and the report those make. The CLI reads the
//! cluster into these plain types, runs the re-checks and prints.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    classify, verdict, Candidate, Check, Facts, PluginAnswer, PullFailure, SecretProblem, Source,
    Verdict,
};
use crate::audit::{
    config_key, pull_secret_config, CredentialState, PULL_WAIT_REASONS, TYPE_DOCKERCFG,
    TYPE_DOCKERCONFIGJSON,
};
use crate::policy::{Allowed, Decision, Policy, Purpose, Request, Subject, Target};
use crate::{Credential, DockerConfig, Reference};

/// One of a workload's pods, as [`pick`] weighs it.
#[derive(Debug, Clone, Default)]
pub struct PodSummary {
    pub name: String,
    pub phase: Option<String>,
    /// The waiting reasons of its containers, init containers included.
    pub waiting_reasons: Vec<String>,
}

impl PodSummary {
    fn pull_failing(&self) -> bool {
        self.waiting_reasons
            .iter()
            .any(|r| PULL_WAIT_REASONS.contains(&r.as_str()))
    }

    fn running(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Running" | "Succeeded"))
    }
}

/// The pod to diagnose among a workload's: the first by name failing to
/// pull, else the first not running, else the first; `None` when there is
/// none.
pub fn pick(pods: &[PodSummary]) -> Option<usize> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|a, b| pods[*a].name.cmp(&pods[*b].name));
    let first = |f: &dyn Fn(&PodSummary) -> bool| order.iter().copied().find(|i| f(&pods[*i]));
    first(&PodSummary::pull_failing)
        .or_else(|| first(&|p| !p.running()))
        .or(order.first().copied())
}

/// A pod's Event, as [`failure_notes`] reads it.
#[derive(Debug, Clone, Default)]
pub struct EventNote {
    pub type_: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// `involvedObject.fieldPath`, e.g. `spec.containers{web}`.
    pub field_path: Option<String>,
    /// Seconds since the epoch: `lastTimestamp`, else `eventTime`.
    pub when: Option<i64>,
}

/// The newest pull-failure note kubelet recorded per container: `Warning`
/// Events with reason `Failed` or `InspectFailed` about
/// `spec.containers{NAME}` (or `initContainers`), without the `Error: …`
/// summaries that repeat the waiting reason.
pub fn failure_notes(events: impl IntoIterator<Item = EventNote>) -> BTreeMap<String, String> {
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for e in events {
        let is_pull_note = e.type_.as_deref() == Some("Warning")
            && matches!(e.reason.as_deref(), Some("Failed" | "InspectFailed"))
            && e.message
                .as_deref()
                .is_some_and(|m| !m.starts_with("Error: "));
        let container = e
            .field_path
            .as_deref()
            .and_then(|p| p.split_once('{'))
            .and_then(|(_, rest)| rest.strip_suffix('}'));
        let (true, Some(container)) = (is_pull_note, container) else {
            continue;
        };
        let when = e.when.unwrap_or(0);
        if newest.get(container).is_some_and(|(t, _)| *t > when) {
            continue;
        }
        newest.insert(container.to_string(), (when, e.message.unwrap_or_default()));
    }
    newest.into_iter().map(|(k, (_, m))| (k, m)).collect()
}

/// A container's state as kubelet reported it in the pod's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContainerState {
    Waiting {
        reason: Option<String>,
        message: Option<String>,
    },
    Running,
    Terminated {
        reason: Option<String>,
    },
    #[default]
    Unknown,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerState::Waiting { reason, .. } => {
                write!(f, "waiting: {}", reason.as_deref().unwrap_or_default())
            }
            ContainerState::Running => f.write_str("running"),
            ContainerState::Terminated { reason } => {
                write!(f, "terminated: {}", reason.as_deref().unwrap_or_default())
            }
            ContainerState::Unknown => f.write_str("unknown"),
        }
    }
}

/// What kubelet reported about one container's pull: the message (the
/// Event holds kubelet's full error; the waiting message repeats it) and
/// its class; both `None` when the container is not waiting on a pull.
pub fn kubelet_report(
    state: &ContainerState,
    event_note: Option<&str>,
) -> (Option<String>, Option<PullFailure>) {
    let ContainerState::Waiting { reason, message } = state else {
        return (None, None);
    };
    let reason = reason.as_deref();
    if !reason.is_some_and(|r| PULL_WAIT_REASONS.contains(&r)) {
        return (None, None);
    }
    let message = event_note.map(str::to_string).or(message.clone());
    let class = match (reason, &message) {
        (Some("InvalidImageName"), _) => PullFailure::InvalidImageName,
        (_, Some(m)) => classify(m),
        _ => PullFailure::Unknown,
    };
    (message, Some(class))
}

/// The docker config of a pull secret of type `type_` (`None`: `Opaque`),
/// whose data `value_of` returns by key; or why it is not one.
pub fn secret_config<'a>(
    type_: Option<&str>,
    value_of: impl FnOnce(&str) -> Option<&'a [u8]>,
) -> Result<DockerConfig, String> {
    let type_ = type_.unwrap_or("Opaque");
    if type_ != TYPE_DOCKERCONFIGJSON && type_ != TYPE_DOCKERCFG {
        return Err(format!("type {type_}, not {TYPE_DOCKERCONFIGJSON}"));
    }
    pull_secret_config(type_, value_of(config_key(type_)))
}

/// The pull secrets a diagnosis reads, by name: `None` for one that does
/// not exist, else its docker config or why it is unusable.
pub type PullSecrets = BTreeMap<String, Option<Result<DockerConfig, String>>>;

/// pullbroker's policy as the cluster holds it, with each
/// RegistryCredential's `Ready` condition.
#[derive(Debug, Clone, Copy)]
pub struct ClusterPolicy<'a> {
    pub policy: &'a Policy,
    pub states: &'a [CredentialState],
}

/// What the cluster says about one image before any network check: the
/// candidates in kubelet's order, each with the credential a re-check
/// would use (`None` for the plugin's: the broker holds it).
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub candidates: Vec<(Candidate, Option<Credential>)>,
    pub secret_problems: Vec<SecretProblem>,
    pub admission_race: Vec<String>,
    pub plugin: PluginAnswer,
}

fn not_checked(why: impl Into<String>) -> Check {
    Check::NotChecked { why: why.into() }
}

/// The credentials kubelet would try for `image`, in its order: each entry
/// of the pod's `imagePullSecrets` for the image's registry, then the
/// kubelet plugin as the policy decides for `subject` (`policy` is `None`
/// when pullbroker's CRDs are not installed), else anonymous. Also the
/// service account's secrets with an entry for the image that the pod
/// lacks (the admission race).
pub fn gather(
    image: &Reference,
    pod_secrets: &[String],
    secrets: &PullSecrets,
    account_secrets: &[String],
    subject: &Subject,
    policy: Option<ClusterPolicy<'_>>,
) -> Gathered {
    let mut g = Gathered::default();
    for name in pod_secrets {
        let config = match secrets.get(name).and_then(Option::as_ref) {
            None => {
                g.secret_problems.push(SecretProblem::Missing {
                    secret: name.clone(),
                });
                continue;
            }
            Some(Err(why)) => {
                g.secret_problems.push(SecretProblem::Unusable {
                    secret: name.clone(),
                    why: why.clone(),
                });
                continue;
            }
            Some(Ok(c)) => c,
        };
        let entries = config.candidates(image);
        if entries.is_empty() {
            g.secret_problems.push(SecretProblem::NoEntry {
                secret: name.clone(),
            });
        }
        for e in entries {
            let username = match e.credential() {
                Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                    Some(username.clone())
                }
                _ => None,
            };
            let source = Source::PodSecret {
                secret: name.clone(),
                entry: e.key().to_string(),
                username,
            };
            g.candidates.push((
                Candidate {
                    source,
                    check: not_checked("not checked yet"),
                },
                Some(e.credential().clone()),
            ));
        }
    }
    g.admission_race = account_secrets
        .iter()
        .filter(|s| !pod_secrets.contains(s))
        .filter(|s| matches!(secrets.get(*s), Some(Some(Ok(c))) if !c.candidates(image).is_empty()))
        .cloned()
        .collect();
    if let Some(p) = policy {
        g.plugin = plugin(image, subject, p, &mut g.candidates);
    }
    if g.candidates.is_empty() {
        g.candidates.push((
            Candidate {
                source: Source::Anonymous,
                check: not_checked("not checked yet"),
            },
            Some(Credential::Anonymous),
        ));
    }
    g
}

/// The policy's answer for the plugin (the broker's `can-i pull`), adding
/// its candidate when it grants.
fn plugin(
    image: &Reference,
    subject: &Subject,
    p: ClusterPolicy<'_>,
    candidates: &mut Vec<(Candidate, Option<Credential>)>,
) -> PluginAnswer {
    let decision = p.policy.decide(&Request {
        subject,
        purpose: Purpose::Pull,
        target: Target::Image {
            registry: image.registry(),
            repository: image.repository(),
        },
        on_behalf_of: None,
        narrowed_to: None,
    });
    let Allowed {
        grant, credential, ..
    } = match decision {
        Decision::Allow(a) => a,
        Decision::Deny { reason } => return PluginAnswer::Denied { reason },
    };
    let state = p.states.iter().find(|s| s.name == credential);
    let ready = state.and_then(|s| s.ready);
    let shown = match ready {
        Some(true) => "True",
        Some(false) => "False",
        None => "unknown",
    };
    candidates.push((
        Candidate {
            source: Source::Plugin {
                grant: grant.clone(),
                credential: credential.clone(),
            },
            check: not_checked(format!(
                "the broker holds this credential; its RegistryCredential reports Ready={shown}"
            )),
        },
        None,
    ));
    PluginAnswer::Granted {
        grant,
        credential,
        ready,
        ready_reason: state.map(|s| s.reason.clone()).unwrap_or_default(),
    }
}

/// Whether re-trying the candidates from here can tell anything: only for
/// a registry problem kubelet reported, and only with the network allowed.
/// `Err` says why not, for each candidate left unchecked.
pub fn recheck(network: bool, reported: Option<PullFailure>) -> Result<(), &'static str> {
    match reported {
        _ if !network => Err("--no-network"),
        None => Err("no pull failure reported"),
        Some(PullFailure::InvalidImageName | PullFailure::NotAPullFailure) => {
            Err("not a registry problem")
        }
        Some(_) => Ok(()),
    }
}

/// The class of a connection failure our registry client reports, by its
/// detail (the text of the transport's error chain), as kubelet's message
/// would have it.
pub fn connect_failure(detail: &str) -> PullFailure {
    let d = detail.to_ascii_lowercase();
    let has = |s: &str| d.contains(s);
    if has("certificate") || has("tls") || has("handshake") {
        PullFailure::Tls
    } else if has("refused") {
        PullFailure::Refused
    } else if has("lookup") || has("dns") || has("name or service") {
        PullFailure::Dns
    } else if has("timed out") {
        PullFailure::Timeout
    } else {
        PullFailure::Unknown
    }
}

/// One container's image and what is known about its pull.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReport {
    pub container: String,
    pub image: String,
    /// `running`, `waiting: REASON`, `terminated: REASON`, or `unknown`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<PullFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub candidates: Vec<Candidate>,
    pub secret_problems: Vec<SecretProblem>,
    pub admission_race: Vec<String>,
    pub plugin: PluginAnswer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_exists: Option<bool>,
    pub verdict: Verdict,
}

/// Who a [`ContainerReport`] is about.
#[derive(Debug, Clone, Copy)]
pub struct PodOf<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub service_account: &'a str,
}

impl ContainerReport {
    /// The report of one container, its verdict included, from what was
    /// gathered and re-checked (the credentials are dropped here).
    pub fn new(
        of: PodOf<'_>,
        (container, image): (String, String),
        state: &ContainerState,
        (message, reported): (Option<String>, Option<PullFailure>),
        gathered: Gathered,
        repository_exists: Option<bool>,
    ) -> ContainerReport {
        let candidates: Vec<Candidate> = gathered.candidates.into_iter().map(|(c, _)| c).collect();
        let verdict = verdict(&Facts {
            namespace: of.namespace,
            pod: of.pod,
            service_account: of.service_account,
            image: &image,
            reported,
            candidates: &candidates,
            secret_problems: &gathered.secret_problems,
            admission_race: &gathered.admission_race,
            plugin: &gathered.plugin,
            repository_exists,
        });
        ContainerReport {
            container,
            image,
            state: state.to_string(),
            reported,
            message,
            candidates,
            secret_problems: gathered.secret_problems,
            admission_race: gathered.admission_race,
            plugin: gathered.plugin,
            repository_exists,
            verdict,
        }
    }

    /// Whether kubelet reported a pull failure or the verdict found one.
    pub fn has_problem(&self) -> bool {
        self.reported.is_some() || self.verdict.failure.is_some()
    }
}

/// A pod's diagnosis.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pod: String,
    pub service_account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Which of a workload's pods was picked, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub picked: Option<String>,
    pub network_checked: bool,
    /// What limited the re-checks (a CA bundle that could not be read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub containers: Vec<ContainerReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Named, PullGrantSpec, RegistryCredentialSpec};

    fn pod(name: &str, phase: &str, waiting: &[&str]) -> PodSummary {
        PodSummary {
            name: name.into(),
            phase: Some(phase.into()),
            waiting_reasons: waiting.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn pick_prefers_a_pod_failing_to_pull_then_one_not_running_then_the_first_by_name() {
        let pods = [
            pod("c", "Running", &[]),
            pod("b", "Pending", &["ContainerCreating"]),
            pod("a", "Running", &[]),
            pod("d", "Pending", &["ImagePullBackOff"]),
        ];
        assert_eq!(pick(&pods), Some(3));
        assert_eq!(pick(&pods[..3]), Some(1));
        assert_eq!(pick(&[pods[0].clone(), pods[2].clone()]), Some(1));
        assert_eq!(pick(&[]), None);
    }

    fn event(reason: &str, message: &str, path: &str, when: i64) -> EventNote {
        EventNote {
            type_: Some("Warning".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            field_path: Some(path.into()),
            when: Some(when),
        }
    }

    #[test]
    fn failure_notes_keep_each_containers_newest_pull_note_only() {
        let notes = failure_notes([
            event(
                "Failed",
                "old: 401 Unauthorized",
                "spec.containers{web}",
                10,
            ),
            event("Failed", "new: 403 Forbidden", "spec.containers{web}", 20),
            event("Failed", "Error: ErrImagePull", "spec.containers{web}", 30),
            event("BackOff", "Back-off pulling", "spec.containers{web}", 40),
            event("InspectFailed", "bad ref", "spec.initContainers{init}", 5),
            event("Failed", "no container named", "spec", 50),
            EventNote {
                type_: Some("Normal".into()),
                ..event("Failed", "not a warning", "spec.containers{side}", 1)
            },
        ]);
        assert_eq!(
            notes,
            BTreeMap::from([
                ("web".to_string(), "new: 403 Forbidden".to_string()),
                ("init".to_string(), "bad ref".to_string()),
            ])
        );
    }

    #[test]
    fn kubelet_report_prefers_the_event_note_and_ignores_other_waits() {
        let waiting = |reason: &str, message: &str| ContainerState::Waiting {
            reason: Some(reason.into()),
            message: Some(message.into()),
        };
        let (m, c) = kubelet_report(
            &waiting("ErrImagePull", "short"),
            Some("failed to authorize: 401 Unauthorized"),
        );
        assert_eq!(m.as_deref(), Some("failed to authorize: 401 Unauthorized"));
        assert_eq!(c, Some(PullFailure::Unauthorized));
        let (m, c) = kubelet_report(&waiting("ImagePullBackOff", "429 Too Many Requests"), None);
        assert_eq!(m.as_deref(), Some("429 Too Many Requests"));
        assert_eq!(c, Some(PullFailure::RateLimited));
        assert_eq!(
            kubelet_report(&waiting("InvalidImageName", "whatever"), None).1,
            Some(PullFailure::InvalidImageName)
        );
        assert_eq!(
            kubelet_report(&waiting("CrashLoopBackOff", "401 Unauthorized"), Some("x")),
            (None, None)
        );
        assert_eq!(
            kubelet_report(&ContainerState::Running, Some("x")),
            (None, None)
        );
        let silent = ContainerState::Waiting {
            reason: Some("ErrImagePull".into()),
            message: None,
        };
        assert_eq!(
            kubelet_report(&silent, None),
            (None, Some(PullFailure::Unknown))
        );
    }

    #[test]
    fn secret_config_refuses_other_types_and_bad_json() {
        let good = br#"{"auths":{"r.example":{"auth":"dTpw"}}}"#;
        assert!(secret_config(Some(TYPE_DOCKERCONFIGJSON), |k| {
            (k == ".dockerconfigjson").then_some(&good[..])
        })
        .is_ok());
        let e = secret_config(None, |_| Some(&good[..])).unwrap_err();
        assert!(e.contains("type Opaque"), "{e}");
        assert!(secret_config(Some(TYPE_DOCKERCONFIGJSON), |_| Some(&b"{"[..])).is_err());
        assert!(secret_config(Some(TYPE_DOCKERCONFIGJSON), |_| None).is_err());
    }

    fn policy() -> Policy {
        let cred: RegistryCredentialSpec =
            serde_saphyr::from_str("registries: [r.example]\nsource: {secretRef: {name: s}}")
                .unwrap();
        let grant: PullGrantSpec = serde_saphyr::from_str(
            "credential: corp\nsubjects: {namespaces: [team-a], serviceAccounts: [web]}\nrepositories: [apps/*]\npurposes: [pull]",
        )
        .unwrap();
        let (p, problems) = Policy::new(
            vec![Named {
                name: "corp".into(),
                spec: cred,
            }],
            vec![Named {
                name: "g".into(),
                spec: grant,
            }],
            BTreeMap::new(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        p
    }

    fn config(json: &str) -> Option<Result<DockerConfig, String>> {
        Some(Ok(DockerConfig::parse(json.as_bytes()).unwrap()))
    }

    #[test]
    fn gather_lists_candidates_in_kubelets_order_and_the_problems() {
        let image = Reference::parse("r.example/apps/web:1").unwrap();
        let secrets = PullSecrets::from([
            (
                "pull".to_string(),
                config(r#"{"auths":{"r.example":{"username":"u","password":"p"}}}"#),
            ),
            (
                "other".to_string(),
                config(r#"{"auths":{"elsewhere.example":{"auth":"dTpw"}}}"#),
            ),
            ("broken".to_string(), Some(Err("not JSON".to_string()))),
            ("missing".to_string(), None),
            (
                "late".to_string(),
                config(r#"{"auths":{"r.example":{"auth":"dTpw"}}}"#),
            ),
        ]);
        let pod_secrets = ["missing", "broken", "other", "pull"].map(String::from);
        let account_secrets = ["pull", "late", "other"].map(String::from);
        let p = policy();
        let states = [CredentialState {
            name: "corp".into(),
            ready: Some(false),
            reason: "SourceUnavailable".into(),
        }];
        let g = gather(
            &image,
            &pod_secrets,
            &secrets,
            &account_secrets,
            &Subject::new("team-a", "web"),
            Some(ClusterPolicy {
                policy: &p,
                states: &states,
            }),
        );
        let sources: Vec<String> = g
            .candidates
            .iter()
            .map(|(c, _)| c.source.to_string())
            .collect();
        assert_eq!(
            sources,
            [
                "Secret pull (entry r.example, user u)",
                "the kubelet plugin (PullGrant g, RegistryCredential corp)"
            ]
        );
        assert!(g.candidates[0].1.is_some() && g.candidates[1].1.is_none());
        assert_eq!(
            g.secret_problems,
            [
                SecretProblem::Missing {
                    secret: "missing".into()
                },
                SecretProblem::Unusable {
                    secret: "broken".into(),
                    why: "not JSON".into()
                },
                SecretProblem::NoEntry {
                    secret: "other".into()
                },
            ]
        );
        assert_eq!(g.admission_race, ["late"]);
        assert_eq!(
            g.plugin,
            PluginAnswer::Granted {
                grant: "g".into(),
                credential: "corp".into(),
                ready: Some(false),
                ready_reason: "SourceUnavailable".into()
            }
        );

        // Another service account: denied, and nothing else to try → anonymous.
        let g = gather(
            &image,
            &[],
            &secrets,
            &[],
            &Subject::new("team-a", "batch"),
            Some(ClusterPolicy {
                policy: &p,
                states: &[],
            }),
        );
        assert!(
            matches!(g.plugin, PluginAnswer::Denied { .. }),
            "{:?}",
            g.plugin
        );
        assert_eq!(g.candidates.len(), 1);
        assert_eq!(g.candidates[0].0.source, Source::Anonymous);
        assert_eq!(g.candidates[0].1, Some(Credential::Anonymous));
        // No CRDs: no plugin answer at all.
        let g = gather(
            &image,
            &[],
            &secrets,
            &[],
            &Subject::new("team-a", "web"),
            None,
        );
        assert_eq!(g.plugin, PluginAnswer::NotInstalled);
    }

    #[test]
    fn recheck_only_registry_problems_with_the_network() {
        assert_eq!(recheck(true, Some(PullFailure::Unauthorized)), Ok(()));
        assert_eq!(
            recheck(false, Some(PullFailure::Unauthorized)),
            Err("--no-network")
        );
        assert_eq!(recheck(true, None), Err("no pull failure reported"));
        for f in [PullFailure::InvalidImageName, PullFailure::NotAPullFailure] {
            assert_eq!(recheck(true, Some(f)), Err("not a registry problem"));
        }
    }

    #[test]
    fn connect_failures_by_detail() {
        for (detail, class) in [
            ("invalid peer certificate: UnknownIssuer", PullFailure::Tls),
            (
                "tcp connect error: Connection refused (os error 111)",
                PullFailure::Refused,
            ),
            (
                "dns error: failed to lookup address information",
                PullFailure::Dns,
            ),
            ("operation timed out", PullFailure::Timeout),
            ("something else", PullFailure::Unknown),
        ] {
            assert_eq!(connect_failure(detail), class, "{detail}");
        }
    }
}
