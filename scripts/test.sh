#!/usr/bin/env bash
# Runs every test: brings the local stack up (installing Redis and Tansu if
# missing), then the unit and integration tests against it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
# Tests use their own database, so the demo in database 0 stays readable.
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/15}"
cargo test --all-targets "$@"
