#!/usr/bin/env bash
# The fuzzing smoke test of CI (docs/FUZZING.md): builds every fuzz target with cargo-fuzz
# (libFuzzer, stable Rust with RUSTC_BOOTSTRAP=1) and runs each for a few seconds from its seed
# corpus. Any crash, panic, timeout or memory blow-up fails it.
# Usage: scripts/fuzz-smoke.sh [seconds per target, default 3]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-3}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
start=$(date +%s)
# A few seconds per target need no full optimisation, and opt-level 1 builds in about half the
# time on CI's 2 cores; fuzzing campaigns (docs/FUZZING.md) build with the profile's own level.
CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-1} cargo fuzz build -O -s none
built=$(date +%s)
./seed.sh >/dev/null
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" artifacts/"$target"
  if "$bin/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 "corpus/$target" >"$logs/$target" 2>&1; then
    echo "fuzz smoke: $target ok: $(grep -E '^#[0-9]+.*(DONE|cov)' "$logs/$target" | tail -1)"
  else
    echo "fuzz smoke: $target FAILED (crash input in fuzz/artifacts/$target/):"
    tail -40 "$logs/$target"
    failed+=("$target")
  fi
done
echo "fuzz smoke: build $((built - start)) s, runs $(($(date +%s) - built)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke: failed: ${failed[*]}"
  exit 1
fi
