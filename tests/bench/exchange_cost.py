"""Token exchange at scale: IdP calls for many users, and what a cache hit costs.

Starts the MCP and backend authorization servers and one Envoy (2 workers,
direct_response upstream) with two listeners: validation only, and validation
plus exchange. Then:
  1. USERS users x REQS requests each, CONCURRENCY at a time, through the
     exchange listener; counts the exchanges the backend AS handled.
  2. One user's token, N requests on one keep-alive connection to each
     listener, alternating A B rounds: the cache-hit path against validation
     only.
Prints markdown tables. A measurement, not a test.

Usage: .venv/bin/python tests/bench/exchange_cost.py [USERS] [REQS] [N] [ROUNDS]
"""

import http.client
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import SECRET_ENV, authorization_servers, pct, timed
from constants import MCP_SCOPE
from harness import WASM, Cleanup, Envoy, free_port
from stacks import clients_for

N = 2000
ROUNDS = 3
CONCURRENCY = 32


def idp_calls(users=100, reqs=100):
    """Exchange calls the backend AS gets for `users` x `reqs` requests through
    Envoy with 2 workers; returns (calls, requests, seconds)."""
    cleanup = Cleanup()
    try:
        return _measure(cleanup, users, reqs, latency=False)[0]
    finally:
        cleanup.close()


def _measure(cleanup, USERS, REQS, latency=True):
    """Starts both ASes and Envoy (2 workers); measures IdP calls for USERS x
    REQS requests and, with `latency`, the cache-hit path against validation only."""
    validate_port, exchange_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{validate_port}/mcp"
    users = [f"u{i:03d}" for i in range(USERS)]
    mcp, backend_as, oidc, exchange, secret = authorization_servers(
        cleanup, resource, clients_for(*users))
    clusters = {f"outbound|{p}||127.0.0.1": p for p in (mcp.port, backend_as.port)}
    Envoy(cleanup, 1, {"oidc": oidc}, clusters, port=validate_port, concurrency=2, direct_response=True,
          log_level="warning", extra_listeners=[(exchange_port, exchange)],
          env={SECRET_ENV: secret}).wait_ready()
    tokens = {u: mcp.token(u, f"{u}-secret", resource, MCP_SCOPE) for u in users}

    # 1. IdP calls for USERS x REQS.
    jobs = [u for _ in range(REQS) for u in users]

    def worker(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", exchange_port)
        for u in chunk:
            timed(conn, tokens[u])

    t0 = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(worker, [jobs[i::CONCURRENCY] for i in range(CONCURRENCY)]))
    elapsed = time.monotonic() - t0
    calls = backend_as.exchanges()
    if not latency:
        return (calls, len(jobs), elapsed), None
    print(f"## IdP exchange calls, Envoy 2 workers, {CONCURRENCY} concurrent clients\n")
    print("| users | requests each | requests | exchange calls | calls per user | wall time |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {USERS} | {REQS} | {len(jobs)} | {calls} | {calls / USERS:.2f} | {elapsed:.1f} s |\n")

    # 2. Cache-hit path against validation only, one keep-alive connection each.
    token = tokens[users[0]]
    a = http.client.HTTPConnection("127.0.0.1", validate_port)
    b = http.client.HTTPConnection("127.0.0.1", exchange_port)
    for _ in range(200):
        timed(a, token)
        timed(b, token)
    va, vb = [], []
    for _ in range(ROUNDS):
        va += [timed(a, token) for _ in range(N)]
        vb += [timed(b, token) for _ in range(N)]
    print(f"## One user's repeated token, {N * ROUNDS} requests per path (A B rounds), µs per request\n")
    print("| path | p50 | p90 | p99 | mean |")
    print("|---|---:|---:|---:|---:|")
    for name, xs in (("validation only (verified-token cache)", va),
                     ("validation + exchange, cache hit", vb)):
        print(f"| {name} | {pct(xs, 50):.0f} | {pct(xs, 90):.0f} | {pct(xs, 99):.0f} | {statistics.mean(xs):.0f} |")
    print(f"\nA cache hit adds {pct(vb, 50) - pct(va, 50):.0f} µs at p50 "
          f"({statistics.mean(vb) - statistics.mean(va):.0f} µs mean) over validation only; "
          f"exchange calls during part 2: {backend_as.exchanges() - calls}.")
    return (calls, len(jobs), elapsed), None


def main():
    global N, ROUNDS
    assert WASM.exists(), "run tests/bootstrap.sh first"
    argv = [int(a) for a in sys.argv[1:]]
    users, reqs, N, ROUNDS = (argv + [100, 100, 2000, 3][len(argv):])[:4]
    cleanup = Cleanup()
    try:
        _measure(cleanup, users, reqs)
    finally:
        cleanup.close()


if __name__ == "__main__":
    main()
