//! What an `ecr` credential costs per exchange: `/v1/exchange` throughput
//! for an image of an ECR credential (token from moto's ECR through IRSA,
//! refreshed from its expiry) against the same for a static credential,
//! from one release broker (`pullbroker serve`) in one run, alternating
//! rounds so that drift hits both alike. The target: within 10 %.
//!
//! Run with `scripts/bench-ecr.sh [--duration 10] [--rounds 3]`.

use anyhow::{bail, ensure, Context, Result};
use pullbroker_bench::{median, start_broker, write_exchange_lua, wrk, Opts};
use pullbroker_testenv::aws::AwsRelay;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};

const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const STATIC: &str = "registry.corp.example";
const TOKENS: usize = 2000;

fn main() -> Result<()> {
    let mut o = Opts {
        duration: 10,
        rate: 0.0,
        connections: 64,
    };
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--duration" => o.duration = val()?.parse()?,
            "--connections" => o.connections = val()?.parse()?,
            "--rounds" => rounds = val()?.parse()?,
            "-h" | "--help" => {
                println!("ecr-bench [--duration 10] [--connections 64] [--rounds 3]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    pullbroker_testenv::process::require_tools(&["wrk"]).map_err(anyhow::Error::msg)?;
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("pullbroker");
    ensure!(
        bin.is_file(),
        "build pullbroker first: cargo build --release -p pullbroker"
    );
    let dir = tempfile::tempdir()?;
    let relay = AwsRelay::start().map_err(anyhow::Error::msg)?;
    let token_file = AwsRelay::web_identity_token_file(dir.path());
    // The broker child inherits the IRSA identity, pointed at moto.
    let none = dir.path().join("none");
    for (k, v) in [
        ("AWS_ENDPOINT_URL", relay.url()),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/pullbroker".into(),
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", none.display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.display().to_string()),
    ] {
        std::env::set_var(k, v);
    }

    let issuer = TestIssuer::rsa(KUBE_ISSUER);
    std::fs::write(dir.path().join("jwks.json"), issuer.jwks())?;
    std::fs::write(
        dir.path().join("static.json"),
        format!(r#"{{"auths":{{"{STATIC}":{{"username":"bot","password":"static-pw"}}}}}}"#),
    )?;
    let port = pullbroker_testenv::registry::free_port().map_err(anyhow::Error::msg)?;
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            r#"apiVersion: pullbroker.dev/v1alpha1
kind: BrokerConfig
metadata: {{name: bench}}
spec:
  listen: {addr}
  insecurePlainHttp: true
  serviceAccountIssuer: {{issuer: "{KUBE_ISSUER}", jwksFile: jwks.json}}
  secretFiles:
    static: {{.dockerconfigjson: static.json}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: static}}
spec: {{registries: ["{STATIC}"], source: {{secretRef: {{name: static}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: RegistryCredential
metadata: {{name: ecr}}
spec: {{registries: ["{ECR}"], source: {{ecr: {{}}}}}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: static}}
spec: {{credential: static, subjects: {{namespaces: [team-a], serviceAccounts: ["*"]}}, repositories: ["**"], purposes: [pull]}}
---
apiVersion: pullbroker.dev/v1alpha1
kind: PullGrant
metadata: {{name: ecr}}
spec: {{credential: ecr, subjects: {{namespaces: [team-a], serviceAccounts: ["*"]}}, repositories: ["**"], purposes: [pull]}}
"#
        ),
    )?;
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| issuer.token("team-a", &format!("app-{i}"), "pullbroker"))
        .collect();
    let tokens_file = dir.path().join("tokens.txt");
    std::fs::write(&tokens_file, tokens.join("\n") + "\n")?;
    let tokens_env = tokens_file.to_str().context("path")?;
    let scripts = [
        (
            "static",
            write_exchange_lua(
                &dir.path().join("static.lua"),
                &format!("{STATIC}/apps/web:1"),
            )?,
        ),
        (
            "ecr",
            write_exchange_lua(&dir.path().join("ecr.lua"), &format!("{ECR}/apps/web:1"))?,
        ),
    ];
    let mut broker = start_broker(&bin, &config, &addr)?;
    let url = format!("http://{addr}/v1/exchange");
    let warm = Opts { duration: 2, ..o };
    for (_, lua) in &scripts {
        wrk(&url, Some(lua), &[], &warm, &[("TOKENS", tokens_env)])?;
    }
    let mut rps = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, (_, lua)) in scripts.iter().enumerate() {
            rps[i].push(wrk(&url, Some(lua), &[], &o, &[("TOKENS", tokens_env)])?.rps);
        }
    }
    let _ = broker.kill();
    let _ = broker.wait();
    let ecr_calls = relay
        .calls()
        .iter()
        .filter(|c| *c == "GetAuthorizationToken")
        .count();
    ensure!(ecr_calls >= 1, "the broker never asked ECR");
    let (s, e) = (median(rps[0].clone()), median(rps[1].clone()));
    println!(
        "exchange throughput, {rounds} alternating rounds of {}s, {} connections (median)",
        o.duration, o.connections
    );
    println!("  static credential   {s:>10.0} exchanges/s   {:?}", rps[0]);
    println!("  ecr credential      {e:>10.0} exchanges/s   {:?}", rps[1]);
    println!("  ecr / static        {:>10.3}×   (target ≥ 0.90)", e / s);
    println!("  GetAuthorizationToken calls during the run: {ecr_calls}");
    Ok(())
}
