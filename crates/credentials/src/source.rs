//! Upstream credentials that expire and are refreshed: the `exec` and
//! `ecr` credential sources, behind one [`Refresher`].
//!
//! The executable speaks the kubelet credential-provider exec protocol: a
//! `CredentialProviderRequest` (v1) on stdin naming an image of the
//! credential's registry, a `CredentialProviderResponse` on stdout whose
//! `auth` entries hold username/password and whose `cacheDuration` is the
//! credential's real lifetime. So existing provider plugins work unchanged.
//!
//! A [`Refresher`] keeps the current credential and runs the executable
//! again once the caller's fraction of that lifetime has passed — one run at
//! a time, shared by every caller (all namespaces of a sync grant share one
//! refresh). Executables are looked up by file name in one operator-given
//! directory; without it exec sources are refused.
//! Errors never include the executable's output: it holds secrets.
//!
//! An `ecr` source ([`pullbroker_aws::Ecr`]) asks ECR for a token with the
//! process's AWS identity; its docker config names the credential's
//! registries, and its lifetime is the token's own `expiresAt`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pullbroker_core::policy::model::{EcrSource, ExecSource};
use pullbroker_core::time::UnixTime;
use pullbroker_core::DockerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Error, ExecProblem};

/// Largest response read from an executable.
const MAX_OUTPUT: u64 = 1 << 20;

/// A credential as an exec source gave it. Debug never shows it.
pub struct Upstream {
    pub config: DockerConfig,
    /// The `.dockerconfigjson` bytes (for synced secrets).
    pub dockerconfigjson: Vec<u8>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Go's `time.Duration` text (`12h0m0s`, `1m30s`, `1.5s`, `500ms`), which
/// is what `cacheDuration` holds.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let (unit, len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, f)| (*f, u.len()))
        .ok_or_else(bad)?;
        total += n * unit;
        rest = &rest[len..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses a `CredentialProviderResponse` into a docker config; `None` when
/// it gives no lifetime.
pub fn parse_response(
    out: &[u8],
) -> Result<(DockerConfig, Vec<u8>, Option<Duration>), ExecProblem> {
    parse_response_text(out).map_err(ExecProblem::Response)
}

fn parse_response_text(out: &[u8]) -> Result<(DockerConfig, Vec<u8>, Option<Duration>), String> {
    let v: Value = serde_json::from_slice(out).map_err(|e| {
        format!(
            "output is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if v["kind"] != "CredentialProviderResponse" {
        return Err("output is not a CredentialProviderResponse".into());
    }
    let auth = v["auth"].as_object().ok_or("response has no auth")?;
    let mut auths = serde_json::Map::new();
    for (key, entry) in auth {
        let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) else {
            return Err(format!("auth[{key:?}] needs a username and a password"));
        };
        // `auth` too: containers/image (skopeo, CRI-O) reads only that field.
        let auth = STANDARD.encode(format!("{u}:{p}"));
        auths.insert(
            key.clone(),
            json!({"username": u, "password": p, "auth": auth}),
        );
    }
    if auths.is_empty() {
        return Err("response has no auth entries".into());
    }
    let raw = serde_json::to_vec(&json!({ "auths": auths })).expect("serializable");
    let config = DockerConfig::parse(&raw).map_err(|e| e.to_string())?;
    let lifetime = match v["cacheDuration"].as_str() {
        None => None,
        Some(d) => Some(parse_go_duration(d)?).filter(|d| !d.is_zero()),
    };
    Ok((config, raw, lifetime))
}

/// When `fraction` of the lifetime from `issued_at` to `expires_at` has
/// passed. Total for any inputs: `f64 as i64` saturates and so does the sum,
/// so an executable's absurd `cacheDuration` means "far future", not a panic.
fn refresh_due(issued_at: i64, expires_at: i64, fraction: f64) -> i64 {
    let life = expires_at.saturating_sub(issued_at) as f64;
    issued_at.saturating_add((life * fraction) as i64)
}

/// Keeps one refreshing source's current credential.
pub struct Refresher {
    name: String,
    fetch: Fetch,
    /// Held across a run: callers arriving meanwhile wait for its outcome.
    state: tokio::sync::Mutex<State>,
    /// The fresh credential, readable without that lock: every exchange
    /// reads it, and under load a contended `try_lock` sent callers down
    /// the slow path (a spawned task each) although nothing was due.
    fresh: std::sync::RwLock<Option<Arc<Upstream>>>,
}

/// Where a [`Refresher`] gets a new credential.
enum Fetch {
    Exec {
        spec: ExecSource,
        registry: String,
        /// Where executables live (kubelet's `--image-credential-provider-bin-dir`).
        dir: Option<PathBuf>,
    },
    Ecr {
        source: pullbroker_aws::Ecr,
        /// The credential's registry patterns: the docker config's keys.
        registries: Vec<String>,
    },
}

/// What a [`Refresher`] serves.
#[derive(Debug, Clone)]
pub struct Served {
    pub upstream: Arc<Upstream>,
    /// Why the last refresh failed, when `upstream` is the previous
    /// credential served until it expires (for statuses: degraded, not down).
    pub refresh_failed: Option<Error>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Upstream>>,
    failure: Option<Failure>,
}

/// A failed run, kept so that the callers queued behind it (and those that
/// follow until `retry_at`) share its outcome instead of each re-running a
/// failing executable for up to its timeout.
struct Failure {
    error: Error,
    retry_at: i64,
    streak: u32,
}

/// Seconds to wait after the `streak`-th failure in a row: 1, 2, 4 … 60.
fn backoff(streak: u32) -> i64 {
    (1i64 << streak.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}
const MAX_BACKOFF: i64 = 60;

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("credential", &self.name)
            .finish_non_exhaustive()
    }
}

/// The live exec-source refreshers of one broker or controller, by
/// credential name and spec, with their last use. Owned by the value that
/// builds credential runtimes (a broker, a controller, a policy source) and
/// handed to [`crate::runtime::assemble`]: the cached credential must
/// outlive the runtimes built from one reload or one reconcile, but two
/// brokers in one process must not share it. One whose credential has a
/// newer spec goes once unused for [`STALE`].
#[derive(Default)]
pub struct Refreshers(Mutex<HashMap<String, Live>>);

/// A refresher with its credential's name and its last use.
type Live = (String, std::time::Instant, Arc<Refresher>);
const STALE: Duration = Duration::from_secs(600);

impl fmt::Debug for Refreshers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Refreshers").field("live", &n).finish()
    }
}

impl Refreshers {
    /// The refresher for an exec credential: the same one while its spec
    /// is unchanged, so neither a reload nor the end of a reconcile throws
    /// the current credential away.
    pub fn get(
        &self,
        name: &str,
        spec: &ExecSource,
        registry: &str,
        dir: Option<&std::path::Path>,
    ) -> Arc<Refresher> {
        // A struct of strings and lists of strings always serializes.
        let spec_json = serde_json::to_string(spec).expect("serializable");
        let key = format!("exec\0{name}\0{registry}\0{dir:?}\0{spec_json}");
        self.get_or_make(name, key, || Fetch::Exec {
            spec: spec.clone(),
            registry: registry.into(),
            dir: dir.map(PathBuf::from),
        })
    }

    /// The refresher for an ECR credential, kept like [`Refreshers::get`]'s
    /// (and with it the AWS credentials the SDK caches).
    pub fn get_ecr(
        &self,
        name: &str,
        spec: &EcrSource,
        registries: &[String],
    ) -> Result<Arc<Refresher>, Error> {
        let source = pullbroker_aws::Ecr::new(name, spec, registries).map_err(Error::Invalid)?;
        let spec_json = serde_json::to_string(spec).expect("serializable");
        let key = format!("ecr\0{name}\0{registries:?}\0{spec_json}");
        Ok(self.get_or_make(name, key, || Fetch::Ecr {
            source,
            registries: registries.to_vec(),
        }))
    }

    fn get_or_make(
        &self,
        name: &str,
        key: String,
        fetch: impl FnOnce() -> Fetch,
    ) -> Arc<Refresher> {
        let mut all = self.0.lock().expect("poisoned");
        let now = std::time::Instant::now();
        if let Some((_, used, r)) = all.get_mut(&key) {
            *used = now;
            return r.clone();
        }
        all.retain(|_, (n, used, _)| n != name || now.duration_since(*used) < STALE);
        let r = Arc::new(Refresher {
            name: name.into(),
            fetch: fetch(),
            state: tokio::sync::Mutex::default(),
            fresh: std::sync::RwLock::default(),
        });
        all.insert(key, (name.to_string(), now, r.clone()));
        r
    }
}

impl Refresher {
    /// The current credential, refreshed first once `refresh_after` (a
    /// fraction) of its lifetime has passed. A failed refresh is retried
    /// only after a backoff (1 s doubling to 60 s, on the caller's clock
    /// `now`); meanwhile, and whenever a refresh fails, a credential that
    /// has not expired yet is still served, saying why it was not refreshed.
    ///
    /// A refresh runs in a task of the refresher's own: a caller whose
    /// deadline passes (admission's budget, the request timeout) drops only
    /// its wait, never the run that the callers queued behind it await.
    pub async fn current(self: &Arc<Self>, now: i64, refresh_after: f64) -> Result<Served, Error> {
        let fresh = self.fresh.read().expect("poisoned").clone();
        if let Some(u) =
            fresh.filter(|u| now < refresh_due(u.issued_at, u.expires_at, refresh_after))
        {
            return Ok(Served {
                upstream: u,
                refresh_failed: None,
            });
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.refresh(now, refresh_after).await })
            .await
            .unwrap_or_else(|e| {
                Err(Error::Invalid(format!(
                    "credential {:?}: the refresh task ended: {e}",
                    self.name
                )))
            })
    }

    /// [`Refresher::current`]'s work, under the state lock.
    async fn refresh(&self, now: i64, refresh_after: f64) -> Result<Served, Error> {
        let mut state = self.state.lock().await;
        let unexpired = state.current.clone().filter(|u| now < u.expires_at);
        let stale = |error: &Error| {
            unexpired.clone().map(|upstream| Served {
                upstream,
                refresh_failed: Some(error.clone()),
            })
        };
        if let Some(u) = &state.current {
            if now < refresh_due(u.issued_at, u.expires_at, refresh_after) {
                return Ok(Served {
                    upstream: u.clone(),
                    refresh_failed: None,
                });
            }
        }
        if let Some(f) = state.failure.as_ref().filter(|f| now < f.retry_at) {
            return stale(&f.error).ok_or_else(|| f.error.clone());
        }
        match self.run(now).await {
            Ok(u) => {
                let fresh = Arc::new(u);
                tracing::info!(credential = %self.name, source = self.fetch.kind(), expires_at = fresh.expires_at, "credential source refreshed");
                state.current = Some(fresh.clone());
                *self.fresh.write().expect("poisoned") = Some(fresh.clone());
                state.failure = None;
                Ok(Served {
                    upstream: fresh,
                    refresh_failed: None,
                })
            }
            Err(error) => {
                let served = stale(&error);
                let streak = state.failure.as_ref().map_or(0, |f| f.streak) + 1;
                let retry_at = now.saturating_add(backoff(streak));
                tracing::warn!(credential = %self.name, source = self.fetch.kind(), %error, retry_at, serving_cached = unexpired.is_some(), "credential source refresh failed");
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at,
                    streak,
                });
                served.ok_or(error)
            }
        }
    }

    async fn run(&self, now: i64) -> Result<Upstream, Error> {
        match &self.fetch {
            Fetch::Exec {
                spec,
                registry,
                dir,
            } => run_exec(spec, registry, dir.as_deref(), now).await,
            Fetch::Ecr { source, registries } => {
                let token = source.token().await.map_err(|problem| Error::Ecr {
                    region: source.region().to_string(),
                    problem,
                })?;
                if token.expires_at <= now {
                    return Err(Error::Expired {
                        expires_at: token.expires_at,
                    });
                }
                let (config, dockerconfigjson) = ecr_config(registries, &token)?;
                Ok(Upstream {
                    config,
                    dockerconfigjson,
                    issued_at: now,
                    expires_at: token.expires_at,
                })
            }
        }
    }
}

impl Fetch {
    fn kind(&self) -> &'static str {
        match self {
            Fetch::Exec { .. } => "exec",
            Fetch::Ecr { .. } => "ecr",
        }
    }
}

/// The docker config an ECR token makes: the token for each of the
/// credential's registries.
fn ecr_config(
    registries: &[String],
    token: &pullbroker_aws::EcrToken,
) -> Result<(DockerConfig, Vec<u8>), Error> {
    use secrecy::ExposeSecret as _;
    let (user, password) = (&token.username, token.password.expose_secret());
    let auth = STANDARD.encode(format!("{user}:{password}"));
    let auths: serde_json::Map<String, Value> = registries
        .iter()
        .map(|r| {
            (
                r.clone(),
                json!({"username": user, "password": password, "auth": auth}),
            )
        })
        .collect();
    let raw = serde_json::to_vec(&json!({ "auths": auths })).expect("serializable");
    let config = DockerConfig::parse(&raw)?;
    Ok((config, raw))
}

/// One run of an exec source.
async fn run_exec(
    spec: &ExecSource,
    registry: &str,
    dir: Option<&std::path::Path>,
    now: i64,
) -> Result<Upstream, Error> {
    let fail = |problem| Error::Exec {
        command: spec.command.clone(),
        problem,
    };
    let dir = dir.ok_or_else(|| fail(ExecProblem::Disabled))?;
    let path = dir.join(&spec.command);
    let timeout = Error::duration(
        "exec.timeout",
        spec.timeout.as_deref(),
        Duration::from_secs(30),
    )?;
    let default_lifetime = Error::duration(
        "exec.defaultLifetime",
        spec.default_lifetime.as_deref(),
        Duration::from_secs(3600),
    )?;
    let mut child = tokio::process::Command::new(&path)
        .args(&spec.args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            fail(ExecProblem::Spawn {
                path: path.display().to_string(),
                cause: e.to_string(),
            })
        })?;
    // The registry patterns may be globs; a concrete image is what the protocol asks about.
    let host = registry.replace("*.", "x.");
    let request = json!({"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
            "image": format!("{host}/pullbroker/source")});
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let io = async {
        stdin.write_all(request.to_string().as_bytes()).await.ok();
        drop(stdin);
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_OUTPUT)
            .read_to_end(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, out))
    };
    let (status, out) = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| fail(ExecProblem::Timeout(timeout)))?
        .map_err(|e| fail(ExecProblem::Io(e)))?;
    if !status.success() {
        return Err(fail(ExecProblem::Exited(status.to_string())));
    }
    let (config, dockerconfigjson, lifetime) = parse_response(&out).map_err(fail)?;
    Ok(Upstream {
        config,
        dockerconfigjson,
        issued_at: now,
        expires_at: UnixTime(now)
            .plus(
                lifetime
                    .unwrap_or(default_lifetime)
                    .max(Duration::from_secs(1)),
            )
            .0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn refresh_due_is_total_and_within_the_lifetime(issued in proptest::prelude::any::<i64>(),
                                                         expires in proptest::prelude::any::<i64>(),
                                                         fraction in 0.0f64..=1.0) {
            let due = refresh_due(issued, expires, fraction);
            if expires >= issued {
                proptest::prop_assert!(issued <= due, "{due} before {issued}");
            }
        }
    }

    #[test]
    fn the_longest_lifetimes_do_not_overflow() {
        let (_, _, lifetime) = parse_response(br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"277777h","auth":{"r.io":{"username":"u","password":"p"}}}"#).unwrap();
        let now = i64::MAX - 10;
        let expires = UnixTime(now).plus(lifetime.unwrap()).0;
        assert_eq!(expires, i64::MAX);
        assert_eq!(refresh_due(now, expires, 0.8), now + 8);
        assert!(refresh_due(i64::MIN, i64::MAX, 0.5) < 0);
    }
    use proptest::prelude::*;

    proptest! {
        /// Whatever an executable prints, parsing answers (never panics)
        /// and its errors never repeat what it printed.
        #[test]
        fn any_output_parses_or_fails_cleanly(out in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = parse_response(&out) {
                let text = String::from_utf8_lossy(&out);
                prop_assert!(text.len() < 8 || !e.to_string().contains(text.as_ref()));
            }
        }

        #[test]
        fn response_shaped_output(user in "[a-zA-Z0-9]{1,12}", pw in "CANARY[a-zA-Z0-9]{1,20}", dur in "[0-9.hmsu]{0,8}") {
            let out = format!(r#"{{"kind":"CredentialProviderResponse","cacheDuration":"{dur}","auth":{{"r.example":{{"username":"{user}","password":"{pw}"}}}}}}"#);
            match parse_response(out.as_bytes()) {
                Ok((config, _, _)) => {
                    let shown = format!("{config:?}");
                    prop_assert!(!shown.contains(&pw));
                }
                Err(e) => prop_assert!(!e.to_string().contains(&pw)),
            }
        }

        #[test]
        fn go_durations_never_panic(s in "[0-9.a-zµ]{0,16}") {
            let _ = parse_go_duration(&s);
        }
    }

    #[test]
    fn a_refresher_outlives_its_callers_until_its_spec_changes() {
        let spec: ExecSource = serde_json::from_value(json!({"command": "x"})).unwrap();
        let refreshers = Refreshers::default();
        let first = refreshers.get("keep", &spec, "r.example", None);
        let ptr = Arc::as_ptr(&first);
        drop(first);
        let again = refreshers.get("keep", &spec, "r.example", None);
        assert_eq!(
            Arc::as_ptr(&again),
            ptr,
            "the cached credential is not thrown away"
        );
        let changed: ExecSource = serde_json::from_value(json!({"command": "y"})).unwrap();
        let other = refreshers.get("keep", &changed, "r.example", None);
        assert_ne!(Arc::as_ptr(&other), ptr, "a new spec gets a new refresher");
        let elsewhere = Refreshers::default().get("keep", &spec, "r.example", None);
        assert_ne!(
            Arc::as_ptr(&elsewhere),
            ptr,
            "another broker in the process has its own"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("12h0m0s").unwrap(),
            Duration::from_secs(43200)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "h", "1x", "1h-2m", "1e300h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_are_checked_and_never_echoed() {
        let ok = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"12h0m0s","auth":{"r.example":{"username":"AWS","password":"CANARY-pw"}}}"#;
        let (config, raw, lifetime) = parse_response(ok).unwrap();
        assert_eq!(lifetime, Some(Duration::from_secs(43200)));
        assert!(String::from_utf8(raw).unwrap().contains("CANARY-pw"));
        assert!(!format!("{config:?}").contains("CANARY-pw"));
        for bad in [
            &br#"not json CANARY-pw"#[..],
            br#"{"kind":"Other","auth":{"r":{"username":"u","password":"CANARY-pw"}}}"#,
            br#"{"kind":"CredentialProviderResponse","auth":{"r":{"username":"u"}}}"#,
            br#"{"kind":"CredentialProviderResponse","auth":{}}"#,
            br#"{"kind":"CredentialProviderResponse","cacheDuration":"soon","auth":{"r":{"username":"u","password":"CANARY-pw"}}}"#,
        ] {
            let e = parse_response(bad).unwrap_err();
            assert!(!e.to_string().contains("CANARY"), "{e}");
        }
    }
}
