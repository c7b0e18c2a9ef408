#!/usr/bin/env bash
# Kubelet plugin benchmark (issue: KEP-4412 plugin): exec latency, peak RSS and
# binary size of pullbroker-credential-provider against a warm broker, with
# curl doing the same exchange as the peer. Argument: number of execs (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools curl=curl
cargo build --release -q -p pullbroker -p pullbroker-credential-provider -p pullbroker-bench
exec target/release/plugin-bench "$@"
