#!/usr/bin/env bash
# Admission pinning benchmark (issue 10): AdmissionReview round trips over TLS
# at a fixed rate with a warm cache (p99), the peak rate, and a cold 50-image
# pin against the registry's own slowest HEAD in the same run. Installs what
# it needs, builds in release mode, runs crates/bench/src/bin/admission-bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools docker-registry=docker-registry
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/admission-bench "$@"
