#!/usr/bin/env bash
# SMTP benchmark: sealmail and the Postfix + Dovecot reference peer, same client, same run.
# Usage: scripts/bench-smtp.sh [SESSIONS] [MESSAGES_PER_SESSION] [SIZE]
# Needs root for the peer (../shared/peers/setup-postfix-dovecot.sh installs and starts it).
# sealmail runs twice: with its default login cache, and with the cache off (every AUTH pays
# Argon2id), so both figures are visible.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-20}
PER_SESSION=${2:-50}
SIZE=${3:-4096}
PEERS=${PEERS:-../shared/peers}
top=$(pwd)

cargo build --release -q -p sealmail-server -p sealmail-bench
BENCH=$top/target/release/sealmail-bench
SEALMAIL=$top/target/release/sealmail

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; pkill -f -- "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

# start_sealmail NAME PORT_OFFSET EXTRA_TOML: a quickstart installation served with extra config.
start_sealmail() {
  local dir="$work/$1"
  mkdir -p "$dir"
  (cd "$dir" && exec "$SEALMAIL" quickstart --port-offset "$2" < /dev/null > init.txt 2>&1) &
  local init=$!
  for _ in $(seq 200); do grep -q "listening" "$dir/init.txt" 2>/dev/null && break; sleep 0.1; done
  kill "$init"
  wait "$init" 2>/dev/null || true
  printf '%s\n' "$3" >> "$dir/sealmail-data/sealmail.toml"
  RUST_LOG=warn "$SEALMAIL" --config "$dir/sealmail-data/sealmail.toml" serve < /dev/null > "$dir/out.txt" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$((2465 + $2))") 2>/dev/null && break; sleep 0.1; done
}

run_sealmail() {
  local dir="$work/$1"
  local password
  password=$(awk '/^alice/{print $2}' "$dir/sealmail-data/quickstart-credentials.txt")
  "$BENCH" smtp --label "$1" --addr "127.0.0.1:$((2465 + $2))" --ca "$dir/sealmail-data/tls/cert.pem" \
    --user alice@example.test --password "$password" --to bob@example.test \
    --sessions "$SESSIONS" --messages-per-session "$PER_SESSION" --size "$SIZE" --server-processes sealmail
}

bash "$PEERS/setup-postfix-dovecot.sh" > "$work/peer.log" 2>&1
peer_ca="${PEER_STATE_DIR:-${TMPDIR:-/tmp}/mail-peer-state}/ca.pem"

echo "== crypto baseline"
"$BENCH" crypto --size "$SIZE" --iterations 500
echo "== sealmail (login cache on, the default)"
# One client address and one account send thousands of messages a minute here: lift the
# per-IP connection rate limit and the per-account hourly limits.
LIFT=$'[limits]\nmax_connection_rate_per_ip = 10000000\n[smtp]\nmessages_per_hour = 10000000\nrecipients_per_hour = 10000000'
start_sealmail sealmail 30000 "$LIFT"
run_sealmail sealmail 30000
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()
echo "== sealmail (login cache off: Argon2id on every AUTH)"
start_sealmail sealmail-nocache 30100 "$LIFT"$'\n[auth]\nlogin_cache_ttl_secs = 0'
run_sealmail sealmail-nocache 30100
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()
echo "== postfix+dovecot"
"$BENCH" smtp --label postfix+dovecot --addr 127.0.0.1:12465 --ca "$peer_ca" \
  --user alice@example.test --password Alice-Peer-Pw-1 --to bob@example.test \
  --sessions "$SESSIONS" --messages-per-session "$PER_SESSION" --size "$SIZE" \
  --server-processes master,smtpd,cleanup,qmgr,lmtp,trivial-rewrite,tlsmgr,anvil,proxymap,dovecot,auth,log,config,stats,tlsproxy
