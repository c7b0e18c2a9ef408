#!/usr/bin/env bash
# `pullbroker audit` and `adopt` on a big cluster (issues 13, 25): SECRETS ACCOUNTS PODS
# (default 10000 20000 50000) in the fake API server, against the pull-secret
# guide's curl + jq recipe in the same run (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools curl=curl jq=jq
cargo build --release -q -p pullbroker -p pullbroker-bench -p pullbroker-testenv --bin pullbroker --bin audit-bench --bin fake-apiserver
exec target/release/audit-bench "$@"
