//! `pullbroker resolve`: image references in, `IMAGE@sha256:…` out.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pullbroker_core::Reference;
use pullbroker_registry::{
    ClientSettings, Platform, RegistryClient, RegistryError, Resolved, Resolver, ResolverOptions,
};
use serde::Serialize;

use crate::keychain::{self, CredentialArgs};

use super::output;

#[derive(clap::Args, Debug)]
#[command(after_long_help = "Examples:\n  \
    pullbroker resolve nginx:1.27 ghcr.io/org/app:v2\n  \
    pullbroker resolve -f images.txt -o json\n  \
    kubectl get pods -A -o jsonpath='{..image}' | tr ' ' '\\n' | pullbroker resolve -\n  \
    pullbroker resolve --secret pull-secret.yaml --platform linux/arm64 registry.corp.example/app:v1\n\n\
Loopback registries (localhost, 127.0.0.0/8, ::1) are tried over HTTPS, then plain HTTP, as Docker does.")]
pub struct Args {
    /// Image references; `-` reads them from stdin, one per line.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// Read references from a file, one per line (`#` starts a comment).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: output::Report,
    /// Resolve multi-platform tags to this platform's manifest (os/arch[/variant]).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<Platform>,
    #[command(flatten)]
    credentials: CredentialArgs,
    /// Resolutions in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Limit for each HTTP request (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Extra attempts on HTTP 429/5xx.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Reach this registry (host[:port]) over plain HTTP only.
    #[arg(long, value_name = "REGISTRY")]
    plain_http: Vec<String>,
    /// Do not verify this registry's TLS certificate (falls back to HTTP too).
    #[arg(long, value_name = "REGISTRY")]
    insecure: Vec<String>,
    /// Trust the CA certificates in this PEM file as well as the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Vec<PathBuf>,
    /// Show a progress bar (default: when stderr is a terminal and there are many images).
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    #[arg(long, hide = true)]
    no_progress: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonResult<'a> {
    input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<JsonError>,
}

#[derive(Serialize)]
struct JsonError {
    class: &'static str,
    message: String,
}

/// The input with its digest replaced: `nginx:1.27` → `nginx:1.27@sha256:…`.
/// Keeping the user's spelling makes the output easy to diff against the input.
fn pinned(input: &str, resolved: &Resolved) -> String {
    let base = input.split('@').next().unwrap_or(input);
    format!("{base}@{}", resolved.digest)
}

/// References in `text`, one per line; blank lines and `#` comments skipped.
fn lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

fn collect_inputs(args: &Args) -> Result<Vec<String>> {
    let stdin = std::path::Path::new("-");
    let mut inputs = Vec::new();
    for f in &args.files {
        inputs.extend(lines(&keychain::read_input(f)?));
    }
    for image in &args.images {
        if image == "-" {
            inputs.extend(lines(&keychain::read_input(stdin)?));
        } else {
            inputs.push(image.clone());
        }
    }
    if args.images.is_empty() && args.files.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!("no images given: pass IMAGE arguments, -f FILE, or pipe references on stdin");
        }
        inputs.extend(lines(&keychain::read_input(stdin)?));
    }
    if inputs.is_empty() {
        bail!("no image references in the input");
    }
    Ok(inputs)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let inputs = collect_inputs(&args)?;
    let configs = keychain::build(&args.credentials)?;
    let mut ca_pems = Vec::new();
    for path in &args.ca_file {
        ca_pems.push(
            std::fs::read(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?,
        );
    }
    let settings = ClientSettings {
        timeout: args.timeout,
        connect_timeout: args.timeout.min(Duration::from_secs(5)),
        retries: args.retries,
        plain_http: args.plain_http.clone(),
        insecure: args.insecure.clone(),
        ca_pems,
        max_idle_per_host: args.concurrency as usize,
        ..ClientSettings::from_env()
    };
    let client = RegistryClient::new(settings).map_err(anyhow::Error::msg)?;

    // Parse everything first: a malformed reference is reported, not fatal.
    let parsed: Vec<Result<Reference, String>> = inputs
        .iter()
        .map(|i| Reference::parse(i).map_err(|e| e.to_string()))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Credential helpers run once per registry, before any resolution; an
    // image whose helper failed is reported with that failure.
    let all_valid: Vec<Reference> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let (keychain, helper_failures) =
        runtime.block_on(configs.keychain(&all_valid, keychain::HELPER_TIMEOUT));
    let valid: Vec<Reference> = all_valid
        .iter()
        .enumerate()
        .filter(|(i, _)| !helper_failures.contains_key(i))
        .map(|(_, r)| r.clone())
        .collect();
    let resolver = Resolver::new(
        client,
        keychain,
        ResolverOptions {
            concurrency: args.concurrency as usize,
            platform: args.platform.clone(),
            ..Default::default()
        },
    );

    let show_progress = !args.no_progress
        && (args.progress || (std::io::stderr().is_terminal() && valid.len() >= 20));
    let bar = show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(valid.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} resolving {pos}/{len} [{bar:30}] {per_sec} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut failures = 0usize;
    let outcomes = runtime.block_on(resolver.resolve_all(&valid, |_, outcome| {
        if let Some(bar) = &bar {
            if outcome.is_err() {
                failures += 1;
                bar.set_message(format!("{failures} failed"));
            }
            bar.inc(1);
        }
    }));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut outcomes = outcomes.into_iter();
    let mut valid_index = 0usize;
    let results: Vec<(&str, Outcome)> = inputs
        .iter()
        .zip(&parsed)
        .map(|(input, p)| {
            let r = match p {
                Err(e) => Err(ResolveFailure::Parse(e.clone())),
                Ok(reference) => {
                    valid_index += 1;
                    match helper_failures.get(&(valid_index - 1)) {
                        Some(e) => Err(ResolveFailure::Helper(e.clone())),
                        None => {
                            // resolve_all answers each valid reference once, in order.
                            match outcomes.next().expect("one outcome per resolved reference") {
                                Ok(resolved) => Ok((reference.clone(), resolved)),
                                Err(e) => Err(ResolveFailure::Registry(e)),
                            }
                        }
                    }
                }
            };
            (input.as_str(), r)
        })
        .collect();
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        output::Report::Text => {
            for (input, r) in &results {
                match r {
                    Ok((_, resolved)) => writeln!(out, "{}", pinned(input, resolved))?,
                    Err(e) => eprintln!("error: {input}: {}", e.message()),
                }
            }
        }
        output::Report::Json => {
            let json: Vec<JsonResult> = results
                .iter()
                .map(|(input, r)| match r {
                    Ok((reference, resolved)) => JsonResult {
                        input,
                        reference: Some(reference.to_string()),
                        digest: Some(resolved.digest.to_string()),
                        pinned: Some(pinned(input, resolved)),
                        media_type: resolved.media_type.clone(),
                        error: None,
                    },
                    Err(e) => JsonResult {
                        input,
                        reference: None,
                        digest: None,
                        pinned: None,
                        media_type: None,
                        error: Some(JsonError {
                            class: e.class(),
                            message: e.message(),
                        }),
                    },
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &json)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} of {} image(s) failed", results.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What happened to one input.
type Outcome = Result<(Reference, Resolved), ResolveFailure>;

enum ResolveFailure {
    Parse(String),
    /// The image's credential helper failed (named in the message).
    Helper(String),
    Registry(RegistryError),
}

impl ResolveFailure {
    fn class(&self) -> &'static str {
        match self {
            ResolveFailure::Parse(_) => "invalid_reference",
            ResolveFailure::Helper(_) => "credential_helper",
            ResolveFailure::Registry(e) => e.class(),
        }
    }
    fn message(&self) -> String {
        match self {
            ResolveFailure::Parse(e) | ResolveFailure::Helper(e) => e.clone(),
            ResolveFailure::Registry(e) => e.to_string(),
        }
    }
}
