//! The credentials a deployment can use right now, built from the policy
//! documents and the central Secrets: a token issuer's keys, a static docker
//! config, or a refreshing exec source. Shared by the broker (exchange,
//! `/token`, resolve, admission) and the controller (sync), so both read the
//! same documents the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pullbroker_core::policy::model::CaBundleSource;
use pullbroker_core::policy::{Named, Policy, Problem, PullGrantSpec, RegistryCredentialSpec};
use pullbroker_core::DockerConfig;

use crate::keys::{IssuerKeys, SigningKey};
use crate::source::{Refreshers, Served};
use crate::{Error, Result};

/// Central secrets by name: (namespace if given, key → bytes).
pub type Secrets = BTreeMap<String, (Option<String>, BTreeMap<String, Vec<u8>>)>;

/// ConfigMaps of the system namespace by name: key → bytes (`data` and
/// `binaryData` alike). Only CA bundles are read from them.
pub type ConfigMaps = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// A usable credential.
#[derive(Clone)]
pub enum CredentialRuntime {
    /// The broker mints registry tokens with these keys.
    TokenIssuer {
        keys: Box<IssuerKeys>,
        service: String,
        issuer: String,
        token_ttl: Duration,
    },
    /// A static upstream credential (dockerconfigjson).
    Static { config: DockerConfig },
    /// Short-lived upstream credentials from an exec or ECR source, refreshed.
    Refreshing {
        source: std::sync::Arc<crate::source::Refresher>,
    },
}

/// What a credential offers right now ([`CredentialRuntime::current`]): keys
/// to mint with, or an upstream docker config.
pub enum Current<'a> {
    /// A token issuer: the caller mints what it hands out (a registry token,
    /// a broker credential) with these keys.
    Mint {
        keys: &'a IssuerKeys,
        service: &'a str,
        issuer: &'a str,
        token_ttl: Duration,
    },
    /// A static password, as configured.
    Static(&'a DockerConfig),
    /// An exec source's current credential, valid until its `expires_at`,
    /// with why it is the previous one if its refresh failed.
    Refreshed(Served),
}

impl Current<'_> {
    /// The upstream docker config, unless this credential mints its own.
    pub fn config(&self) -> Option<&DockerConfig> {
        match self {
            Current::Mint { .. } => None,
            Current::Static(c) => Some(c),
            Current::Refreshed(s) => Some(&s.upstream.config),
        }
    }

    /// Why this is the previous credential of an exec source: its refresh
    /// failed (it still works until it expires).
    pub fn refresh_failed(&self) -> Option<&Error> {
        match self {
            Current::Refreshed(s) => s.refresh_failed.as_ref(),
            _ => None,
        }
    }

    /// When what it offers stops working, if that is known.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Current::Refreshed(s) => Some(s.upstream.expires_at),
            _ => None,
        }
    }

    /// `broker`, `static` or `refreshing`, for answers and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Current::Mint { .. } => "broker",
            Current::Static(_) => "static",
            Current::Refreshed(_) => "refreshing",
        }
    }
}

/// A credential whose source failed. Its `Display` names only the credential
/// and is what clients see; `cause` is for logs (it never holds an
/// executable's output, see [`crate::source`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential {credential:?} is unavailable: its source failed")]
pub struct Unavailable {
    pub credential: String,
    pub cause: Error,
}

impl CredentialRuntime {
    /// The credential for use now, after go-containerregistry's Keychain →
    /// Authenticator: lazy (an exec source runs only when its credential is
    /// due, see [`crate::source::Refresher::current`]) and fallible. The one
    /// place a failing source is logged and turned into [`Unavailable`], for
    /// exchange, resolve and the controller's issuing alike.
    pub async fn current(
        &self,
        name: &str,
        now: i64,
        refresh_after: f64,
    ) -> Result<Current<'_>, Unavailable> {
        match self {
            CredentialRuntime::TokenIssuer {
                keys,
                service,
                issuer,
                token_ttl,
            } => Ok(Current::Mint {
                keys,
                service,
                issuer,
                token_ttl: *token_ttl,
            }),
            CredentialRuntime::Static { config } => Ok(Current::Static(config)),
            CredentialRuntime::Refreshing { source } => source
                .current(now, refresh_after)
                .await
                .map(Current::Refreshed)
                .map_err(|cause| {
                    tracing::warn!(credential = %name, error = %cause, "credential source unavailable");
                    Unavailable {
                        credential: name.to_string(),
                        cause,
                    }
                }),
        }
    }
}

/// How a credential's registries are reached: its `transport`, with the
/// CA bundle read from its Secret. The registry client builds one HTTP
/// client per distinct trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The credential's registry patterns.
    pub registries: Vec<String>,
    /// PEM certificates to trust (beside the system's roots unless `ca_only`).
    pub ca_pem: Option<Vec<u8>>,
    pub ca_only: bool,
    pub plain_http: bool,
}

/// A credential's [`Trust`], `None` when it has no `transport`.
pub fn trust(
    spec: &RegistryCredentialSpec,
    secrets: &Secrets,
    config_maps: &ConfigMaps,
) -> Result<Option<Trust>> {
    let Some(t) = &spec.transport else {
        return Ok(None);
    };
    let ca_pem = match t.ca_bundle.as_ref().map(|b| (b, b.source())) {
        None => None,
        Some((b, Some(source))) => Some(ca_bundle(source, &b.key, secrets, config_maps)?),
        Some((_, None)) => {
            return Err(Error::Invalid(
                "transport.caBundle names neither a Secret nor a ConfigMap".into(),
            ))
        }
    };
    Ok(Some(Trust {
        registries: spec.registries.clone(),
        ca_pem,
        ca_only: t.ca_only,
        plain_http: t.plain_http,
    }))
}

/// The PEM bundle under `key` of a Secret or ConfigMap, refused here, with
/// the object's name, when it holds no certificate — rather than by every
/// request failing later.
fn ca_bundle(
    source: CaBundleSource<'_>,
    key: &str,
    secrets: &Secrets,
    config_maps: &ConfigMaps,
) -> Result<Vec<u8>> {
    let data = match source {
        CaBundleSource::Secret(name) => {
            secrets
                .get(name)
                .map(|(_, d)| d)
                .ok_or_else(|| Error::NoSecret {
                    name: name.to_string(),
                })?
        }
        CaBundleSource::ConfigMap(name) => {
            config_maps.get(name).ok_or_else(|| Error::NoConfigMap {
                name: name.to_string(),
            })?
        }
    };
    let problem = match data.get(key) {
        None => format!("caBundle.key {key:?} is not in it"),
        Some(pem)
            if std::str::from_utf8(pem)
                .is_ok_and(|t| t.contains("-----BEGIN CERTIFICATE-----")) =>
        {
            return Ok(pem.clone())
        }
        Some(_) => format!("caBundle key {key:?} holds no PEM certificate"),
    };
    Err(Error::Invalid(format!("{source}: {problem}")))
}

/// What [`assemble`] makes of the documents.
pub struct Assembled {
    pub policy: Policy,
    /// Usable credentials, by name.
    pub runtimes: BTreeMap<String, CredentialRuntime>,
    /// Each usable credential's [`Trust`], when it has a `transport`.
    pub trust: BTreeMap<String, Trust>,
    pub problems: Vec<Problem>,
}

/// The policy and usable credentials from documents, with every problem.
/// The file loader refuses a file with any problem; a cluster source serves
/// what is valid (invalid documents are left out, never widening access).
pub fn assemble(
    credentials: Vec<Named<RegistryCredentialSpec>>,
    grants: Vec<Named<PullGrantSpec>>,
    secrets: &Secrets,
    config_maps: &ConfigMaps,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    exec_dir: Option<&Path>,
    refreshers: &Refreshers,
) -> Assembled {
    let mut problems = Vec::new();
    // Credentials need their secrets.
    let mut runtimes = BTreeMap::new();
    let mut trusts = BTreeMap::new();
    for c in &credentials {
        // An invalid one is reported by `Policy::new` below.
        if c.spec.validate().is_err() {
            continue;
        }
        let runtime = credential_runtime(&c.name, &c.spec, secrets, exec_dir, refreshers)
            .and_then(|rt| Ok((rt, trust(&c.spec, secrets, config_maps)?)));
        match runtime {
            Ok((rt, t)) => {
                runtimes.insert(c.name.clone(), rt);
                if let Some(t) = t {
                    trusts.insert(c.name.clone(), t);
                }
            }
            Err(e) => problems.push(Problem::credential(&c.name, e.to_string())),
        }
    }
    let mut services: Vec<(&String, &String)> = Vec::new();
    for (name, r) in &runtimes {
        if let CredentialRuntime::TokenIssuer { service, .. } = r {
            if let Some((first, _)) = services.iter().find(|(_, s)| *s == service) {
                problems.push(Problem::credential(
                    name,
                    format!("shares token-issuer service {service:?} with {first:?}"),
                ));
            }
            services.push((name, service));
        }
    }
    let (policy, policy_problems) = Policy::new(credentials, grants, namespaces);
    problems.extend(policy_problems);
    Assembled {
        policy,
        runtimes,
        trust: trusts,
        problems,
    }
}

fn secret_key<'a>(secrets: &'a Secrets, name: &str, key: &'static str) -> Result<&'a [u8]> {
    let (_, data) = secrets.get(name).ok_or_else(|| Error::NoSecret {
        name: name.to_string(),
    })?;
    data.get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| Error::NoSecretKey {
            name: name.to_string(),
            key,
        })
}

pub fn credential_runtime(
    name: &str,
    spec: &RegistryCredentialSpec,
    secrets: &Secrets,
    exec_dir: Option<&Path>,
    refreshers: &Refreshers,
) -> Result<CredentialRuntime> {
    if let Some(e) = &spec.source.exec {
        let registry = spec
            .registries
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        return Ok(CredentialRuntime::Refreshing {
            source: refreshers.get(name, e, registry, exec_dir),
        });
    }
    if let Some(e) = &spec.source.ecr {
        return Ok(CredentialRuntime::Refreshing {
            source: refreshers.get_ecr(name, e, &spec.registries)?,
        });
    }
    if let Some(r) = &spec.source.secret_ref {
        let bytes = secret_key(secrets, &r.name, ".dockerconfigjson")?;
        let config = DockerConfig::parse(bytes).map_err(|e| Error::from(e).in_secret(&r.name))?;
        return Ok(CredentialRuntime::Static { config });
    }
    let t = spec
        .source
        .token_issuer
        .as_ref()
        // validate() admits exactly one source; exec and secretRef returned above.
        .expect("validated: exactly one source");
    let load_key = |name: &str| -> Result<SigningKey> {
        let text = |key: &'static str| {
            std::str::from_utf8(secret_key(secrets, name, key)?)
                .map_err(|_| Error::material(key, "is not text").in_secret(name))
        };
        SigningKey::from_pem(text("tls.key")?, text("tls.crt")?).map_err(|e| e.in_secret(name))
    };
    let keys = IssuerKeys {
        current: load_key(&t.signing_key_secret_ref.name)?,
        previous: t
            .previous_signing_key_secret_ref
            .as_ref()
            .map(|r| load_key(&r.name))
            .transpose()?,
    };
    let token_ttl = Error::duration(
        "tokenIssuer.tokenTtl",
        t.token_ttl.as_deref(),
        Duration::from_secs(300),
    )?;
    Ok(CredentialRuntime::TokenIssuer {
        keys: Box::new(keys),
        service: t.service.clone(),
        issuer: t.issuer.clone(),
        token_ttl,
    })
}

/// Where a freshly assembled policy goes, and where exec sources live.
pub trait PolicySink: Send + Sync + 'static {
    fn install(
        &self,
        policy: Policy,
        credentials: BTreeMap<String, CredentialRuntime>,
        trust: BTreeMap<String, Trust>,
    );
    /// The operator's exec source directory (exec sources are refused without one).
    fn exec_source_dir(&self) -> Option<std::path::PathBuf>;
    /// Whether what was installed is current (`false`: the source cannot
    /// watch the cluster right now and the last policy is being served).
    fn current(&self, _current: bool) {}
}
