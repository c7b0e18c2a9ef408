#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target for RUNS executions each (default
# 10,000,000; `scripts/fuzz.sh 100000` for a quick pass), or until SECONDS
# per target when given (`scripts/fuzz.sh 10000000 600`), two targets at a
# time (the machine has two cores), and prints executions, time and rate per
# target. Starts from the corpus kept in the repo (fuzz/seeds/TARGET) and
# merges what it found back into it, minimized (-merge=1), so the corpus
# grows with every run; commit fuzz/seeds. A crash fails the script and
# leaves its input in fuzz/artifacts/TARGET.
#
# FUZZ_TARGETS="a b" fuzzes only those targets.
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs="${1:-10000000}"
limit=()
[ -z "${2:-}" ] || limit=(-max_total_time="$2")
targets=(reference dockerconfig secret_manifest www_authenticate exec_source broker_config admission_review)
[ -z "${FUZZ_TARGETS:-}" ] || read -r -a targets <<<"$FUZZ_TARGETS"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build >/dev/null

fuzz_one() {
  local target="$1" log="logs/$1.log" start end
  mkdir -p "corpus/$target" "seeds/$target" logs
  start=$(date +%s)
  # -runs bounds the work; the working corpus comes first so new inputs land there.
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -runs="$runs" "${limit[@]}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    echo "$target: FAILED — see fuzz/$log and fuzz/artifacts/$target"
    return 1
  fi
  end=$(date +%s)
  local execs
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  # Keep the corpus in the repo, minimized: only inputs that add coverage.
  mkdir -p "merged/$target"
  cargo +nightly fuzz run "$target" "merged/$target" "seeds/$target" "corpus/$target" -- -merge=1 >/dev/null 2>&1
  rm -rf "seeds/$target" && mv "merged/$target" "seeds/$target"
  local secs=$(( end - start > 0 ? end - start : 1 ))
  printf '%-18s %12s execs %6ss %10s/s  corpus %s files, no crash\n' \
    "$target" "$execs" "$secs" "$(( ${execs/\?/0} / secs ))" "$(ls "seeds/$target" | wc -l)"
}

status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do
    fuzz_one "$t" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
exit $status
