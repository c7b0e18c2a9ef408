//! `pullbroker-credential-provider`: exec'd by kubelet per image pull.
//! Reads a CredentialProviderRequest on stdin, exchanges the pod's
//! service-account token at pullbroker, writes a CredentialProviderResponse.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pullbroker_credential_provider::{
    build_response, parse_request, scrub, ExchangeAnswer, PluginError, MAX_REQUEST,
};

#[derive(Parser, Debug)]
#[command(
    name = "pullbroker-credential-provider",
    version,
    about = "Kubelet credential provider: exchanges the pod's service-account token for short-lived pull credentials at pullbroker",
    after_help = "Configured through kubelet's CredentialProviderConfig (args/env). See docs/kubelet-plugin.md."
)]
struct Args {
    /// Base URL of the broker, e.g. https://pullbroker.pullbroker-system.svc:8480
    #[arg(long, env = "PULLBROKER_URL")]
    broker_url: String,
    /// PEM bundle of the CAs that signed the broker's certificate; when given,
    /// only these are trusted (not the system roots).
    #[arg(long, env = "PULLBROKER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Give up on the broker after this many seconds (kubelet waits for us).
    #[arg(long, env = "PULLBROKER_TIMEOUT_SECONDS", default_value_t = 5)]
    timeout_seconds: u64,
    /// The audience kubelet mints tokens for (tokenAttributes.serviceAccountTokenAudience);
    /// a token for another audience is refused here, with a hint, before calling the broker.
    #[arg(long, env = "PULLBROKER_AUDIENCE", default_value = "pullbroker")]
    audience: String,
    /// Answer requests without a service-account token with no credentials
    /// (kubelet then tries other providers) instead of failing. Node-wide
    /// credentials are what pullbroker replaces, so this is off by default.
    #[arg(long, env = "PULLBROKER_ALLOW_MISSING_TOKEN")]
    allow_missing_token: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut input = Vec::new();
    let mut stdin = std::io::stdin().take(MAX_REQUEST as u64 + 1);
    let result = stdin
        .read_to_end(&mut input)
        .map_err(|e| PluginError(format!("cannot read stdin: {e}")))
        .and_then(|_| run(&args, &input));
    match result {
        Ok(json) => {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(json.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pullbroker-credential-provider: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args, input: &[u8]) -> Result<String, PluginError> {
    pullbroker_credential_provider::check_broker_url(&args.broker_url).map_err(PluginError)?;
    let req = parse_request(input)?;
    let Some(token) = req
        .service_account_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        if args.allow_missing_token {
            let empty = serde_json::json!({
                "kind": "CredentialProviderResponse", "apiVersion": req.api_version,
                "cacheKeyType": "Image", "cacheDuration": "0s", "auth": {},
            });
            return Ok(empty.to_string());
        }
        return Err(PluginError(
            "the request carries no service-account token: set tokenAttributes.serviceAccountTokenAudience in the CredentialProviderConfig (kubelet 1.33+ with KubeletServiceAccountTokenForCredentialProviders)".into(),
        ));
    };
    check_audience(token, &args.audience)?;
    let answer = exchange(args, token, &req).map_err(|e| PluginError(scrub(&e.0, Some(token))))?;
    let response = build_response(&req, answer)?;
    serde_json::to_string(&response)
        .map_err(|e| PluginError(format!("cannot encode response: {e}")))
}

/// Reads (does not verify) the token's `aud` to catch a misconfigured
/// audience with a useful message; the broker does the real verification.
fn check_audience(token: &str, audience: &str) -> Result<(), PluginError> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Option<serde_json::Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(claims) = claims else {
        return Err(PluginError("the service-account token is not a JWT".into()));
    };
    let ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == audience,
        serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(PluginError(format!(
            "the service-account token is not for audience {audience:?}: tokenAttributes.serviceAccountTokenAudience must match the broker's audience"
        )))
    }
}

fn agent(args: &Args) -> Result<ureq::Agent, PluginError> {
    // ureq calls the provider setting "unversioned": ureq is pinned by the lock file.
    let mut tls = ureq::tls::TlsConfig::builder().unversioned_rustls_crypto_provider(
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    );
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| PluginError(format!("cannot read CA file {}: {e}", path.display())))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(PluginError(format!(
                "CA file {} holds no certificates",
                path.display()
            )));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(args.timeout_seconds)))
        .http_status_as_error(false)
        .tls_config(tls.build())
        .user_agent(concat!(
            "pullbroker-credential-provider/",
            env!("CARGO_PKG_VERSION")
        ))
        .build();
    Ok(config.into())
}

fn exchange(
    args: &Args,
    token: &str,
    req: &pullbroker_credential_provider::CredentialProviderRequest,
) -> Result<ExchangeAnswer, PluginError> {
    let url = format!("{}/v1/exchange", args.broker_url.trim_end_matches('/'));
    let body = serde_json::json!({
        "token": token,
        "image": req.image,
        "serviceAccountAnnotations": req.service_account_annotations,
    });
    let mut resp = agent(args)?
        .post(&url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => PluginError(format!(
                "pullbroker at {} did not answer within {}s",
                args.broker_url, args.timeout_seconds
            )),
            other => PluginError(format!(
                "cannot reach pullbroker at {}: {other}",
                args.broker_url
            )),
        })?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| PluginError(format!("cannot read pullbroker's answer: {e}")))?;
    if status == 200 {
        return serde_json::from_str(&text).map_err(|_| {
            PluginError("pullbroker's answer is not a valid exchange response".into())
        });
    }
    let detail: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let class = detail["error"]["class"].as_str().unwrap_or("unknown");
    let message = detail["error"]["message"]
        .as_str()
        .unwrap_or("no reason given");
    Err(PluginError(match status {
        401 => format!("pullbroker refused the service-account token ({class}): {message}"),
        403 => format!("denied by pullbroker: {message}"),
        s => format!("pullbroker answered HTTP {s} ({class}): {message}"),
    }))
}
