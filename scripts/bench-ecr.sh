#!/usr/bin/env bash
# ECR source benchmark (issue: production registries): /v1/exchange throughput
# with an ECR credential (moto's STS and ECR on loopback) against a static one,
# same broker, same run. Installs what it needs, builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools wrk=wrk
MOTO=/opt/pullbroker-moto
[ -x "$MOTO/bin/moto_server" ] || { python3 -m venv "$MOTO" && "$MOTO/bin/pip" install --quiet 'moto[server]==5.2.5'; }
cargo build --release -q -p pullbroker -p pullbroker-bench
exec target/release/ecr-bench "$@"
