//! The built-in certificate bootstrap, for clusters without cert-manager:
//! the leader keeps a self-signed CA (Secret `pullbroker-broker-ca`, which
//! only the controller reads) and the broker's serving certificate (Secret
//! `pullbroker-broker-tls`, `kubernetes.io/tls`, mounted by the broker, which
//! reloads it when it changes) in the system namespace, renews each when two
//! thirds of its lifetime have passed, and writes the CA bundle into the
//! MutatingWebhookConfiguration's `caBundle`.
//!
//! A CA rollover never breaks a handshake: the bundle (the webhook's
//! `caBundle` and the Secret's `ca.crt`) holds the new CA and the previous
//! one until the previous expires, and it is written before the serving
//! certificate the new CA signed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use pullbroker_credentials::pki::{self, CertInfo, KeyedCert};
use secrecy::ExposeSecret;

use crate::Error;

/// Renew a certificate once this fraction of its lifetime has passed.
pub const RENEW_AT: f64 = 2.0 / 3.0;

#[derive(Debug, Clone)]
pub struct ServingCertSettings {
    /// The broker's serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret: String,
    /// The CA that signs it (`ca.crt`, `ca.key`, `previous.crt`).
    pub ca_secret: String,
    /// DNS names / IP addresses the broker is reached at (its Service's names).
    pub hosts: Vec<String>,
    /// MutatingWebhookConfiguration whose `caBundle`s are kept current.
    pub webhook: Option<String>,
    pub validity: Duration,
    pub ca_validity: Duration,
}

impl ServingCertSettings {
    /// For the broker Service `service` in `namespace`.
    pub fn for_service(namespace: &str, service: &str) -> ServingCertSettings {
        ServingCertSettings {
            secret: "pullbroker-broker-tls".into(),
            ca_secret: "pullbroker-broker-ca".into(),
            hosts: vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            webhook: None,
            validity: Duration::from_secs(90 * 86_400),
            ca_validity: Duration::from_secs(3 * 365 * 86_400),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("the serving certificate needs at least one host name".into());
        }
        if self.validity < Duration::from_secs(3) || self.ca_validity < self.validity {
            return Err(format!(
                "serving certificate validity {:?} must be at least 3s and at most the CA's {:?}",
                self.validity, self.ca_validity
            ));
        }
        Ok(())
    }
}

/// What is due, from what the Secrets hold now.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub new_ca: bool,
    pub new_serving: bool,
}

/// Decides what to renew (pure: the caller reads and writes).
pub fn plan(now: i64, ca: Option<&CertInfo>, serving: Option<&CertInfo>, hosts: &[String]) -> Plan {
    let new_ca = !matches!(ca, Some(c) if c.is_ca && !c.past(RENEW_AT, now));
    let same_hosts = |s: &CertInfo| {
        let (mut a, mut b) = (s.hosts.clone(), hosts.to_vec());
        a.sort();
        b.sort();
        a == b
    };
    let new_serving = new_ca
        || !matches!((ca, serving), (Some(c), Some(s))
            if s.issuer == c.subject && same_hosts(s) && !s.past(RENEW_AT, now));
    Plan {
        new_ca,
        new_serving,
    }
}

/// When the next renewal is due (seconds from `now`), for the loop's sleep.
fn next_due(now: i64, certs: &[&CertInfo]) -> i64 {
    certs
        .iter()
        .map(|c| c.due(RENEW_AT) - now)
        .min()
        .unwrap_or(0)
}

fn field(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn secret(name: &str, namespace: &str, type_: &str, data: BTreeMap<&str, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "pullbroker".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Creates `new`, or replaces `old` with it (optimistic: a concurrent
/// writer makes this fail with 409 and the next pass starts over).
async fn write(api: &Api<Secret>, old: Option<Secret>, mut new: Secret) -> Result<(), Error> {
    match old {
        None => api
            .create(&PostParams::default(), &new)
            .await
            .map(drop)
            .map_err(|e| Error::Kube("create certificate secret", e)),
        Some(old) => {
            new.metadata.resource_version = old.metadata.resource_version;
            let name = new.metadata.name.clone().unwrap_or_default();
            api.replace(&name, &PostParams::default(), &new)
                .await
                .map(drop)
                .map_err(|e| Error::Kube("replace certificate secret", e))
        }
    }
}

/// One pass: renews what is due, writes the bundle where it belongs, and
/// returns how long until the next renewal is due.
pub async fn reconcile(
    client: &Client,
    namespace: &str,
    s: &ServingCertSettings,
) -> Result<Duration, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = pki::now();
    let err = Error::Certificate;

    // The CA.
    let ca_secret = secrets
        .get_opt(&s.ca_secret)
        .await
        .map_err(|e| Error::Kube("get CA secret", e))?;
    let held = ca_secret.as_ref().and_then(|sec| {
        let cert = field(sec, "ca.crt")?;
        let key = field(sec, "ca.key")?;
        let info = pki::inspect(&cert).ok()?;
        Some((
            KeyedCert {
                cert_pem: cert,
                key_pem: key.into(),
            },
            info,
        ))
    });
    let previous = ca_secret
        .as_ref()
        .and_then(|sec| field(sec, "previous.crt"))
        .filter(|p| pki::inspect(p).is_ok_and(|i| !i.expired(now)));
    let (ca, ca_info, previous) = if plan(now, held.as_ref().map(|h| &h.1), None, &s.hosts).new_ca {
        let ca = pki::new_ca(&format!("pullbroker CA {now}"), s.ca_validity).map_err(err)?;
        let info = pki::inspect(&ca.cert_pem).map_err(err)?;
        // The CA being replaced stays trusted until it expires.
        let previous = held
            .filter(|(_, i)| !i.expired(now))
            .map(|(c, _)| c.cert_pem);
        let mut data = BTreeMap::from([
            ("ca.crt", ca.cert_pem.clone()),
            ("ca.key", ca.key_pem.expose_secret().to_string()),
        ]);
        if let Some(p) = &previous {
            data.insert("previous.crt", p.clone());
        }
        write(
            &secrets,
            ca_secret,
            secret(&s.ca_secret, namespace, "Opaque", data),
        )
        .await?;
        tracing::info!(namespace, secret = %s.ca_secret, not_after = info.not_after, "issued a new CA");
        (ca, info, previous)
    } else {
        // The plan asks for no new CA only when the held one parsed and is valid.
        let (ca, info) = held.expect("plan keeps only a held CA");
        (ca, info, previous)
    };
    let bundle = format!("{}{}", ca.cert_pem, previous.unwrap_or_default());

    // The webhook trusts the bundle before any certificate of the new CA is served.
    if let Some(name) = &s.webhook {
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        match hooks
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube("get webhook configuration", e))?
        {
            Some(mut hook) => {
                let mut changed = false;
                for w in hook.webhooks.iter_mut().flatten() {
                    let want = Some(ByteString(bundle.clone().into_bytes()));
                    if w.client_config.ca_bundle != want {
                        w.client_config.ca_bundle = want;
                        changed = true;
                    }
                }
                if changed {
                    hooks
                        .replace(name, &PostParams::default(), &hook)
                        .await
                        .map_err(|e| Error::Kube("update webhook caBundle", e))?;
                    tracing::info!(webhook = %name, "wrote the CA bundle into the webhook");
                }
            }
            None => tracing::debug!(webhook = %name, "no such webhook configuration yet"),
        }
    }

    // The serving certificate.
    let tls_secret = secrets
        .get_opt(&s.secret)
        .await
        .map_err(|e| Error::Kube("get serving certificate secret", e))?;
    let serving = tls_secret
        .as_ref()
        .and_then(|sec| field(sec, "tls.crt"))
        .and_then(|c| pki::inspect(&c).ok());
    let bundled = tls_secret.as_ref().and_then(|sec| field(sec, "ca.crt"));
    let due = plan(now, Some(&ca_info), serving.as_ref(), &s.hosts).new_serving;
    let serving = if due || bundled.as_deref() != Some(bundle.as_str()) {
        let (cert, key, info) = match (due, &tls_secret) {
            (false, Some(sec)) => {
                // Only the bundle moved: keep the certificate and key.
                let (c, k) = (field(sec, "tls.crt"), field(sec, "tls.key"));
                // The plan finds a certificate not due only after parsing it.
                let info = serving.expect("not due means parsed");
                (c.unwrap_or_default(), k.unwrap_or_default(), info)
            }
            _ => {
                let leaf = pki::issue_serving(&ca, &s.hosts, s.validity).map_err(err)?;
                let info = pki::inspect(&leaf.cert_pem).map_err(err)?;
                (
                    leaf.cert_pem,
                    leaf.key_pem.expose_secret().to_string(),
                    info,
                )
            }
        };
        let data = BTreeMap::from([("tls.crt", cert), ("tls.key", key), ("ca.crt", bundle)]);
        write(
            &secrets,
            tls_secret,
            secret(&s.secret, namespace, "kubernetes.io/tls", data),
        )
        .await?;
        if due {
            tracing::info!(namespace, secret = %s.secret, not_after = info.not_after, "issued a new serving certificate");
        }
        info
    } else {
        // As above: not due means it was parsed.
        serving.expect("not due means parsed")
    };
    let wait = next_due(pki::now(), &[&ca_info, &serving]).max(1);
    Ok(Duration::from_secs(u64::try_from(wait).unwrap_or(1)))
}

/// Keeps the certificates current for as long as it runs (the leader
/// aborts it when it stops leading): renews when due, and checks at least
/// every minute, so a deleted Secret or a webhook re-applied without its
/// `caBundle` is mended within a minute.
pub async fn run(client: Client, namespace: String, settings: ServingCertSettings) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let wait = match reconcile(&client, &namespace, &settings).await {
            Ok(due) => {
                backoff = Duration::from_millis(250);
                due.min(Duration::from_secs(60))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot keep the serving certificate");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                b
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(nb: i64, na: i64, subject: &[u8], issuer: &[u8], hosts: &[&str]) -> CertInfo {
        CertInfo {
            not_before: nb - pullbroker_core::time::secs(pki::BACKDATE),
            not_after: na,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            is_ca: subject == issuer,
            subject: subject.to_vec(),
            issuer: issuer.to_vec(),
        }
    }

    #[test]
    fn renews_what_is_due_and_what_no_longer_matches() {
        let hosts = vec!["b.ns.svc".to_string(), "b.ns.svc.cluster.local".to_string()];
        let ca = info(0, 300, b"ca1", b"ca1", &[]);
        let leaf = info(
            0,
            90,
            b"leaf",
            b"ca1",
            &["b.ns.svc.cluster.local", "b.ns.svc"],
        );
        let fresh = |a, b| Plan {
            new_ca: a,
            new_serving: b,
        };
        assert_eq!(
            plan(10, Some(&ca), Some(&leaf), &hosts),
            fresh(false, false)
        );
        assert_eq!(
            plan(60, Some(&ca), Some(&leaf), &hosts),
            fresh(false, true),
            "2/3 of 90 s"
        );
        assert_eq!(
            plan(200, Some(&ca), Some(&leaf), &hosts),
            fresh(true, true),
            "2/3 of 300 s"
        );
        assert_eq!(plan(10, None, Some(&leaf), &hosts), fresh(true, true));
        assert_eq!(plan(10, Some(&ca), None, &hosts), fresh(false, true));
        let other_ca = info(
            0,
            90,
            b"leaf",
            b"ca0",
            &["b.ns.svc", "b.ns.svc.cluster.local"],
        );
        assert_eq!(
            plan(10, Some(&ca), Some(&other_ca), &hosts),
            fresh(false, true)
        );
        let other_host = info(0, 90, b"leaf", b"ca1", &["b.ns.svc"]);
        assert_eq!(
            plan(10, Some(&ca), Some(&other_host), &hosts),
            fresh(false, true)
        );
        let not_ca = info(0, 300, b"ca1", b"x", &[]);
        assert_eq!(
            plan(10, Some(&not_ca), Some(&leaf), &hosts),
            fresh(true, true)
        );
        assert_eq!(next_due(10, &[&ca, &leaf]), 50);
    }
}
