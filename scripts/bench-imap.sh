#!/usr/bin/env bash
# IMAP benchmark: sealmail and the Dovecot of the reference peer, same client, same run.
# Usage: scripts/bench-imap.sh [MESSAGES] [IDLE_SESSIONS] [MEMORY_SESSIONS]
#   MESSAGES        mailbox size for FETCH throughput (default 10000, 4 KiB each)
#   IDLE_SESSIONS   IDLE sessions for the push latency, on both servers (default 1000)
#   MEMORY_SESSIONS IDLE sessions for sealmail's memory at scale (default 10000)
# Needs root for the peer (../shared/peers/setup-postfix-dovecot.sh installs and starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
IDLE_SESSIONS=${2:-1000}
MEMORY_SESSIONS=${3:-10000}
PEERS=${PEERS:-../shared/peers}
top=$(pwd)

cargo build --release -q -p sealmail-server -p sealmail-bench
BENCH=$top/target/release/sealmail-bench
SEALMAIL=$top/target/release/sealmail

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# Dovecot needs one inotify instance per IDLE session, or it falls back to polling.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt $((IDLE_SESSIONS + 100)) ]; then
  echo $((IDLE_SESSIONS + 100)) > /proc/sys/fs/inotify/max_user_instances || echo "warning: cannot raise fs.inotify.max_user_instances"
fi
limit=$((IDLE_SESSIONS + 100))
PEER_MAX_USERIP_CONNECTIONS=$limit PEER_IMAP_LOGIN_PROCESS_LIMIT=$limit PEER_IMAP_PROCESS_LIMIT=$limit \
  PEER_DEFAULT_CLIENT_LIMIT=$((limit * 5)) bash "$PEERS/setup-postfix-dovecot.sh" > "$work/peer.log" 2>&1
peer_ca="${PEER_STATE_DIR:-${TMPDIR:-/tmp}/mail-peer-state}/ca.pem"

# sealmail from a quickstart, with the per-address limits lifted: every benchmark session
# comes from one or two loopback addresses.
dir="$work/sealmail"
mkdir -p "$dir"
(cd "$dir" && exec "$SEALMAIL" quickstart --port-offset 31000 < /dev/null > init.txt 2>&1) &
init=$!
for _ in $(seq 200); do grep -q "listening" "$dir/init.txt" 2>/dev/null && break; sleep 0.1; done
kill "$init"; wait "$init" 2>/dev/null || true
cat >> "$dir/sealmail-data/sealmail.toml" <<'TOML'
[limits]
max_connections = 30000
max_connections_per_ip = 30000
max_connection_rate_per_ip = 10000000
[smtp]
messages_per_hour = 10000000
recipients_per_hour = 10000000
TOML
RUST_LOG=warn "$SEALMAIL" --config "$dir/sealmail-data/sealmail.toml" serve < /dev/null > "$dir/out.txt" 2>&1 &
pids+=($!)
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$((2993 + 31000))") 2>/dev/null && break; sleep 0.1; done
creds="$dir/sealmail-data/quickstart-credentials.txt"
bob=$(awk '/^bob/{print $2}' "$creds")
alice=$(awk '/^alice/{print $2}' "$creds")
ours=(--ca "$dir/sealmail-data/tls/cert.pem" --user bob@example.test --password "$bob" --server-processes sealmail)
theirs=(--ca "$peer_ca" --user bob@example.test --password Bob-Peer-Pw-2
        --server-processes dovecot,imap,imap-login,auth,config,log,stats,anvil,lmtp)

echo "== FETCH, $MESSAGES messages"
"$BENCH" imap-fetch --label sealmail --addr "127.0.0.1:$((2993 + 31000))" --messages "$MESSAGES" "${ours[@]}"
"$BENCH" imap-fetch --label dovecot --addr 127.0.0.1:12993 --messages "$MESSAGES" "${theirs[@]}"
echo "== IDLE, $IDLE_SESSIONS sessions"
"$BENCH" imap-idle --label sealmail --addr "127.0.0.1:$((2993 + 31000))" --sessions "$IDLE_SESSIONS" \
  --submission "127.0.0.1:$((2465 + 31000))" --sender alice@example.test --sender-password "$alice" "${ours[@]}"
"$BENCH" imap-idle --label dovecot --addr 127.0.0.1:12993 --sessions "$IDLE_SESSIONS" \
  --submission 127.0.0.1:12465 --sender alice@example.test --sender-password Alice-Peer-Pw-1 "${theirs[@]}"
echo "== IDLE memory at scale, sealmail, $MEMORY_SESSIONS sessions"
"$BENCH" imap-idle --label sealmail --addr "127.0.0.1:$((2993 + 31000))" --sessions "$MEMORY_SESSIONS" \
  --submission "127.0.0.1:$((2465 + 31000))" --sender alice@example.test --sender-password "$alice" \
  --deliveries 2 "${ours[@]}"
