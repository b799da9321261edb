#!/usr/bin/env bash
# The main job, end to end on the local stack: open accounts, initiate
# transfers, process them, show balances and transfers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
scripts/stack.sh up
# The dev profile (overflow checks and debug assertions on), the one
# scripts/test.sh tests in: the test command then reuses this build of every
# dependency and of payctl, and compiles only the tests on top. cargo's
# progress stays on screen: the first build takes a few minutes. (For
# production and benchmarks: `cargo build --release`.)
echo "demo: building payctl (dev profile; scripts/test.sh reuses this build)" >&2
cargo build
payctl=target/debug/payctl
# Save the stack's `local` profile (an existing one is left alone) and run
# the demo on it, whatever profile is current.
scripts/stack.sh profile
if "$payctl" profile show local >/dev/null 2>&1; then export PAYCTL_PROFILE=local; fi
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/0}"
# Tansu allows a short session timeout, which makes the group join quick.
export PAYCTL_KAFKA_OPTIONS="${PAYCTL_KAFKA_OPTIONS:-session.timeout.ms=1000 heartbeat.interval.ms=250}"

step() { printf '\n== %s\n' "$*"; }

step "accounts (opened once; a second run reuses them)"
for spec in alice:250.00 bob:40.00 carol:0; do
  id=${spec%%:*}
  "$payctl" accounts show "$id" >/dev/null 2>&1 || "$payctl" accounts open "$id" --currency USD --balance "${spec#*:}" >/dev/null
done
"$payctl" accounts list

step "initiate transfers"
"$payctl" transfer initiate --from alice --to bob --amount 12.50
"$payctl" transfer initiate --from bob --to carol --amount 0.10
"$payctl" transfer initiate --from bob --to carol --amount 0.20
"$payctl" transfer initiate --from carol --to alice --amount 1000.00   # insufficient funds: rejected when processed

step "process them (a batch job: stop after 3 s without input)"
"$payctl" transfer process --until-idle 3

step "balances"
"$payctl" accounts list

step "latest transfers"
"$payctl" transfer list --limit 8

step "notifications from the outcome events (and a rate watcher)"
"$payctl" notify watch --user carol --pair USD/EUR
"$payctl" rates set USD EUR 0.9215 >/dev/null
"$payctl" notify consume --until-idle 3
"$payctl" notify list --user carol --limit 5

step "rates and an exact conversion (direct, inverse, cross via USD)"
"$payctl" rates set USD JPY 151.37 >/dev/null
"$payctl" rates list
"$payctl" rates convert 100 USD EUR
"$payctl" rates convert 100 EUR JPY

step "subscription payments: submit, save, process, notify"
for user in dora dora erik; do
  "$payctl" payments submit --user "$user" --plan premium --amount 9.99 >/dev/null || true   # exit 1 when already subscribed
done
"$payctl" payments save --until-idle 3 >/dev/null
"$payctl" payments process --seed 7
"$payctl" notify consume --until-idle 3 >/dev/null
"$payctl" payments stats
