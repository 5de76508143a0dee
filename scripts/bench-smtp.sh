#!/usr/bin/env bash
# SMTP benchmark: sealmail and the Postfix + Dovecot reference peer, same client, same run.
# Usage: scripts/bench-smtp.sh [SESSIONS] [MESSAGES_PER_SESSION] [SIZE]
# Needs root for the peer (../shared/peers/setup-postfix-dovecot.sh installs and starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-20}
PER_SESSION=${2:-50}
SIZE=${3:-4096}
PEERS=${PEERS:-../shared/peers}

cargo build --release -q -p sealmail-server -p sealmail-bench
BENCH=target/release/sealmail-bench

work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
top=$(pwd)
(cd "$work" && RUST_LOG=warn "$top/target/release/sealmail" quickstart --port-offset 30000 < /dev/null > out.txt 2> err.txt & echo $! > pid)
for _ in $(seq 100); do grep -q "listening" "$work/out.txt" 2>/dev/null && break; sleep 0.1; done
alice=$(awk '/^alice/{print $2}' "$work/sealmail-data/quickstart-credentials.txt")

bash "$PEERS/setup-postfix-dovecot.sh" > "$work/peer.log" 2>&1
peer_ca="${PEER_STATE_DIR:-${TMPDIR:-/tmp}/mail-peer-state}/ca.pem"

echo "== crypto baseline"
$BENCH crypto --size "$SIZE" --iterations 500
echo "== sealmail"
$BENCH smtp --label sealmail --addr 127.0.0.1:32465 --ca "$work/sealmail-data/tls/cert.pem" \
  --user alice@example.test --password "$alice" --to bob@example.test \
  --sessions "$SESSIONS" --messages-per-session "$PER_SESSION" --size "$SIZE" --server-processes sealmail
echo "== postfix+dovecot"
$BENCH smtp --label postfix+dovecot --addr 127.0.0.1:12465 --ca "$peer_ca" \
  --user alice@example.test --password Alice-Peer-Pw-1 --to bob@example.test \
  --sessions "$SESSIONS" --messages-per-session "$PER_SESSION" --size "$SIZE" \
  --server-processes master,smtpd,cleanup,qmgr,lmtp,trivial-rewrite,tlsmgr,anvil,proxymap,dovecot,auth,lmtp,log,config,stats,anvil,tlsproxy
