#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60). Needs the
# nightly toolchain (rustup) and cargo-fuzz (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in reference dockerconfig secret_manifest www_authenticate admission_review; do
  echo "== $target (${secs}s)"
  # Seeds kept in the repo (real requests) join the working corpus.
  dirs=()
  if [ -d "seeds/$target" ]; then mkdir -p "corpus/$target"; dirs=("corpus/$target" "seeds/$target"); fi
  cargo +nightly fuzz run "$target" "${dirs[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | grep -E "^(#[0-9]+.*DONE|Done|==[0-9]+==|SUMMARY|thread)" || true
  [ -z "$(ls artifacts/"$target" 2>/dev/null)" ] || { echo "crash artifacts in fuzz/artifacts/$target"; exit 1; }
done
