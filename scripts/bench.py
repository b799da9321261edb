#!/usr/bin/env python3
"""payctl's speed on this machine, against the design's targets.

Called by scripts/bench.sh once the stack is up and the release binary is
built. Runs every phase against the local broker and Redis (on the same
cores as payctl) and prints one table: each figure, its target, met or not,
and the CPU time payctl, Redis and the broker spent per message in that
phase. Figures, not assertions: machines here are shared and noisy.

Clocks: throughput and CPU come from this script (time.perf_counter, and
the kernel's rusage for payctl, /proc/<pid>/stat for Redis and the broker).
End-to-end latency comes from the records themselves: a transfer's
`created_at` (written by `transfer initiate`), its `updated_at` (written by
`transfer process`) and its notifications' `created_at` (written by `notify
consume`), all in milliseconds of the same machine's realtime clock
(SystemTime in payctl), so they are comparable.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYCTL = os.path.join(ROOT, "target", "release", "payctl")
STATE = os.path.join(ROOT, ".stack")
TICK = os.sysconf("SC_CLK_TCK")

# What the Python services payctl replaces did, measured on this kind of machine
# (DESIGN.md, "Speed we are building for"), for the "x Python" column.
PYTHON = {"notify": 5000, "initiate": 1500, "process": 2800}


def pid_cpu(pidfile):
    """CPU seconds (user + system) a stack server has used, or None."""
    try:
        pid = open(os.path.join(STATE, pidfile)).read().strip()
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


class Phase:
    """CPU that Redis and the broker spend while a phase runs."""

    def __init__(self):
        self.redis0, self.broker0 = pid_cpu("redis.pid"), pid_cpu("tansu.pid")
        self.started = time.perf_counter()

    def end(self):
        self.wall = time.perf_counter() - self.started
        r, b = pid_cpu("redis.pid"), pid_cpu("tansu.pid")
        self.redis = None if r is None or self.redis0 is None else r - self.redis0
        self.broker = None if b is None or self.broker0 is None else b - self.broker0
        return self


def spawn(args, stdin=None):
    return subprocess.Popen([PAYCTL, *args], stdout=subprocess.PIPE, stdin=stdin, text=True)


def reap(proc):
    """Waits for a payctl; returns (stdout, cpu seconds, peak RSS in MB)."""
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: payctl {' '.join(proc.args[1:])} exited {proc.returncode}")
    return out, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def payctl(*args):
    return reap(spawn(list(args)))


def redis_cli(*args, stdin=None):
    return subprocess.run(["redis-cli", "-u", os.environ["REDIS_URL"], *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout


class Table:
    def __init__(self):
        self.rows = []

    def add(self, what, measured, target, met, phase=None, count=None, cpu=None, note=""):
        per = lambda s: "-" if s is None or not count else f"{s * 1e6 / count:.1f}"
        self.rows.append([what, measured, target, "yes" if met else "NO",
                          per(cpu), per(phase and phase.redis), per(phase and phase.broker), note])
        print(f"   {what}: {measured} (target {target})", flush=True)

    def print(self):
        head = ["what", "measured", "target", "met", "payctl µs/msg", "redis µs/msg",
                "broker µs/msg", "notes"]
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(len(head))]
        line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
        print()
        print(line(head))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print(line(r))


def open_accounts(prefix, count):
    procs = []
    for i in range(1, count + 1):
        procs.append(spawn(["-q", "accounts", "open", f"{prefix}{i}", "--currency", "USD",
                            "--balance", "1000000.00"]))
        if len(procs) == 50:
            for p in procs:
                reap(p)
            procs = []
    for p in procs:
        reap(p)


def write_rows(path, prefix, accounts, n, seed):
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rnd.sample(range(1, accounts + 1), 2)
            f.write('{"from":"%s%d","to":"%s%d","amount":"%d.%02d"}\n'
                    % (prefix, a, prefix, b, rnd.randint(0, 99), rnd.randint(1, 99)))


def worker_rate(summary):
    s = json.loads(summary)
    return s["processed"], s["processed"] * 1000 / max(s["active_ms"], 1)


def millis(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 10x smaller run")
    ap.add_argument("--transfers", type=int, help="rows for the bulk phases")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    n = args.transfers or 1_000_000 // scale
    e2e_seconds = 60 // scale
    e2e_rate = 5000
    accounts = 1000
    run = os.environ["BENCH_RUN"]
    work = tempfile.mkdtemp(prefix="payctl-bench-")
    table = Table()
    print(f"== bench {run}: {n} transfers over {accounts} accounts"
          f"{' (quick)' if args.quick else ''}", flush=True)

    open_accounts(f"{run}-a", accounts)
    rows = os.path.join(work, "rows.jsonl")
    write_rows(rows, f"{run}-a", accounts, n, 7)

    print("== transfer initiate --file", flush=True)
    phase = Phase()
    out, cpu, rss = payctl("-q", "transfer", "initiate", "--file", rows, "--output", "json")
    phase.end()
    s = json.loads(out)
    rate = s["per_second"]
    table.add(f"initiate --file, {n:,} rows", f"{rate:,}/s", ">= 100,000/s", rate >= 100_000,
              phase, n, cpu, f"{rate / PYTHON['initiate']:.0f}x Python")
    table.add("initiate --file, peak RSS", f"{rss:.0f} MB", "<= 64 MB", rss <= 64)

    worker_rss = []
    print("== transfer process (with balances)", flush=True)
    phase = Phase()
    out, cpu, rss = payctl("-q", "transfer", "process", "--group", run, "--until-idle", "2",
                           "--output", "json")
    phase.end()
    done, rate = worker_rate(out)
    worker_rss.append(("transfer process", rss))
    table.add(f"transfer process, {accounts:,} accounts", f"{rate:,.0f}/s", ">= 100,000/s",
              rate >= 100_000, phase, done, cpu, f"{rate / PYTHON['process']:.0f}x Python")

    print("== notify consume", flush=True)
    phase = Phase()
    out, cpu, rss = payctl("-q", "notify", "consume", "--group", f"{run}-notify",
                           "--until-idle", "2", "--output", "json")
    phase.end()
    done, rate = worker_rate(out)
    worker_rss.append(("notify consume", rss))
    table.add(f"notify consume, {accounts:,} users", f"{rate:,.0f}/s", ">= 250,000/s",
              rate >= 250_000, phase, done, cpu, f"{rate / PYTHON['notify']:.0f}x Python")

    payments(table, run, n // 10, work, worker_rss)

    print("== one transfer initiate from the shell (20 runs)", flush=True)
    walls, peak = [], 0
    for _ in range(20):
        t = time.perf_counter()
        _, _, rss = payctl("-q", "transfer", "initiate", "--from", f"{run}-a1", "--to",
                           f"{run}-a2", "--amount", "0.01")
        walls.append((time.perf_counter() - t) * 1000)
        peak = max(peak, rss)
    walls.sort()
    median = walls[len(walls) // 2]
    table.add("one transfer initiate, median wall", f"{median:.1f} ms", "<= 5 ms", median <= 5,
              note=f"best {walls[0]:.1f}, worst {walls[-1]:.1f}")
    table.add("one transfer initiate, peak RSS", f"{peak:.0f} MB", "<= 15 MB", peak <= 15)

    end_to_end(table, run, work, e2e_rate, e2e_seconds, accounts, worker_rss)

    for name, rss in worker_rss:
        table.add(f"worker peak RSS, {name}", f"{rss:.0f} MB", "<= 40 MB", rss <= 40)

    print("== sum of balances (must not change)", flush=True)
    for prefix in (f"{run}-a", f"{run}-e"):
        total = redis_cli("--no-raw", "eval",
                          "local s=0 for i=1,tonumber(ARGV[2]) do s=s+tonumber(redis.call('HGET',"
                          "'account:'..ARGV[1]..i,'balance')) end return tostring(s)",
                          "0", prefix, str(accounts)).strip().strip('"')
        expected = accounts * 100_000_000
        table.add(f"sum of balances, {prefix}*", total, str(expected), int(total) == expected)
    table.print()


def payments(table, run, n, work, worker_rss):
    """`payments save` and `payments process` (simulator, no latency): n
    requests over n/5 users, so most users have several (the latest is
    processed, the rest duplicated)."""
    users = max(n // 5, 1)
    rnd = random.Random(11)
    path = os.path.join(work, "payments.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"payment_id": f"{run}-p{i}",
                                "user_id": f"{run}-u{rnd.randrange(users)}",
                                "plan": "premium", "amount": "9.99", "currency": "USD",
                                "kind": "payment", "requested_ms": 1_750_000_000_000 + i}) + "\n")
    topic = os.environ["PAYCTL_TOPIC_PAYMENTS"]
    payctl("-q", "topics", "produce", topic, "--file", path, "--key-field", "user_id")

    print("== payments save", flush=True)
    phase = Phase()
    out, cpu, rss = payctl("-q", "payments", "save", "--group", f"{run}-save", "--until-idle", "2",
                           "--output", "json")
    phase.end()
    done, rate = worker_rate(out)
    worker_rss.append(("payments save", rss))
    table.add(f"payments save, {n:,}", f"{rate:,.0f}/s", ">= 100,000/s", rate >= 100_000,
              phase, done, cpu)

    print("== payments process (simulator, no latency)", flush=True)
    phase = Phase()
    out, cpu, rss = payctl("-q", "payments", "process", "--latency-ms", "0", "--output", "json")
    phase.end()
    s = json.loads(out)
    rate = n * 1000 / max(s["elapsed_ms"], 1)
    table.add(f"payments process, {n:,}", f"{rate:,.0f}/s", ">= 100,000/s", rate >= 100_000,
              phase, n, cpu, f"{s['claimed']:,} sent, {s['duplicated']:,} duplicated; RSS {rss:.0f} MB")


def end_to_end(table, run, work, rate, seconds, accounts, worker_rss):
    """Initiate at a steady rate while both workers run; latency from the records."""
    print(f"== end to end: {rate}/s offered for {seconds} s", flush=True)
    prefix = f"{run}-e"
    open_accounts(prefix, accounts)
    rows = os.path.join(work, "steady.jsonl")
    count = rate * seconds
    write_rows(rows, prefix, accounts, count, 13)
    env_topics = {"PAYCTL_TOPIC_TRANSFERS": f"{run}-e2e-transfers",
                  "PAYCTL_TOPIC_TRANSACTIONS": f"{run}-e2e-transactions"}
    os.environ.update(env_topics)
    payctl("-q", "topics", "create", *env_topics.values(),
           *(t + ".dlq" for t in env_topics.values()), "--partitions", "3")
    process = spawn(["-q", "transfer", "process", "--group", f"{run}-e2e", "--output", "json"])
    notify = spawn(["-q", "notify", "consume", "--group", f"{run}-e2e-notify", "--output", "json"])
    lists = [f"notifications:{prefix}{i}" for i in range(1, accounts + 1)]
    # Warm up: one transfer through both workers, so that the measured
    # window starts with both in their groups (not counted: it is older).
    warm_up = json.loads(payctl("-q", "transfer", "initiate", "--from", f"{prefix}1", "--to",
                                f"{prefix}2", "--amount", "0.01", "--output", "json")[0])
    warm_up = warm_up["transfer_id"]
    deadline = time.time() + 120
    while redis_cli("LLEN", lists[1]).strip() in ("", "0"):
        if time.time() > deadline:
            sys.exit("bench: the steady-load workers notified nothing within 120 s")
        time.sleep(0.2)
    phase = Phase()
    payctl("-q", "transfer", "initiate", "--file", rows, "--rate", str(rate), "--output", "json")
    deadline = time.time() + 30
    while time.time() < deadline:
        total = sum(int(x) for x in redis_cli(stdin="".join(f"LLEN {k}\n" for k in lists)).split())
        if total >= 2 * count + 2:
            break
        time.sleep(0.5)
    phase.end()
    for proc, name in ((process, "transfer process (steady)"), (notify, "notify consume (steady)")):
        proc.send_signal(signal.SIGTERM)
        _, _, rss = reap(proc)
        worker_rss.append((name, rss))

    notified = {}
    for line in redis_cli("--raw", stdin="".join(f"LRANGE {k} 0 -1\n" for k in lists)).splitlines():
        if not line.startswith("{"):
            continue
        n = json.loads(line)
        transfer = (n.get("event_id") or "").split(":")[0]
        if transfer:
            at = millis(n["created_at"])
            notified[transfer] = max(at, notified.get(transfer, 0))
    ids = list(notified)
    records = redis_cli("--raw", stdin="".join(f"GET transfer:{t}\n" for t in ids)).splitlines()
    to_processed, to_notified = [], []
    for record in records:
        t = json.loads(record)
        created = millis(t["created_at"])
        if t["transfer_id"] == warm_up:
            continue
        to_processed.append(millis(t["updated_at"]) - created)
        to_notified.append(notified[t["transfer_id"]] - created)
    to_processed.sort()
    to_notified.sort()
    if len(to_notified) < count:
        print(f"   only {len(to_notified)} of {count} transfers were notified within 30 s", flush=True)
    p50, p99 = percentile(to_notified, 50), percentile(to_notified, 99)
    note = (f"{len(to_notified):,} transfers; initiated->processed p50 {percentile(to_processed, 50):.0f}"
            f" p99 {percentile(to_processed, 99):.0f} ms")
    table.add(f"end to end at {rate:,}/s, p50", f"{p50:.0f} ms", "<= 20 ms", p50 <= 20, note=note)
    table.add(f"end to end at {rate:,}/s, p99", f"{p99:.0f} ms", "<= 100 ms",
              p99 <= 100 and len(to_notified) >= count, note="initiated -> both parties notified")


if __name__ == "__main__":
    main()
