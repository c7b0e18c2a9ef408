//! `pullbroker serve`: the broker, standalone from one YAML file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use pullbroker_broker::{config, Broker};
use pullbroker_registry::ClientSettings;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "The config file holds a BrokerConfig and the RegistryCredential, PullGrant, Secret and \
Namespace documents (see examples/standalone/broker.yaml). It is reloaded when it (or a file it names) changes; \
an invalid edit is rejected with the reason in the log and /healthz, and the last good configuration keeps serving.\n\n\
Example:\n  pullbroker serve --config examples/standalone/broker.yaml"
)]
pub struct Args {
    /// The standalone configuration file.
    #[arg(long, env = "PULLBROKER_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Listen address (overrides BrokerConfig.spec.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// How often to check the config files for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<ExitCode> {
    use futures::FutureExt as _;
    let snapshot = config::load(&args.config).map_err(anyhow::Error::msg)?;
    let listeners = snapshot.listeners.clone();
    let listen = args.listen.unwrap_or(listeners.listen);
    if listeners.tls.is_none() && !listen.ip().is_loopback() {
        anyhow::bail!("--listen {listen}: plain HTTP is only served on loopback; configure BrokerConfig.spec.tls");
    }
    // Loaded before anything listens: a broken certificate is a start-up error.
    let cert = listeners
        .tls
        .as_ref()
        .map(pullbroker_broker::tls::ReloadingCert::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // policySource: kubernetes — credentials and grants from the API.
    let cluster = match snapshot.policy_source {
        config::PolicySource::Kubernetes => Some((
            snapshot.system_namespace.clone(),
            pullbroker_cluster::api::client()
                .await
                .context("policySource is kubernetes")?,
        )),
        config::PolicySource::File => None,
    };
    // With the cluster connection at hand, tokens are reviewed online by
    // default: offline verification alone accepts a deleted pod's token.
    let reviewer: Option<std::sync::Arc<dyn pullbroker_broker::tokenreview::TokenReviewer>> =
        match &cluster {
            Some((_, client))
                if snapshot.token_review.is_none() && !snapshot.offline_verification =>
            {
                Some(std::sync::Arc::new(
                    crate::cluster_review::ClusterTokenReview(client.clone()),
                ))
            }
            _ => None,
        };
    if reviewer.is_none() && snapshot.token_review.is_none() {
        tracing::warn!("tokens are verified offline only: a deleted service account's or pod's token is accepted until it expires (serviceAccountIssuer.tokenReview)");
    }
    // Registry traffic follows HTTPS_PROXY/NO_PROXY as Kubernetes components
    // do; the API server, the issuer and TokenReview are never proxied.
    let registry = ClientSettings::from_env();
    if let Some(p) = &registry.proxy {
        tracing::info!(no_proxy = %p.no_proxy, "registry requests go through the environment's proxy (HTTPS_PROXY/HTTP_PROXY)");
    }
    let broker = Broker::new(snapshot, Some(args.config.clone()), registry, reviewer)
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let plain = match listeners.plain_http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (plainHttpListen)"))?,
        ),
        None => None,
    };
    let admission = match &listeners.admission {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admission.listen)", a.listen))?,
        ),
        None => None,
    };
    let watcher = broker.spawn_watcher(args.reload_interval);
    let cert_watcher = cert.as_ref().map(|c| c.spawn_watcher(args.reload_interval));
    let _cluster = cluster.map(|(system_namespace, client)| {
        tokio::spawn(pullbroker_cluster::policy_source::run(
            client,
            std::sync::Arc::new(broker.clone()),
            system_namespace,
        ))
    });
    let shutdown = shutdown_signal().shared();
    let scheme = if cert.is_some() { "https" } else { "http" };
    tracing::info!(address = %listener.local_addr()?, scheme, config = %args.config.display(), "pullbroker serving");
    if cert.is_none() {
        tracing::warn!("serving plain HTTP on loopback (insecurePlainHttp): for development only");
    }
    let main = {
        let (broker, shutdown, cert) = (broker.clone(), shutdown.clone(), cert.clone());
        async move {
            match cert {
                Some(cert) => broker.serve_tls(listener, cert, shutdown).await,
                None => broker.serve(listener, shutdown).await,
            }
        }
    };
    let admission = {
        let (broker, shutdown, cert) = (broker.clone(), shutdown.clone(), cert.clone());
        async move {
            let Some(l) = admission else {
                tracing::warn!("admission is served on the main listener, beside exchange: set admission.listen to give it its own port and limit (docs/admission.md)");
                return Ok::<_, anyhow::Error>(());
            };
            let client_certs = listeners
                .admission
                .as_ref()
                .is_some_and(|a| a.client_ca_file.is_some());
            tracing::info!(address = %l.local_addr()?, scheme, client_certs, "admission listener");
            match cert {
                Some(cert) => broker.serve_admission_tls(l, cert, shutdown).await?,
                None => broker.serve_admission(l, shutdown).await?,
            }
            Ok(())
        }
    };
    let extra = async move {
        match plain {
            Some(l) => {
                tracing::info!(address = %l.local_addr()?, scheme = "http", "plain HTTP listener (plainHttpListen)");
                broker.serve(l, shutdown).await
            }
            None => Ok(()),
        }
    };
    let servers = async { tokio::try_join!(main, extra).context("server failed") };
    tokio::try_join!(servers, admission)?;
    watcher.abort();
    if let Some(w) = cert_watcher {
        w.abort();
    }
    tracing::info!("pullbroker stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM: stop accepting, finish in-flight requests, exit.
/// The handlers are installed by this call, not when the future is first
/// polled: a signal arriving right after the "serving" line is caught, not
/// left to the default action (exit without a drain).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Ok(mut one), Err(e)) | (Err(e), Ok(mut one)) => {
                tracing::warn!(error = %e, "cannot listen for one of SIGINT and SIGTERM");
                one.recv().await;
            }
            (Err(e), Err(_)) => {
                // No signal can reach us: serve until killed.
                tracing::warn!(error = %e, "cannot listen for SIGINT or SIGTERM");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down");
    }
}
