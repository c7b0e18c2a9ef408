//! What goes into a synced pull secret, by credential source:
//!
//! - token issuer → a broker credential minted for the namespace (an HS256 JWT,
//!   empty service account), valid for the grant's ttl. The broker's `/token`
//!   honours it only while a grant syncs that namespace, and only for the
//!   repositories granted: the secret is scoped, short-lived and revocable;
//! - static upstream password → a copy of the central dockerconfigjson, only
//!   on the grant's `allowUpstreamCopy` (the plan refuses otherwise), re-copied
//!   every ttl so a changed upstream password propagates;
//! - exec source (ECR-style) → the upstream's own short-lived credential,
//!   also only on `allowUpstreamCopy`, with its real issue and expiry times
//!   when it expires within the grant's ttl, else issued now for the ttl.
//!
//! The caller hands in the credential as it stands now
//! ([`CredentialRuntime::current`](pullbroker_credentials::runtime::CredentialRuntime::current)),
//! so an exec source is refreshed, and its failure reported, in one place.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::Policy;
use pullbroker_core::time::UnixTime;
use pullbroker_credentials::mint::{BrokerCredential, BROKER_USERNAME};
use pullbroker_credentials::runtime::Current;
use serde_json::json;

/// The content of a synced secret. Debug never shows it.
pub struct Issued {
    pub dockerconfigjson: Vec<u8>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("dockerconfigjson", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Mints the content of `namespace`'s secret for `grant`; a static copy
/// takes the `.dockerconfigjson` that `central_config` finds in the central
/// Secret of that name. Errors name what is missing, never a secret value.
pub fn issue(
    policy: &Policy,
    central_config: impl Fn(&str) -> Option<Vec<u8>>,
    grant: &str,
    namespace: &str,
    now: i64,
    current: &Current<'_>,
) -> Result<Issued, String> {
    let g = policy
        .grants()
        .iter()
        .find(|g| g.name == grant)
        .ok_or_else(|| format!("PullGrant {grant:?} no longer exists"))?;
    let spec = policy
        .credentials()
        .get(&g.spec.credential)
        .ok_or_else(|| format!("RegistryCredential {:?} does not exist", g.spec.credential))?;
    let expires_at = UnixTime(now).plus(g.spec.ttl()).0;
    let dockerconfigjson = match current {
        Current::Mint { keys, .. } => {
            let password = BrokerCredential {
                ns: namespace.to_string(),
                sa: String::new(),
                cred: g.spec.credential.clone(),
                iat: now,
                exp: expires_at,
            }
            .seal(&keys.current);
            let auth = STANDARD.encode(format!("{BROKER_USERNAME}:{password}"));
            let entries: serde_json::Map<String, serde_json::Value> = spec
                .registries
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        json!({"username": BROKER_USERNAME, "password": password, "auth": auth}),
                    )
                })
                .collect();
            serde_json::to_vec(&json!({ "auths": entries })).expect("serializable")
        }
        Current::Refreshed(served) => {
            if !g.spec.allows_upstream_copy() {
                return Err(format!(
                    "PullGrant {grant:?} does not allow an upstream copy"
                ));
            }
            let u = &served.upstream;
            // The copy lives at most the grant's ttl: past it the Secret is
            // reissued (or removed with the grant). The token itself stays
            // valid upstream until its own expiry; that we cannot shorten.
            // Within the ttl the copy keeps the token's real times; past it,
            // it is issued now for the ttl.
            let capped = u.expires_at > expires_at;
            return Ok(Issued {
                dockerconfigjson: u.dockerconfigjson.clone(),
                issued_at: if capped { now } else { u.issued_at },
                expires_at: u.expires_at.min(expires_at),
            });
        }
        Current::Static(_) => {
            if !g.spec.allows_upstream_copy() {
                return Err(format!("PullGrant {grant:?} does not allow a static copy"));
            }
            let name = &spec
                .source
                .secret_ref
                .as_ref()
                .ok_or("a static credential without secretRef")?
                .name;
            central_config(name)
                .ok_or_else(|| format!("Secret {name:?} has no .dockerconfigjson"))?
        }
    };
    Ok(Issued {
        dockerconfigjson,
        issued_at: now,
        expires_at,
    })
}
