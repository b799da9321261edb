#!/usr/bin/env bash
# Prints payctl's throughput figures on this machine, against the local
# stack (broker and Redis on the same cores). Figures, not assertions:
# machines here are shared and noisy.
#
#   scripts/bench.sh [TRANSFERS]     (default 100000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

n="${1:-100000}"
scripts/build-deps.sh
scripts/stack.sh up
cargo build --release --quiet
payctl="$PWD/target/release/payctl"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/14}"
export PAYCTL_KAFKA_OPTIONS="session.timeout.ms=1000 heartbeat.interval.ms=250"
run="bench-$(date +%s)-$$"
export PAYCTL_TOPIC_TRANSFERS="$run-transfers" PAYCTL_TOPIC_TRANSACTIONS="$run-transactions"
"$payctl" -q topics create "$PAYCTL_TOPIC_TRANSFERS" "$PAYCTL_TOPIC_TRANSFERS.dlq" "$PAYCTL_TOPIC_TRANSACTIONS" "$PAYCTL_TOPIC_TRANSACTIONS.dlq" rate_changes rate_changes.dlq --partitions 3 >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
accounts=1000
for i in $(seq 1 "$accounts"); do
  "$payctl" -q accounts open "$run-a$i" --currency USD --balance 1000000.00 >/dev/null &
  (( i % 50 == 0 )) && wait
done
wait
python3 - "$run" "$accounts" "$n" >"$work/batch.jsonl" <<'PY'
import random, sys
run, accounts, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
for _ in range(n):
    a, b = rnd.sample(range(1, accounts + 1), 2)
    print('{"from":"%s-a%d","to":"%s-a%d","amount":"%d.%02d"}' % (run, a, run, b, rnd.randint(0, 99), rnd.randint(1, 99)))
PY

field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== transfer initiate --file ($n transfers, $accounts accounts)"
"$payctl" -q transfer initiate --file "$work/batch.jsonl" --output json | tee "$work/initiate.json" | field '["per_second"]' | sed 's/^/   per second: /'

echo "== transfer process (with balances)"
/usr/bin/time -f "%M" -o "$work/rss" "$payctl" -q transfer process --group "$run" --until-idle 3 --output json ${BENCH_PROCESS_ARGS:-} >"$work/process.json"
python3 - "$work/process.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"   processed: {s['processed']}  outcomes: {s['outcomes']}")
print(f"   per second (active): {s['processed'] * 1000 / max(s['active_ms'], 1):.0f}")
PY
echo "   max RSS: $(( $(cat "$work/rss") / 1024 )) MB"

echo "== notify consume (the outcome events of those transfers)"
/usr/bin/time -f "%M" -o "$work/rss-notify" "$payctl" -q notify consume --group "$run-notify" --until-idle 3 --output json >"$work/notify.json"
python3 - "$work/notify.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"   processed: {s['processed']}  outcomes: {s['outcomes']}")
print(f"   per second (active): {s['processed'] * 1000 / max(s['active_ms'], 1):.0f}")
PY
echo "   max RSS: $(( $(cat "$work/rss-notify") / 1024 )) MB"

echo "== one transfer initiate from the shell (20 runs)"
python3 - "$payctl" "$run" <<'PY'
import subprocess, sys, time
payctl, run = sys.argv[1], sys.argv[2]
walls = []
for _ in range(20):
    t = time.perf_counter()
    subprocess.run([payctl, "transfer", "initiate", "--from", f"{run}-a1", "--to", f"{run}-a2", "--amount", "0.01"],
                   check=True, stdout=subprocess.DEVNULL)
    walls.append((time.perf_counter() - t) * 1000)
walls.sort()
print(f"   wall ms: median {walls[len(walls)//2]:.1f}, best {walls[0]:.1f}, worst {walls[-1]:.1f}")
PY

echo "== sum of balances (must not change)"
python3 - "$run" "$accounts" <<'PY'
import subprocess, sys
run, accounts = sys.argv[1], int(sys.argv[2])
out = subprocess.run(["redis-cli", "-u", __import__("os").environ["REDIS_URL"], "--no-raw", "eval",
    "local s=0 for i=1,tonumber(ARGV[2]) do s=s+tonumber(redis.call('HGET','account:'..ARGV[1]..'-a'..i,'balance')) end return tostring(s)",
    "0", run, str(accounts)], capture_output=True, text=True, check=True).stdout.strip()
print(f"   total minor units: {out.strip(chr(34))} (expected {accounts * 100000000})")
PY
