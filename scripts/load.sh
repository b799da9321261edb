#!/usr/bin/env bash
# Load and abuse for `payctl serve`, measured (figures, not assertions):
# starts the local stack and a server on a free port, runs scripts/load.py
# against it, then stops the server with SIGTERM and reports its exit.
#
#   scripts/load.sh                 # 200 requests/s offered for 30 s
#   scripts/load.sh --rate 500 --seconds 10
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
scripts/stack.sh up >/dev/null
cargo build --release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export REDIS_URL="${LOAD_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/13}"
unset PAYCTL_PROFILE
target/release/payctl -q serve --listen "127.0.0.1:$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz')" 2>/dev/null && break
  sleep 0.1
done
python3 scripts/load.py --url "http://127.0.0.1:$port" "$@"
kill -TERM "$server"
set +e
wait "$server"
echo "== payctl serve exited $? after SIGTERM"
