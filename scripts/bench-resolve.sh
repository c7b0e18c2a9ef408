#!/usr/bin/env bash
# Resolver benchmark (issue: foundation). Installs what it needs, builds in
# release mode, and runs crates/bench/src/bin/resolve-bench.rs. Extra
# arguments go to the benchmark (see --help), e.g. --runs 5 --json out.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools docker-registry=docker-registry skopeo=skopeo ab=apache2-utils squid=squid
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/resolve-bench "$@"
