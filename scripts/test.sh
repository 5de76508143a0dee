#!/usr/bin/env bash
# The test command (README): formatting, lints, then every test in the workspace.
# It installs what the tests need when it is missing, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The system's certificate authorities (sealmail check, delivery and ACME tests load them).
[ -s /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# mbsync is the independent IMAP client of the IMAP tests.
command -v mbsync >/dev/null 2>&1 || need_apt+=(isync)
# Postfix is the reference MTA of the delivery interoperability test (its own instance; root).
command -v postfix >/dev/null 2>&1 || need_apt+=(postfix)
# testssl.sh is the independent TLS scanner of the listener tests.
command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || need_apt+=(testssl.sh)
# Pebble is the ACME server the ACME tests obtain certificates from (crates/acme/tests/pebble.rs).
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
# Headless Chromium, driven over WebDriver by chromedriver, runs the web pages' browser tests.
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  # Postfix's package asks how to configure the default instance: local only, no questions.
  echo "postfix postfix/main_mailer_type select Local only" | { if [ "$(id -u)" = 0 ]; then debconf-set-selections; else sudo debconf-set-selections; fi; } || true
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi
# dkimpy (with dnspython) is the independent DKIM implementation the DKIM tests run against.
venv=.test-venv
if ! "$venv/bin/python" -c 'import dkim, dns.resolver, nacl, aiosmtpd, scramp' >/dev/null 2>&1; then
  python3 -m venv "$venv" >/dev/null 2>&1 || {
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq python3-venv; else sudo apt-get install -y -qq python3-venv; fi
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check dkimpy==1.1.8 dnspython==2.9.2 pynacl==1.6.2 aiosmtpd==1.4.6 scramp==1.5.0
fi
SEALMAIL_PYTHON="$(pwd)/$venv/bin/python"
export SEALMAIL_PYTHON
# PostgreSQL for the store tests on both backends: the machine's, or one started for this run.
stop_test_postgres() { :; }
# shellcheck source=scripts/test-postgres.sh
source scripts/test-postgres.sh
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# A clean clone builds everything once: incremental compilation's bookkeeping only costs time.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"; stop_test_postgres' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# A few seconds of fuzzing per parser that reads network input (docs/FUZZING.md).
scripts/fuzz-smoke.sh 3 || status=$?
# One closing line with the totals of every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
