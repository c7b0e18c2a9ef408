pub mod adopt;
pub mod audit;
pub mod can_i;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod dev_token;
pub mod diagnose;
pub mod keygen;
pub mod kubelet_config;
pub mod output;
pub mod resolve;
pub mod secret;
pub mod serve;
pub mod tls_cert;
pub mod webhook_config;

/// A client as kubectl would make one: KUBECONFIG (or ~/.kube/config) with
/// `context`, else the in-cluster service account.
pub async fn kube_client(context: Option<String>) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(_) if options.context.is_none() => kube::Config::infer()
            .await
            .context("cannot find a kubeconfig or an in-cluster config")?,
        Err(e) => return Err(e).context("cannot load the kubeconfig"),
    };
    Ok(kube::Client::try_from(pullbroker_cluster::api::bounded(
        config,
    ))?)
}
