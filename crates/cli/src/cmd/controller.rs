//! `pullbroker controller`: the Kubernetes controller (sync mode, statuses,
//! the admission-race watcher), with leader election.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pullbroker_controller::serving_cert::ServingCertSettings;
use pullbroker_controller::{Metrics, Settings};

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Sync mode for clusters without KEP-4412 kubelet plugins: for every PullGrant with \
purpose `sync`, each selected namespace gets one managed kubernetes.io/dockerconfigjson Secret \
(`pullbroker-<grant>`) holding a short-lived credential minted for that namespace, referenced from the \
granted service accounts' imagePullSecrets and rotated before it expires. Upstream secrets (a static password, an exec source's token) are \
copied only for grants that set allowUpstreamCopy: true.\n\n\
Connects like kubectl: in-cluster service account, else KUBECONFIG / ~/.kube/config. Several replicas may \
run; a Lease in the system namespace elects the one that writes.\n\n\
With --serving-certificate the leader also keeps the broker's TLS certificate and, with \
--webhook-configuration, the admission webhook's caBundle (deploy/overlays/sync and admission do this).\n\n\
Example:\n  pullbroker controller --system-namespace pullbroker-system --identity \"$POD_NAME\" \\\n      \
--serving-certificate --webhook-configuration pullbroker-pin"
)]
pub struct Args {
    /// Namespace of the central secrets and the leader Lease.
    #[arg(
        long,
        env = "PULLBROKER_SYSTEM_NAMESPACE",
        default_value = "pullbroker-system"
    )]
    system_namespace: String,
    /// Reissue a synced credential after this fraction of its lifetime (0.1–0.9).
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    rotate_after: f64,
    /// This replica's name in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Leader Lease duration: a standby takes over this long after the leader stops renewing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Namespaces reconciled at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
    /// Delete pods stuck in ImagePullBackOff for want of the synced secret when a controller owns them,
    /// so they are recreated with it (without this flag they only get a Warning Event). Needs `delete` on
    /// pods: deploy/components/recreate-stuck-pods grants it and passes this flag.
    #[arg(long)]
    recreate_stuck_pods: bool,
    /// Directory of exec-source executables (RegistryCredential `source.exec.command` names a file here;
    /// kubelet credential-provider plugins work). Without it exec sources are refused.
    #[arg(long, env = "PULLBROKER_EXEC_SOURCE_DIR", value_name = "DIR")]
    exec_source_dir: Option<std::path::PathBuf>,
    /// Where `/healthz` (alive), `/readyz` (leading with caches synced, or a
    /// standby that reaches the API server) and `/metrics` (Prometheus) are
    /// served, plain HTTP: they carry no token or credential. `off` disables.
    #[arg(long, default_value = "0.0.0.0:8081", value_name = "ADDR|off")]
    health_address: String,
    /// Keep the broker's TLS in the system namespace, for clusters without cert-manager: a self-signed CA
    /// (Secret pullbroker-broker-ca, read by the controller only) and the serving certificate it signs
    /// (Secret pullbroker-broker-tls: tls.crt, tls.key, ca.crt), each renewed at two thirds of its lifetime.
    #[arg(long)]
    serving_certificate: bool,
    /// The broker's Service; the certificate is for NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local.
    #[arg(
        long,
        default_value = "pullbroker",
        value_name = "NAME",
        requires = "serving_certificate"
    )]
    broker_service: String,
    /// MutatingWebhookConfiguration whose caBundle is kept equal to the CA bundle (admission pinning).
    #[arg(long, value_name = "NAME", requires = "serving_certificate")]
    webhook_configuration: Option<String>,
    /// Lifetime of each serving certificate.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration, requires = "serving_certificate")]
    serving_certificate_validity: Duration,
    /// Lifetime of each CA; the previous CA stays in the bundle until it expires.
    #[arg(long, default_value = "1095d", value_parser = humantime::parse_duration, requires = "serving_certificate")]
    ca_validity: Duration,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if pullbroker_controller::ROTATE_AFTER.contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0.1 and 0.9")),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = pullbroker_cluster::api::client().await?;
        let identity = match args.identity {
            Some(i) => i,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "pullbroker".into()),
        };
        let settings = Settings {
            rotate_after: args.rotate_after,
            identity,
            lease_duration: args.lease_duration,
            concurrency: args.concurrency,
            recreate_stuck_pods: args.recreate_stuck_pods,
            exec_source_dir: args.exec_source_dir,
            serving_cert: args.serving_certificate.then(|| ServingCertSettings {
                webhook: args.webhook_configuration,
                validity: args.serving_certificate_validity,
                ca_validity: args.ca_validity,
                ..ServingCertSettings::for_service(&args.system_namespace, &args.broker_service)
            }),
            system_namespace: args.system_namespace,
            ..Settings::default()
        };
        tracing::info!(identity = %settings.identity, namespace = %settings.system_namespace, "pullbroker controller starting");
        let metrics = Arc::new(Metrics::default());
        // Before anything is announced: a signal from then on drains.
        let shutdown = super::serve::shutdown_signal();
        let _health = match args.health_address.as_str() {
            "off" => None,
            addr => {
                let addr: std::net::SocketAddr = addr
                    .parse()
                    .with_context(|| format!("--health-address {addr:?} is not HOST:PORT or off"))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--health-address)"))?;
                tracing::info!(address = %listener.local_addr()?, "health and metrics");
                Some(AbortOnDrop(tokio::spawn(serve_health(listener, metrics.clone()))))
            }
        };
        pullbroker_controller::run(
            client,
            settings,
            metrics,
            shutdown,
        )
        .await?;
        tracing::info!("pullbroker controller stopped");
        Ok(ExitCode::SUCCESS)
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `/healthz`, `/readyz`, `/metrics` from the controller's counters.
async fn serve_health(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let (ready, text) = (metrics.clone(), metrics);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready.readiness() {
                    Ok(state) => (StatusCode::OK, state),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    text.render(),
                )
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "health endpoint stopped");
    }
}
