#!/usr/bin/env bash
# Delivery benchmark: messages/s and sender CPU per message, sealmail -> sealmail and
# Postfix -> the same sealmail receiver, over TLS with connection reuse, in the same run.
# Usage: scripts/bench-delivery.sh [MESSAGES] [SIZE]
# Needs root and Debian's postfix (for its own Postfix instance and smtp-source).
#
# Each sender's queue is filled while delivery cannot happen (sealmail: the receiver is down and
# the next attempt is an hour away; Postfix: defer_transports = smtp), then released at once
# (`sealmail queue flush`; `postqueue -f`), and timed until its queue is empty. CPU is the
# sender's own (sealmail: its process; Postfix: master and every child it ran) during the drain.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-2000}
SIZE=${2:-4096}
top=$(pwd)

cargo build --release -q -p sealmail-server -p sealmail-bench
BENCH=$top/target/release/sealmail-bench
SEALMAIL=$top/target/release/sealmail
INSTANCE=$top/crates/server/tests/interop/postfix-instance.sh
command -v smtp-source >/dev/null || { echo "smtp-source (Debian's postfix) is needed" >&2; exit 1; }

work=$(mktemp -d)
pids=()
pf_name=bench$$
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  bash "$INSTANCE" stop "$pf_name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BENCH" dns > "$work/dns.txt" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/dns.txt" ] && break; sleep 0.05; done
DNS=$(head -1 "$work/dns.txt")

# quickstart NAME DOMAIN OFFSET: a quickstart installation for DOMAIN, stopped after set-up.
quickstart() {
  local dir="$work/$1"
  mkdir -p "$dir"
  (cd "$dir" && exec "$SEALMAIL" quickstart --domain "$2" --port-offset "$3" --nameserver "$DNS" < /dev/null > init.txt 2>&1) &
  local init=$!
  for _ in $(seq 300); do grep -q "listening" "$dir/init.txt" 2>/dev/null && break; sleep 0.1; done
  kill "$init"; wait "$init" 2>/dev/null || true
}
serve() {
  RUST_LOG=${BENCH_LOG:-warn} "$SEALMAIL" --config "$work/$1/sealmail-data/sealmail.toml" serve < /dev/null > "$work/$1/out.txt" 2>&1 &
  echo $!
}
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# CPU clock ticks of a process and of the children it has waited for, plus its live children.
tree_ticks() {
  local total=0 t
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13 + $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
LIFT=$'[limits]\nmax_connection_rate_per_ip = 10000000\nmax_connections_per_ip = 1000\n[smtp]\nmessages_per_hour = 10000000\nrecipients_per_hour = 10000000'

R_OFFSET=20000; S_OFFSET=20100
R_MX=$((2525 + R_OFFSET)); S_SUB=$((2465 + S_OFFSET))
quickstart receiver b.test $R_OFFSET
printf '%s\n' "$LIFT" >> "$work/receiver/sealmail-data/sealmail.toml"
quickstart sender a.test $S_OFFSET
printf '%s\n[delivery]\nretry_base_secs = 3600\n\n[delivery.routes]\n"b.test" = "127.0.0.1:%s"\n' "$LIFT" "$R_MX" >> "$work/sender/sealmail-data/sealmail.toml"

report() { # NAME MESSAGES SECONDS SENDER_TICKS RECEIVER_TICKS
  awk -v n="$1" -v m="$2" -v s="$3" -v t="$4" -v r="$5" -v hz="$hz" 'BEGIN {
    printf "%-10s %6d messages in %7.2f s = %8.1f msg/s; sender CPU %7.1f us/msg; receiver CPU %7.1f us/msg\n",
      n, m, s, m / s, t / hz / m * 1e6, r / hz / m * 1e6 }'
}

echo "== sealmail -> sealmail ($MESSAGES messages of $SIZE bytes)"
S_PID=$(serve sender); pids+=("$S_PID"); wait_port $S_SUB
password=$(awk '/^alice/{print $2}' "$work/sender/sealmail-data/quickstart-credentials.txt")
"$BENCH" smtp --label fill --addr "127.0.0.1:$S_SUB" --server-name mail.a.test --ca "$work/sender/sealmail-data/tls/cert.pem" \
  --user alice@a.test --password "$password" --to bob@b.test --sessions 10 \
  --messages-per-session $((MESSAGES / 10)) --size "$SIZE" > "$work/fill.txt"
SCONF=$work/sender/sealmail-data/sealmail.toml
sleep 2  # the first (failing) attempts finish
R_PID=$(serve receiver); pids+=("$R_PID"); wait_port $R_MX
s0=$(tree_ticks "$S_PID"); r0=$(tree_ticks "$R_PID"); t0=$(date +%s.%N)
"$SEALMAIL" --config "$SCONF" queue flush > /dev/null
until "$SEALMAIL" --config "$SCONF" queue list | grep -q "the queue is empty"; do sleep 0.1; done
t1=$(date +%s.%N); s1=$(tree_ticks "$S_PID"); r1=$(tree_ticks "$R_PID")
report sealmail "$MESSAGES" "$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')" $((s1 - s0)) $((r1 - r0))

echo "== Postfix -> sealmail ($MESSAGES messages of $SIZE bytes)"
PF_PORT=31900
bash "$INSTANCE" start "$pf_name" $PF_PORT b.test "127.0.0.1:$R_MX" > /dev/null
PF_CONF=/etc/postfix-$pf_name
postconf -c "$PF_CONF" -e "smtp_destination_concurrency_limit = 4"
# drain LABEL: release Postfix's deferred queue and time it until empty.
drain() {
  local pid s0 r0 t0 s1 r1 t1
  pid=$(head -1 "/var/spool/postfix-$pf_name/pid/master.pid" | tr -d ' ')
  s0=$(tree_ticks "$pid"); r0=$(tree_ticks "$R_PID"); t0=$(date +%s.%N)
  postqueue -c "$PF_CONF" -f
  until postqueue -c "$PF_CONF" -p | grep -q "Mail queue is empty"; do sleep 0.1; done
  t1=$(date +%s.%N); s1=$(tree_ticks "$pid"); r1=$(tree_ticks "$R_PID")
  report "$1" "$MESSAGES" "$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')" $((s1 - s0)) $((r1 - r0))
}
# fill: queue MESSAGES messages in Postfix with delivery held.
fill() {
  postconf -c "$PF_CONF" -e "defer_transports = smtp"
  postfix -c "$PF_CONF" reload > /dev/null 2>&1
  sleep 1
  smtp-source -c -s 10 -m "$MESSAGES" -l "$SIZE" -f dave@postfix.test -t bob@b.test "127.0.0.1:$PF_PORT" > /dev/null
  until [ "$(find /var/spool/postfix-$pf_name/incoming /var/spool/postfix-$pf_name/active -type f | wc -l)" = 0 ]; do sleep 0.1; done
  postconf -c "$PF_CONF" -e "defer_transports ="
  postfix -c "$PF_CONF" reload > /dev/null 2>&1
  sleep 1
}
fill
drain postfix
echo "== Postfix -> sealmail, TLS connection reuse on (smtp_tls_connection_reuse = yes, tlsproxy)"
postconf -c "$PF_CONF" -e "smtp_tls_connection_reuse = yes"
fill
drain postfix-reuse
grep -c "TLS connection established to 127.0.0.1" "/var/log/postfix-$pf_name.log" | sed 's/^/postfix TLS handshakes in both runs: /'
