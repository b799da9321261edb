#!/usr/bin/env bash
# The fault suite at scale: every scenario of tests/faults.rs (kill -9,
# rebalance, outage, hostile input, SIGTERM, and a master of a Redis Cluster
# killed under transfers across slots), release build, each scenario on a
# private stack of its own (scripts/stack.sh on free ports; the stack on
# 6379/9092 and the cluster on 7001-7003 are left alone).
#
#   scripts/faults.sh                 # every scenario, 100,000 transfers each
#   scripts/faults.sh kill_9 sigterm  # only these (names as in tests/faults.rs)
#   scripts/faults.sh cluster_master_kill   # the Redis Cluster scenario (a tenth of the scale)
#   PAYCTL_FAULT_SCALE=20000 scripts/faults.sh
#   PAYCTL_FAULT_SEED=123456 scripts/faults.sh   # repeat a run's random choices
#   PAYCTL_FAULTS_REDIS=cluster scripts/faults.sh  # every scenario on a Redis Cluster
#
# PAYCTL_FAULTS_REDIS picks the Redis each scenario's private stack runs:
# `single` (the default) or `cluster`, a 3-master Redis Cluster that payctl
# reaches through a redis+cluster:// URL, with the same checks (the outage
# then kills every master). cluster_master_kill runs on a cluster either way.
#
# Prints one line of figures per scenario, then each broken promise with a
# few example ids, and exits non-zero if any promise broke. The whole
# output (cargo's, payctl's panics) goes to a log file named at the end; a
# failed scenario keeps its stack directory (worker logs) under
# ${TMPDIR:-/tmp}/payctl-faults/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PAYCTL_FAULT_SCALE="${PAYCTL_FAULT_SCALE:-100000}"
export PAYCTL_FAULTS_REDIS="${PAYCTL_FAULTS_REDIS:-single}"
case "$PAYCTL_FAULTS_REDIS" in
  single|cluster) ;;
  *) echo "faults: PAYCTL_FAULTS_REDIS must be single or cluster, not '$PAYCTL_FAULTS_REDIS'" >&2; exit 2 ;;
esac
log=$(mktemp "${TMPDIR:-/tmp}/payctl-faults.XXXXXX")

scripts/build-deps.sh
echo "faults: building (release) and running with PAYCTL_FAULT_SCALE=$PAYCTL_FAULT_SCALE on a $PAYCTL_FAULTS_REDIS Redis; full output in $log" >&2
set +e
cargo test --release --test faults -- --test-threads=1 --nocapture "$@" 2>&1 \
  | tee "$log" \
  | sed -un 's/^.*\[faults\] //p'
status=${PIPESTATUS[0]}
set -e

if [ "$status" -ne 0 ]; then
  # Failures the scenarios did not describe themselves (setup, a harness
  # panic), and where their logs are.
  awk '/panicked at/ { at = $0; getline; if ($0 !~ /: broken: /) { print at; print "  " $0 } }
       /worker logs kept in/ { print }' "$log" >&2
  if ! grep -q '^test result:' "$log"; then
    echo "faults: the suite did not run to the end; last lines of $log:" >&2
    tail -n 20 "$log" >&2
  fi
  echo "faults: FAILED (exit $status); full output in $log" >&2
  exit "$status"
fi
echo "faults: every promise held; full output in $log" >&2
