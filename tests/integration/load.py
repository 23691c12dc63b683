"""Load without leaks: many users, each with their own token from the real
MCP AS, hit Envoy (2 workers) at once; every request carries a marker naming
its user, and the backend checks, on every request, that the exchanged token
it got is that user's. Used by test_load.py (short) and, as a script, for
long runs:

    .venv/bin/python tests/integration/load.py --users 2000 --seconds 60

prints requests, req/s, mismatches, 5xx, IdP exchange calls, cache figures
and Envoy's RSS at start and end.
"""

import argparse
import http.client
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from constants import BACKEND_API, BACKEND_AUDIENCE, BACKEND_SCOPE  # noqa: E402
from harness import Cleanup, call  # noqa: E402
from stacks import Stack, clients_for, mcp_resources  # noqa: E402

MARKER = "x-load-user"


class LoadStack(Stack):
    """The exchange stack with `users` clients, hour-long tokens, a backend
    that checks every request's marker against its token, and `max_entries`
    cache slots."""

    def __init__(self, cleanup, users, max_entries):
        self.users = [f"u{i:05d}" for i in range(users)]
        super().__init__(
            cleanup, prefix="load-", clients=clients_for(*self.users),
            resources=lambda url: mcp_resources(url, ttl=3600), exchange=True,
            backend_as={"resources": {BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE,
                                                    "ttl": 3600}}},
            marker=MARKER, token_exchange={"scopes": None}, sections={"cache": {"maxEntries": max_entries}},
            log_level="warning")
        with ThreadPoolExecutor(8) as pool:
            self.tokens = dict(zip(self.users, pool.map(self.token, self.users)))

    def rss_mib(self):
        for line in Path(f"/proc/{self.envoy.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stat(self, name):
        body = call(self.envoy.admin, f"/stats?filter={name}")[2]
        return sum(int(v) for _, _, v in (l.partition(": ") for l in body.splitlines()) if v.strip().isdigit())


def run(port, tokens, seconds=None, concurrency=32, stop=None, path_of=lambda user: "/mcp", timeout=30):
    """Hammers Envoy's `port` with random users' requests (`tokens`: user ->
    token; `path_of(user)`: where the user goes) for `seconds`, or until
    `stop` (a threading.Event) is set. A request unanswered after `timeout`
    seconds counts as a timeout, a connection error as a 5xx."""
    stop = stop or threading.Event()
    timer = threading.Timer(seconds, stop.set) if seconds is not None else None
    users = list(tokens)
    counts = {"requests": 0, "5xx": 0, "other": 0, "timeouts": 0}
    lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        local = dict.fromkeys(counts, 0)
        while not stop.is_set():
            user = rng.choice(users)
            try:
                conn.request("GET", path_of(user), headers={"authorization": f"Bearer {tokens[user]}", MARKER: user})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                status = "timeout" if isinstance(e, TimeoutError) else 599
            local["requests"] += 1
            if status == "timeout":
                local["timeouts"] += 1
            elif status >= 500:
                local["5xx"] += 1
            elif status != 200:
                local["other"] += 1
        conn.close()
        with lock:
            for k, v in local.items():
                counts[k] += v

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    if timer:
        timer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def measure(users, seconds, max_entries=10_000, concurrency=32):
    cleanup = Cleanup()
    try:
        stack = LoadStack(cleanup, users, max_entries)
        rss_start = stack.rss_mib()
        started = time.monotonic()
        counts = run(stack.envoy.port, stack.tokens, seconds, concurrency)
        elapsed = time.monotonic() - started
        time.sleep(1)  # metrics reach Envoy on the filter's tick
        return {
            **counts,
            "users": users,
            "seconds": round(elapsed, 1),
            "rps": round(counts["requests"] / elapsed),
            "mismatches": stack.backend.mismatches(),
            "idp_exchange_calls": stack.backend_as.exchanges(),
            "cache_hits": stack.stat("token_exchange_filter.cache.hit"),
            "cache_misses": stack.stat("token_exchange_filter.cache.miss"),
            "cache_overwrites": stack.stat("token_exchange_filter.cache.overwrite"),
            "cache_slots": max_entries,
            "envoy_rss_mib_start": round(rss_start, 1),
            "envoy_rss_mib_end": round(stack.rss_mib(), 1),
        }
    finally:
        cleanup.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-entries", type=int, default=10_000)
    a = ap.parse_args()
    r = measure(a.users, a.seconds, a.max_entries, a.concurrency)
    print("| figure | value |\n|---|---:|")
    for k, v in r.items():
        print(f"| {k} | {v} |")
    sys.exit(1 if r["mismatches"] or r["5xx"] or r["timeouts"] else 0)
