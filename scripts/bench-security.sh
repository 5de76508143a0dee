#!/usr/bin/env bash
# Intrusion-prevention benchmark: the cost of refusing a banned address against a full TLS
# handshake, and legitimate login latency with and without a flood of failed logins.
# Usage: scripts/bench-security.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-5}
top=$(pwd)
cargo build --release -q -p sealmail-server -p sealmail-bench
work=$(mktemp -d)
trap 'pkill -f -- "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/q"
(cd "$work/q" && exec "$top/target/release/sealmail" quickstart --port-offset 31000 < /dev/null > init.txt 2>&1) &
init=$!
for _ in $(seq 200); do grep -q "listening" "$work/q/init.txt" 2>/dev/null && break; sleep 0.1; done
kill "$init"; wait "$init" 2>/dev/null || true
printf '[limits]\nmax_connection_rate_per_ip = 10000000\n' >> "$work/q/sealmail-data/sealmail.toml"
RUST_LOG=warn "$top/target/release/sealmail" --config "$work/q/sealmail-data/sealmail.toml" serve < /dev/null > "$work/serve.txt" 2>&1 &
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/33465) 2>/dev/null && break; sleep 0.1; done
alice=$(awk '/^alice/{print $2}' "$work/q/sealmail-data/quickstart-credentials.txt")
"$top/target/release/sealmail-bench" security --submission 127.0.0.1:33465 --mx 127.0.0.1:33525 \
  --ca "$work/q/sealmail-data/tls/cert.pem" --user alice@example.test --password "$alice" --seconds "$SECONDS_EACH"
