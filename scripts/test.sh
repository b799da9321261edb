#!/usr/bin/env bash
# Runs every test: installs the build's system packages if missing
# (scripts/build-deps.sh), brings the local stack up (installing Redis and Tansu if
# missing) with a Redis Cluster beside the single Redis, then the unit and integration tests against it,
# then (for the whole run, without arguments) the fault suite again with every scenario on a Redis Cluster of its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
scripts/stack.sh up
# And a 3-master Redis Cluster beside it, for tests/cluster.rs.
scripts/stack.sh up --redis-cluster
cluster_base="${REDIS_CLUSTER_PORT:-7001}"
export PAYCTL_TEST_REDIS_CLUSTER="${PAYCTL_TEST_REDIS_CLUSTER:-redis+cluster://127.0.0.1:$cluster_base,127.0.0.1:$((cluster_base + 1)),127.0.0.1:$((cluster_base + 2))}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
# Tests use their own database, so the demo in database 0 stays readable.
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/15}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The dev profile (overflow checks and debug assertions on), the one
# scripts/demo.sh builds: after the demo, only the tests, the examples and
# the test-only crates are compiled. The examples are built first, as a
# user builds them: tests/examples.rs runs each one against the stack.
set +e
cargo build --examples 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
cargo test --lib --bins --tests --no-fail-fast "$@" 2>&1 | tee -a "$log"
test_rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] || rc=$test_rc
if [ "$#" -eq 0 ]; then
  # The crate docs' example (`cargo doc` opens with it) compiles.
  cargo test --doc 2>&1 | tee -a "$log"
  doc_rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] || rc=$doc_rc
fi
# The whole run (no arguments, as CI runs it) ends with fault scenarios
# once more, each on a private Redis Cluster instead of a single Redis, at
# the same scale (tests/faults.rs's default) and with the same build as
# above: kill_9 (workers killed -9 while the saga's steps and notify's
# per-slot offsets are half done), outage (every master killed -9 and
# restarted under load) and hostile_input (every topic's hostile bytes,
# payments saved per slot), the faults that reach code only a cluster
# runs; together about two and a half minutes here. Left to
# `PAYCTL_FAULTS_REDIS=cluster scripts/faults.sh`: rebalance and sigterm (a
# redelivered or stopped batch meets the same saga markers as kill_9's);
# cluster_master_kill ran on a cluster above.
if [ "$#" -eq 0 ]; then
  PAYCTL_FAULTS_REDIS=cluster cargo test --test faults -- --test-threads=1 --exact kill_9 outage hostile_input 2>&1 | tee -a "$log"
  faults_rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] || rc=$faults_rc
fi
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$rc"
