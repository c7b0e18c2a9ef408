//! The service-account issuer settings: where the keys come from (a JWKS
//! file, a JWKS URL or OIDC discovery), leeway, key refresh, the TokenReview
//! cache, and the files they read (resolved against the config's directory
//! and watched, as a projected token is rotated in place).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use super::resolve;
use super::spec::{duration_setting, BrokerConfigSpec, TokenReviewSpec};
use crate::satoken::{IssuerSettings, JwksSource};

/// The online TokenReview settings, their paths resolved and watched.
pub(super) fn token_review(
    broker: &BrokerConfigSpec,
    base: &Path,
    watched: &mut Vec<PathBuf>,
) -> Option<TokenReviewSpec> {
    // Its files are read when the verifier is built: resolved against the
    // config's directory like every other path, and watched (a projected
    // token is rotated in place).
    broker
        .service_account_issuer
        .token_review
        .clone()
        .map(|mut r| {
            r.token_file = resolve(base, &r.token_file);
            r.ca_file = r.ca_file.map(|c| resolve(base, &c));
            watched.push(r.token_file.clone());
            watched.extend(r.ca_file.clone());
            r
        })
}

/// How service-account tokens are verified (`dev_keys_allowed` is the
/// caller's: it depends on the listeners).
pub(super) fn settings(
    broker: &BrokerConfigSpec,
    base: &Path,
    watched: &mut Vec<PathBuf>,
) -> Result<IssuerSettings, String> {
    let s = &broker.service_account_issuer;
    let jwks = match (&s.jwks_file, &s.jwks_url, &s.discovery_url) {
        (Some(f), None, None) => {
            let f = resolve(base, f);
            watched.push(f.clone());
            JwksSource::Static(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("jwksFile {}: {e}", f.display()))?,
            )
        }
        (None, Some(u), None) => JwksSource::Url(u.clone()),
        (None, None, Some(u)) => JwksSource::Discovery(u.clone()),
        _ => {
            return Err(
                "serviceAccountIssuer needs exactly one of jwksFile, jwksUrl, discoveryUrl".into(),
            )
        }
    };
    let leeway = duration_setting(
        "serviceAccountIssuer.leeway",
        s.leeway.as_deref(),
        Duration::from_secs(30),
    )?;
    if leeway > crate::satoken::MAX_LEEWAY {
        return Err("serviceAccountIssuer.leeway must be at most 60s".into());
    }
    let keys_refresh_interval = duration_setting(
        "serviceAccountIssuer.keysRefreshInterval",
        s.keys_refresh_interval.as_deref(),
        crate::satoken::KEYS_REFRESH_EVERY,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&keys_refresh_interval) {
        return Err("serviceAccountIssuer.keysRefreshInterval must be between 1s and 24h".into());
    }
    let mut review_cache = crate::tokenreview::ReviewCacheSettings::default();
    if let Some(r) = &s.token_review {
        let ttl = |v: &Option<String>,
                   field: &str,
                   default: Duration|
         -> Result<Duration, String> {
            let d = duration_setting(
                &format!("serviceAccountIssuer.tokenReview.{field}"),
                v.as_deref(),
                default,
            )?;
            if d > Duration::from_secs(60) {
                return Err(format!("serviceAccountIssuer.tokenReview.{field} must be at most 60s: revocation waits for it"));
            }
            Ok(d)
        };
        review_cache.positive = ttl(&r.cache_ttl, "cacheTtl", review_cache.positive)?;
        review_cache.negative = ttl(
            &r.negative_cache_ttl,
            "negativeCacheTtl",
            review_cache.negative,
        )?;
    }
    watched.extend(
        s.token_file
            .iter()
            .chain(&s.ca_file)
            .map(|p| resolve(base, p)),
    );
    let read =
        |p: &PathBuf| std::fs::read(resolve(base, p)).map_err(|e| format!("{}: {e}", p.display()));
    Ok(IssuerSettings {
        issuer: s.issuer.clone(),
        audience: broker
            .audience
            .clone()
            .unwrap_or_else(|| "pullbroker".into()),
        jwks,
        leeway,
        fetch_token: s
            .token_file
            .as_ref()
            .map(|p| {
                read(p).map(|b| SecretString::from(String::from_utf8_lossy(&b).trim().to_string()))
            })
            .transpose()?,
        ca_pem: s.ca_file.as_ref().map(read).transpose()?,
        min_refresh_interval: Duration::from_secs(10),
        keys_refresh_interval,
        review_cache,
        dev_keys_allowed: false,
    })
}
