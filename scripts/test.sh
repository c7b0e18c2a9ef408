#!/usr/bin/env bash
# The test command (see README): installs what the tests need on a fresh
# Debian machine, checks formatting and lints, and runs every test. Tests
# start their own registries on 127.0.0.1 and stop them when they exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: real registries and real clients (containerd ships ctr),
# kubectl (kustomize, plugin lookup), chromium (the audit page in a real browser) and
# promtool from Debian's prometheus (the shipped alerts and dashboard queries) and
# squid (a real forward proxy for the registry-proxy tests); binutils' objcopy reads
# the dependency list cargo auditable puts in the image's binaries.
source scripts/ensure-tools.sh
ensure_tools docker-registry=docker-registry skopeo=skopeo containerd=containerd ctr=containerd kubectl=kubectl chromium=chromium promtool=prometheus squid=squid objcopy=binutils
# skopeo refuses to run without a signature policy; containers-common ships one.
if [ ! -f /etc/containers/policy.json ]; then
  mkdir -p /etc/containers
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' > /etc/containers/policy.json
fi

# AWS's STS and ECR APIs for the ecr-source tests: moto in server mode, in a
# virtual environment of its own (crates/testenv/src/aws.rs starts it).
MOTO=/opt/pullbroker-moto
if [ ! -x "$MOTO/bin/moto_server" ]; then
  ensure_tools python3=python3
  if ! python3 -m venv "$MOTO" >/dev/null 2>&1; then
    # Debian's python3 makes venvs only with python3-venv.
    rm -rf "$MOTO"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$MOTO"
  fi
  "$MOTO/bin/pip" install --quiet 'moto[server]==5.2.5'
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# No dependency that nothing uses (cargo-machete reads the sources, no build).
command -v cargo-machete >/dev/null 2>&1 || cargo install --locked --quiet cargo-machete --version 0.9.2
cargo machete
# Supply chain (deny.toml): permissive licenses only; one crypto library
# (aws-lc-rs), no OpenSSL, no serde_yaml; the broker never depends on the
# controller; crates.io only. Advisories need the RustSec database, whose git
# host these machines do not reach: checked where a copy is present.
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked --quiet cargo-deny --version 0.20.2
cargo deny --offline check bans licenses sources
if [ -d "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" ]; then
  cargo deny --offline check advisories
else
  echo "cargo deny: advisories not checked (no RustSec database on this machine)"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The fake API server records what our components ask of it (crates/testenv/src/api_log.rs);
# after the suite, the RBAC in deploy/ is checked against exactly those requests.
rm -rf target/api-requests
cargo test --workspace --locked 2>&1 | tee "$log"
cargo test -p pullbroker --locked --test deploy -- --ignored 2>&1 | tee -a "$log"
# The container image: built (release binaries), pushed, pulled and run by containerd.
scripts/image.sh
cargo test -p pullbroker --locked --test image -- --ignored 2>&1 | tee -a "$log"
# cargo's last line is the (empty) doc-test run; close with the real totals.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
