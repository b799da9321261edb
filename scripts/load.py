#!/usr/bin/env python3
"""Drives `payctl serve` with a real HTTP client (Python's http.client,
keep-alive, one connection per worker thread): POST /transactions at a
fixed offered rate for a while, then 1,000 concurrent connections, then
malformed requests. Prints figures; asserts nothing about speed.

    scripts/load.py --url http://127.0.0.1:8080 --rate 200 --seconds 30
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor


def connection(base):
    url = urllib.parse.urlsplit(base)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=30)


local = threading.local()


def call(base, method, path, body=None, headers=None):
    """(status, seconds, parsed body) on this thread's kept-alive connection;
    a connection the server closed (after a 413, say) is opened again once."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    for attempt in range(2):
        if getattr(local, "conn", None) is None:
            local.conn = connection(base)
        sent = time.perf_counter()
        try:
            local.conn.request(method, path, body=data,
                               headers={"content-type": "application/json", **(headers or {})})
            response = local.conn.getresponse()
            raw = response.read()
            status = response.status
            break
        except (OSError, http.client.HTTPException):
            local.conn.close()
            local.conn = None
            if attempt == 1:
                return 0, time.perf_counter() - sent, None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, time.perf_counter() - sent, parsed


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--rate", type=int, default=200, help="requests offered per second")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    alice, bob = f"load-{run}-a", f"load-{run}-b"
    for account in (alice, bob):
        status, _, body = call(args.url, "POST", "/accounts",
                               {"id": account, "currency": "USD", "balance": "1000000.00"})
        assert status == 201, (status, body)

    total = args.rate * args.seconds
    statuses, latencies, late = {}, [], []
    lock = threading.Lock()
    started = time.perf_counter()

    def one(i):
        due = started + i / args.rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        lag = time.perf_counter() - due
        amount = f"{(i % 100) + 1}.{i % 100:02d}"
        status, seconds, _ = call(args.url, "POST", "/transactions",
                                  {"sender": alice, "receiver": bob, "amount": amount},
                                  {"Idempotency-Key": f"{run}-{i}"})
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(seconds)
            late.append(lag)

    print(f"== POST /transactions: {args.rate}/s offered for {args.seconds} s "
          f"({total} requests, {args.threads} keep-alive connections)", flush=True)
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - started
    ok = statuses.get(201, 0)
    print(f"   statuses {dict(sorted(statuses.items()))}")
    print(f"   throughput {ok / elapsed:,.0f} created/s over {elapsed:.1f} s")
    print(f"   latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    print(f"   client fell behind the offered rate by p99 {percentile(late, 0.99) * 1000:.1f} ms")

    print(f"== {args.connections} concurrent connections, one GET /healthz each", flush=True)
    barrier = threading.Barrier(args.connections, timeout=60)
    results = []

    def hold(_):
        conn = connection(args.url)
        try:
            conn.connect()
            barrier.wait()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            results.append(response.status)
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
            results.append(type(e).__name__)
        finally:
            conn.close()

    with ThreadPoolExecutor(args.connections) as pool:
        list(pool.map(hold, range(args.connections)))
    counts = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    print(f"   answers {counts}")

    print("== abuse: each gets its status, none crashes the server", flush=True)
    local.conn = None
    for name, body, expected in [
        ("malformed JSON", b"{not json", 400),
        ("wrong type", {"sender": alice, "receiver": bob, "amount": True}, 400),
        ("comma amount", {"sender": alice, "receiver": bob, "amount": "1,000.00"}, 400),
        ("unknown account", {"sender": alice, "receiver": "nobody-" + run, "amount": "1"}, 400),
        ("200 KB body", b" " * (200 * 1024), 413),
        # The server answers 413 without reading 10 MB and closes; the
        # client may see the reset before the answer (status 0).
        ("10 MB body", b" " * (10 * 1024 * 1024), 413),
    ]:
        status, _, body_back = call(args.url, "POST", "/transactions", body)
        code = (body_back or {}).get("error", {}).get("code")
        fine = status == expected or (status == 0 and expected == 413)
        print(f"   {name}: {status} {code} ({'as expected' if fine else 'UNEXPECTED'})")
    status, _, _ = call(args.url, "GET", "/transactions/no-such-id")
    print(f"   unknown id: {status}")
    status, _, ready = call(args.url, "GET", "/readyz")
    print(f"   afterwards /readyz: {status} {ready}")

    print("== money", flush=True)
    for account in (alice, bob):
        status, _, body = call(args.url, "GET", f"/accounts/{account}")
        print(f"   {account}: {body.get('balance') if body else status} "
              "(initiate records and publishes; balances move in transfer process)")


if __name__ == "__main__":
    main()
