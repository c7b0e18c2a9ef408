#!/usr/bin/env bash
# Clean release build cost of the shipped binaries, per git revision, in one
# run: `scripts/bench-build.sh 48271b3a HEAD` (default: HEAD). Each revision
# is checked out in a worktree of its own and built from nothing into its
# own target directory, exactly as scripts/image.sh builds the image's
# binaries (release, symbols stripped); crates already downloaded are
# reused, so what is measured is compiling and linking.
#
# Prints per revision: wall seconds, CPU seconds (user + system: the figure
# that holds when the machine is busy with something else), peak RSS, the
# size of each binary, and the gzip -9 size of both (the image layer is
# those binaries plus a few KiB). Revisions are built one after another.
# With KEEP_BINARIES=DIR each revision's two binaries are kept in DIR/<sha>/,
# for a throughput comparison of the same builds afterwards
# (`target/release/exchange-bench --versus DIR/<sha>/pullbroker`).
set -euo pipefail
cd "$(dirname "$0")/.."
(($#)) || set -- HEAD
work=$(mktemp -d)
cleanup() {
  for wt in "$work"/src-*; do [ -d "$wt" ] && git worktree remove --force "$wt" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT
printf '%-10s %8s %8s %9s %12s %12s %12s\n' revision wall_s cpu_s peak_MiB pullbroker_B provider_B gzip_both_B
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  src="$work/src-$sha"
  git worktree add --detach "$src" "$sha" >/dev/null 2>&1
  target="$work/target-$sha"
  times="$work/time-$sha"
  (cd "$src" && CARGO_PROFILE_RELEASE_STRIP=symbols /usr/bin/time -f '%e %U %S %M' -o "$times" \
    cargo build --release --locked --quiet --target-dir "$target" \
      -p pullbroker -p pullbroker-credential-provider)
  read -r wall user sys rss <"$times"
  bins=("$target/release/pullbroker" "$target/release/pullbroker-credential-provider")
  gz=$(cat "${bins[@]}" | gzip -n -9 | wc -c)
  printf '%-10s %8.0f %8.0f %9.0f %12d %12d %12d\n' "$sha" "$wall" "$(echo "$user + $sys" | bc)" \
    "$(echo "$rss / 1024" | bc)" "$(stat -c %s "${bins[0]}")" "$(stat -c %s "${bins[1]}")" "$gz"
  if [ -n "${KEEP_BINARIES:-}" ]; then
    mkdir -p "$KEEP_BINARIES/$sha"
    cp "${bins[@]}" "$KEEP_BINARIES/$sha/"
  fi
  rm -rf "$target"
done
