#!/usr/bin/env bash
# Sync-mode benchmark (issue 5): one grant over NAMESPACES × SERVICE_ACCOUNTS
# (default 10000 × 2) against the fake API server in its own process; the
# controller runs in the bench process, so its peak RSS is the controller's.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p pullbroker-bench -p pullbroker-testenv --bin sync-bench --bin fake-apiserver
exec target/release/sync-bench "$@"
