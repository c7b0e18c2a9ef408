#!/usr/bin/env bash
# Resolver benchmark (issue: foundation). Installs what it needs, builds in
# release mode, and runs crates/bench/src/bin/resolve-bench.rs. Extra
# arguments go to the benchmark (see --help), e.g. --runs 5 --json out.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/resolve-bench "$@"
