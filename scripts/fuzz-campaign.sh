#!/usr/bin/env bash
# A fuzzing campaign measured in CPU time (docs/FUZZING.md): runs each named fuzz target until
# its process has used CPU_SECONDS of CPU (user + system), then interrupts it (libFuzzer prints
# its final statistics on SIGINT). Wall-clock limits undercount on a busy machine; this does not.
# Runs JOBS targets at once (default 1), at the lowest priority, so builds are not slowed.
# Usage: scripts/fuzz-campaign.sh CPU_SECONDS TARGET[:CPU_SECONDS] ...   (env JOBS, LOGS)
# Prints one summary line per target; full logs in $LOGS (default fuzz/logs/).
# Assumes the targets are built: RUSTC_BOOTSTRAP=1 cargo fuzz build -O -s none (in fuzz/).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
default_seconds=$1
shift
jobs_at_once=${JOBS:-1}
logs=${LOGS:-logs}
mkdir -p "$logs"
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
ticks=$(getconf CLK_TCK)

cpu_seconds_of() {
  # Fields 14 and 15 of /proc/PID/stat: user and system time in clock ticks.
  awk -v t="$ticks" '{ print int(($14 + $15) / t) }' "/proc/$1/stat" 2>/dev/null || echo -1
}

campaign() {
  local target=$1 seconds=$2 log="$logs/$1.log" pid used=0
  mkdir -p "corpus/$target" "artifacts/$target"
  nice -n 19 "$bin/$target" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 "corpus/$target" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    used=$(cpu_seconds_of "$pid")
    if [ "$used" -ge "$seconds" ]; then
      kill -INT "$pid"
      break
    fi
    sleep 5
  done
  local status=0
  wait "$pid" || status=$?
  local execs cov
  execs=$(sed -n 's/^stat::number_of_executed_units: //p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' "$log" | tail -1)
  # 72 is libFuzzer's exit code when interrupted: the planned end.
  if [ "$status" -eq 72 ] || [ "$status" -eq 0 ]; then
    echo "fuzz campaign: $target: ${used} CPU s, ${execs:-?} executions, $cov, no crash"
  else
    echo "fuzz campaign: $target: FAILED (exit $status) after ${used} CPU s; input in fuzz/artifacts/$target/, log $log"
  fi
}

running=0
for spec in "$@"; do
  target=${spec%%:*}
  seconds=$default_seconds
  [ "$spec" != "$target" ] && seconds=${spec#*:}
  campaign "$target" "$seconds" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs_at_once" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
