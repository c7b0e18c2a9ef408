#!/usr/bin/env bash
# Broker benchmark (issue: policy core and broker): /v1/exchange throughput and
# latency, /token against the registry's HEAD ceiling. Installs what it needs,
# builds in release mode, runs crates/bench/src/bin/exchange-bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools docker-registry=docker-registry wrk=wrk ab=apache2-utils
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/exchange-bench "$@"
