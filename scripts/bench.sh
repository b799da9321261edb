#!/usr/bin/env bash
# Prints payctl's speed on this machine against the design's targets, as
# one table (see scripts/bench.py for what each row measures and how).
# Runs against the local stack: broker and Redis on the same cores.
# Figures, not assertions: machines here are shared and noisy.
#
#   scripts/bench.sh            # 1,000,000 transfers, 60 s of steady load (5-7 min)
#   scripts/bench.sh --quick    # 10x smaller, for a CI-like time
#   scripts/bench.sh --transfers 200000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
scripts/stack.sh up >/dev/null
cargo build --release
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/14}"
export PAYCTL_KAFKA_OPTIONS="session.timeout.ms=1000 heartbeat.interval.ms=250"
unset PAYCTL_PROFILE
run="bench-$(date +%s)"
export BENCH_RUN="$run"
export PAYCTL_TOPIC_TRANSFERS="$run-transfers" PAYCTL_TOPIC_TRANSACTIONS="$run-transactions"
export PAYCTL_TOPIC_PAYMENTS="$run-payments" PAYCTL_TOPIC_RATE_CHANGES="$run-rate-changes"
target/release/payctl -q topics create --partitions 3 \
  "$PAYCTL_TOPIC_TRANSFERS" "$PAYCTL_TOPIC_TRANSFERS.dlq" \
  "$PAYCTL_TOPIC_TRANSACTIONS" "$PAYCTL_TOPIC_TRANSACTIONS.dlq" \
  "$PAYCTL_TOPIC_PAYMENTS" "$PAYCTL_TOPIC_PAYMENTS.dlq" \
  "$PAYCTL_TOPIC_RATE_CHANGES" "$PAYCTL_TOPIC_RATE_CHANGES.dlq" >/dev/null
# The bench's database starts empty, so Redis memory and scans are its own.
redis-cli -u "$REDIS_URL" flushdb >/dev/null
exec python3 scripts/bench.py "$@"
