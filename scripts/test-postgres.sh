#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure a PostgreSQL server answers for the tests and exports
# SEALMAIL_TEST_POSTGRES. The URL given (default postgres://postgres@127.0.0.1:5432/test, trust
# auth, the machine's server) is used when it answers; otherwise Debian's postgresql is
# installed if needed and a private cluster (trust auth, loopback only, port 55432) is started
# for this run and stopped at its end. The PostgreSQL tests never skip: they fail when no
# server answers.

pg_url="${SEALMAIL_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"

pg_answers() {
  command -v psql >/dev/null 2>&1 && psql "$1" -qAtc 'SELECT 1' >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! pg_answers "$pg_url"; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || ! command -v psql >/dev/null 2>&1; then
    echo "installing: postgresql (no PostgreSQL answers at $pg_url)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  pg_dir=$(mktemp -d /tmp/sealmail-test-pg.XXXXXX)
  chmod 755 "$pg_dir"
  # initdb refuses to run as root: the cluster belongs to the postgres user then.
  run_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
  }
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  run_pg "$bin/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
  run_pg "$bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
    -o "-p 55432 -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  psql "postgres://postgres@127.0.0.1:55432/postgres" -qc 'CREATE DATABASE test' >/dev/null
  pg_url="postgres://postgres@127.0.0.1:55432/test"
  stop_test_postgres() { run_pg "$bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
  echo "started a PostgreSQL cluster for the tests at $pg_url"
fi
if ! pg_answers "$pg_url"; then
  echo "no PostgreSQL answers at $pg_url; the store tests need one" >&2
  exit 1
fi
export SEALMAIL_TEST_POSTGRES="$pg_url"
