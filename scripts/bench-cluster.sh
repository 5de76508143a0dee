#!/usr/bin/env bash
# Store benchmark: SMTP ingest (implicit TLS + AUTH, one connection per message) and IMAP FETCH
# on SQLite, on PostgreSQL with one node, and on PostgreSQL with two nodes, same client, same
# run; then SIGKILL of a node under SMTP load on PostgreSQL, counting acknowledged messages
# that are not in the store (must be 0).
# Usage: scripts/bench-cluster.sh [SESSIONS] [MESSAGES_PER_SESSION] [FETCH_MESSAGES]
#   defaults 20, 50, 2000; 4 KiB messages. PostgreSQL: $SEALMAIL_TEST_POSTGRES or
#   postgres://postgres@127.0.0.1:5432/test (a schema of its own, dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-20}
PER_SESSION=${2:-50}
FETCH=${3:-2000}
PG=${SEALMAIL_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
SCHEMA="bench_$$"
top=$(pwd)

cargo build --release -q -p sealmail-server -p sealmail-bench
BENCH=$top/target/release/sealmail-bench
SEALMAIL=$top/target/release/sealmail

work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  pkill -f -- "$work" 2>/dev/null || true
  psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

LIFT=$'[limits]\nmax_connections = 30000\nmax_connections_per_ip = 30000\nmax_connection_rate_per_ip = 10000000\n[smtp]\nmessages_per_hour = 10000000\nrecipients_per_hour = 10000000'

# quickstart NAME OFFSET [QUICKSTART OPTIONS...]: creates an installation (users alice, bob).
quickstart() {
  local dir="$work/$1" offset=$2
  shift 2
  mkdir -p "$dir"
  (cd "$dir" && exec "$SEALMAIL" quickstart --port-offset "$offset" "$@" < /dev/null > init.txt 2>&1) &
  local init=$!
  for _ in $(seq 300); do grep -q "listening" "$dir/init.txt" 2>/dev/null && break; sleep 0.1; done
  kill "$init"
  wait "$init" 2>/dev/null || true
  printf '%s\n' "$LIFT" >> "$dir/sealmail-data/sealmail.toml"
}

# second_node FROM NAME SHIFT: a copy of FROM's installation on ports SHIFT higher, named NAME.
second_node() {
  local from="$work/$1" dir="$work/$2"
  cp -a "$from" "$dir"
  python3 - "$dir/sealmail-data/sealmail.toml" "$3" "$2" <<'PY'
import re, sys
path, shift, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(path).read()
text = re.sub(r'bind = "127\.0\.0\.1:(\d+)"', lambda m: f'bind = "127.0.0.1:{int(m.group(1)) + shift}"', text)
text = text.replace('[server]\n', f'[server]\nnode_name = "{name}"\n', 1) if '[server]\n' in text else text + f'\n[server]\nnode_name = "{name}"\n'
open(path, 'w').write(text)
PY
}

serve() {
  local dir="$work/$1"
  RUST_LOG=warn "$SEALMAIL" --config "$dir/sealmail-data/sealmail.toml" serve < /dev/null > "$dir/out.txt" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$((2993 + $2))") 2>/dev/null && break; sleep 0.1; done
}

password() { awk "/^$2/{print \$2}" "$work/$1/sealmail-data/quickstart-credentials.txt"; }

# smtp NAME OFFSET LABEL SESSIONS: the SMTP load against one node.
smtp() {
  "$BENCH" smtp --label "$3" --addr "127.0.0.1:$((2465 + $2))" --ca "$work/$1/sealmail-data/tls/cert.pem" \
    --user alice@example.test --password "$(password "$1" alice)" --to bob@example.test \
    --sessions "$4" --messages-per-session "$PER_SESSION" --size 4096 --server-processes sealmail,postgres
}

fetch() {
  "$BENCH" imap-fetch --label "$3" --addr "127.0.0.1:$((2993 + $2))" --ca "$work/$1/sealmail-data/tls/cert.pem" \
    --user bob@example.test --password "$(password "$1" bob)" --messages "$FETCH" --rounds 3 \
    --server-processes sealmail,postgres
}

stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }

echo "== SQLite, one node"
quickstart sqlite 32000
serve sqlite 32000
smtp sqlite 32000 sqlite "$SESSIONS"
fetch sqlite 32000 sqlite
stop_all

echo "== PostgreSQL, one node"
quickstart pg-a 32100 --store-url "$PG" --store-schema "$SCHEMA"
second_node pg-a pg-b 100
serve pg-a 32100
smtp pg-a 32100 postgres-1-node "$SESSIONS"
fetch pg-a 32100 postgres-1-node

echo "== PostgreSQL, two nodes ($((SESSIONS / 2)) sessions each, at once)"
serve pg-b 32200
smtp pg-a 32100 postgres-node-a $((SESSIONS / 2)) > "$work/smtp-a.txt" &
a=$!
smtp pg-b 32200 postgres-node-b $((SESSIONS / 2)) > "$work/smtp-b.txt"
wait "$a"
cat "$work/smtp-a.txt" "$work/smtp-b.txt"
awk '/throughput/ { s += $3 } END { printf "postgres-2-nodes: SMTP throughput together %.1f msg/s\n", s }' "$work/smtp-a.txt" "$work/smtp-b.txt"
fetch pg-a 32100 postgres-node-a > "$work/fetch-a.txt" &
a=$!
fetch pg-b 32200 postgres-node-b > "$work/fetch-b.txt"
wait "$a"
cat "$work/fetch-a.txt" "$work/fetch-b.txt"
stop_all

echo "== SIGKILL of a node under SMTP load (PostgreSQL)"
before=$(psql "$PG" -qAtc "SELECT COUNT(*) FROM $SCHEMA.messages m JOIN $SCHEMA.mailboxes x ON x.id = m.mailbox_id JOIN $SCHEMA.accounts a ON a.id = x.account_id WHERE a.address = 'bob@example.test' AND x.name = 'INBOX'")
serve pg-a 32100
node_pid=${pids[-1]}
(sleep 3; kill -9 "$node_pid") &
smtp pg-a 32100 under-sigkill "$SESSIONS" > "$work/kill.txt" 2>"$work/kill-err.txt" || true
cat "$work/kill.txt"
acknowledged=$(awk '/ messages \(/ { print $2; exit }' "$work/kill.txt")
after=$(psql "$PG" -qAtc "SELECT COUNT(*) FROM $SCHEMA.messages m JOIN $SCHEMA.mailboxes x ON x.id = m.mailbox_id JOIN $SCHEMA.accounts a ON a.id = x.account_id WHERE a.address = 'bob@example.test' AND x.name = 'INBOX'")
stored=$((after - before))
lost=$(( acknowledged > stored ? acknowledged - stored : 0 ))
echo "under-sigkill: $acknowledged acknowledged with 250, $stored stored; acknowledged but lost: $lost"
pids=()
