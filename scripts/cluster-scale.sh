#!/usr/bin/env bash
# Scale-out on a Redis Cluster, measured (figures, not assertions): the same
# transfers over 6 partitions processed by 1, 2 and 3 `transfer process`
# workers against the local 3-master cluster (scripts/stack.sh up
# --redis-cluster), with each master's commands counted (INFO commandstats).
#
#   scripts/cluster-scale.sh                  # 20,000 transfers over 200 accounts per run
#   TRANSFERS=50000 ACCOUNTS=1000 scripts/cluster-scale.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

transfers="${TRANSFERS:-20000}"
accounts="${ACCOUNTS:-200}"
base="${REDIS_CLUSTER_PORT:-7001}"
ports=("$base" "$((base + 1))" "$((base + 2))")

scripts/build-deps.sh
scripts/stack.sh up --redis-cluster >/dev/null
cargo build --release
payctl=target/release/payctl
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export REDIS_URL="redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
unset PAYCTL_PROFILE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Calls of every command on one master since the last CONFIG RESETSTAT.
calls() { redis-cli -p "$1" info commandstats | sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{ s += $1 } END { print s + 0 }'; }
keys_on() { redis-cli -p "$1" dbsize; }

echo "== $transfers transfers over $accounts accounts, 6 partitions, 3 masters (127.0.0.1:${ports[0]}-${ports[2]})"
printf '%-8s %12s %12s %10s   %s\n' workers transfers/s "active s" "ops/xfer" "calls per master (share)"
for workers in 1 2 3; do
  run="scale-$workers-$RANDOM"
  export PAYCTL_TOPIC_TRANSFERS="$run-transfers" PAYCTL_TOPIC_TRANSACTIONS="$run-events"
  "$payctl" -q topics create "$run-transfers" "$run-transfers.dlq" "$run-events" "$run-events.dlq" --partitions 6 >/dev/null
  for i in $(seq 1 "$accounts"); do echo "$run-a$i"; done \
    | xargs -P 8 -I{} "$payctl" -q accounts open {} --balance 1000000.00 >/dev/null
  python3 - "$run" "$accounts" "$transfers" >"$work/$run.csv" <<'PY'
import csv, random, sys
run, accounts, transfers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
out = csv.writer(sys.stdout)
out.writerow(["from", "to", "amount"])
for _ in range(transfers):
    a, b = rng.sample(range(1, accounts + 1), 2)
    out.writerow([f"{run}-a{a}", f"{run}-a{b}", f"{rng.randint(1, 5000) / 100:.2f}"])
PY
  "$payctl" -q transfer initiate --file "$work/$run.csv" >/dev/null
  for p in "${ports[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  for w in $(seq 1 "$workers"); do
    "$payctl" transfer process --group "$run" --until-idle 3 --output json >"$work/$run.$w.json" 2>"$work/$run.$w.err" &
  done
  wait
  python3 - "$work" "$run" "$workers" "$transfers" "$(calls "${ports[0]}")" "$(calls "${ports[1]}")" "$(calls "${ports[2]}")" <<'PY'
import json, sys
work, run, workers, transfers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
calls = [int(c) for c in sys.argv[5:8]]
summaries = [json.load(open(f"{work}/{run}.{w}.json")) for w in range(1, workers + 1)]
processed = sum(s["processed"] for s in summaries)
active = max(s["active_ms"] for s in summaries) / 1000
total = sum(calls)
shares = "  ".join(f"{c:,} ({c / total:.0%})" for c in calls)
print(f"{workers:<8} {processed / active:12,.0f} {active:12.2f} {total / max(processed, 1):10.1f}   {shares}")
if processed != transfers:
    print(f"   processed {processed} of {transfers}")
PY
done
echo "== keys per master: $(for p in "${ports[@]}"; do printf '%s ' "$(keys_on "$p")"; done)"
