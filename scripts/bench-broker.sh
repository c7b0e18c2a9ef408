#!/usr/bin/env bash
# Broker benchmark (issue: policy core and broker): /v1/exchange throughput and
# latency, /token against the registry's HEAD ceiling. Installs what it needs,
# builds in release mode, runs crates/bench/src/bin/exchange-bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/exchange-bench "$@"
