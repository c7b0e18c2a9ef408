//! `pullbroker secret create|inspect|validate`: pull secrets for GitOps,
//! shown without ever printing the secret itself.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pullbroker_core::jwt::unverified_expiry;
use pullbroker_core::secret::{
    render_pull_secret, ManifestFormat, PullSecret, TYPE_DOCKERCONFIGJSON,
};
use pullbroker_core::time::UnixTime;
use pullbroker_core::{Credential, DockerConfig};
use serde::Serialize;

use crate::keychain::read_input;

use super::output;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print a kubernetes.io/dockerconfigjson Secret manifest for one registry.
    #[command(after_long_help = "Example:\n  \
        printf '%s' \"$TOKEN\" | pullbroker secret create --registry registry.corp.example \\\n      \
        --username ci-bot --password-stdin --name corp-pull --namespace pullbroker-system > corp-pull.yaml\n\n\
The password is read from stdin only, so it never shows in shell history or `ps`.")]
    Create(CreateArgs),
    /// List a pull secret's registries, users and credential kinds (never the secrets).
    Inspect(InspectArgs),
    /// Check a pull secret; exits 1 with precise errors when it is invalid.
    Validate(ValidateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Registry host[:port] (or a docker config key such as https://index.docker.io/v1/).
    #[arg(long)]
    registry: String,
    #[arg(long)]
    username: String,
    /// Read the password (or token) from stdin. Required: there is no --password flag.
    #[arg(long, required = true)]
    password_stdin: bool,
    /// Secret name.
    #[arg(long)]
    name: String,
    /// Namespace (the broker's system namespace for central credentials).
    #[arg(long, default_value = "pullbroker-system")]
    namespace: String,
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: output::Manifest,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Secret manifest (YAML/JSON) or docker config JSON; `-` for stdin.
    file: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: output::Report,
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Secret manifests (YAML/JSON) or docker config JSON files; `-` for stdin.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Create(a) => create(a),
        Command::Inspect(a) => inspect(a),
        Command::Validate(a) => validate(a),
    }
}

fn create(args: CreateArgs) -> Result<ExitCode> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the password from stdin (end with Ctrl-D)…");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from stdin")?;
    // `echo secret |` adds a newline; a password never ends in one.
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("the password read from stdin is empty");
    }
    if args.username.is_empty() || args.username.contains(':') {
        bail!("--username must be non-empty and may not contain ':'");
    }
    let format = match args.output {
        output::Manifest::Yaml => ManifestFormat::Yaml,
        output::Manifest::Json => ManifestFormat::Json,
    };
    let manifest = render_pull_secret(
        &args.name,
        &args.namespace,
        &args.registry,
        Credential::basic(&args.username, password),
        format,
    )
    .map_err(anyhow::Error::msg)?;
    print!("{manifest}");
    Ok(ExitCode::SUCCESS)
}

/// What a file held: a Secret manifest, or a bare docker config.
struct Loaded {
    kind: String,
    name: Option<String>,
    config: DockerConfig,
}

fn load(path: &Path) -> Result<Loaded> {
    let text = read_input(path)?;
    let looks_like_docker_config = text.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v.get("auths").is_some() && v.get("kind").is_none());
    if looks_like_docker_config {
        let config = DockerConfig::parse(text.as_bytes())?;
        return Ok(Loaded {
            kind: "docker config".into(),
            name: None,
            config,
        });
    }
    let secret = PullSecret::parse(&text)?;
    Ok(Loaded {
        kind: format!("Secret ({})", secret.secret_type),
        name: match (&secret.namespace, &secret.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        },
        config: secret.config,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryView {
    registry: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    /// Expiry of a JWT password/token (read, not verified), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expired: Option<bool>,
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let loaded = load(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let now = UnixTime::from_system(std::time::SystemTime::now()).0;
    let entries: Vec<EntryView> = loaded
        .config
        .entries()
        .iter()
        .map(|e| {
            let c = e.credential();
            let exp = c.secret().and_then(unverified_expiry);
            EntryView {
                registry: e.key().to_string(),
                kind: c.kind(),
                username: c.username().map(str::to_string),
                expires: exp.map(|t| UnixTime(t).rfc3339()),
                expired: exp.map(|t| t <= now),
            }
        })
        .collect();
    match args.output {
        output::Report::Json => output::print_json(&entries)?,
        output::Report::Text => {
            println!(
                "{}{}",
                loaded.kind,
                loaded.name.map(|n| format!(" {n}")).unwrap_or_default()
            );
            let rows: Vec<[String; 4]> = entries
                .iter()
                .map(|e| {
                    let expires = match (&e.expires, e.expired) {
                        (Some(t), Some(true)) => format!("{t} (expired)"),
                        (Some(t), _) => t.clone(),
                        _ => "-".into(),
                    };
                    [
                        e.registry.clone(),
                        e.kind.to_string(),
                        e.username.clone().unwrap_or("-".into()),
                        expires,
                    ]
                })
                .collect();
            print_table(["REGISTRY", "KIND", "USERNAME", "EXPIRES"], &rows);
            for key in loaded.config.helper_entries() {
                println!("note: {key} is left to a credential helper (not stored in this file)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(header: [&str; 4], rows: &[[String; 4]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 3 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for row in rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
}

fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let mut bad = 0;
    for path in &args.files {
        match load(path) {
            Ok(l) if l.config.entries().is_empty() => {
                bad += 1;
                println!("{}: invalid: no registry credentials in it", path.display());
            }
            Ok(l) => {
                let n = l.config.entries().len();
                let note = if l.kind.contains(TYPE_DOCKERCONFIGJSON) || l.kind == "docker config" {
                    ""
                } else {
                    " (legacy type)"
                };
                println!(
                    "{}: valid {}{note}, {n} registr{}",
                    path.display(),
                    l.kind,
                    if n == 1 { "y" } else { "ies" }
                );
            }
            Err(e) => {
                bad += 1;
                println!("{}: invalid: {e:#}", path.display());
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
