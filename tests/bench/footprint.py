"""What the filter costs an Envoy in memory and start-up: RSS with no filter,
with the SDK floor (tests/bench/wasm-floor) and with this filter, after start
and after load, and the time from Envoy's start to its first answered request.

Each round starts one fresh Envoy per variant, in turn (A B C A B C ...), with
`--concurrency` workers; the upstream and the IdPs run in other processes.
The filter's variant validates and exchanges (the benchmark's exchange-hit
configuration), so its first 200 needs the JWKS fetch and one exchange.
  - ready ms: from spawning Envoy to the first 200 through the listener, and
    the CPU time Envoy spent until then (all threads; on a busy machine the
    wall time stretches, the CPU time much less);
  - after start: RSS once that 200 came and one second passed;
  - after load: RSS after `--requests` requests with one token (cache hits),
    over 8 keep-alive connections, so every worker serves some.
Medians over rounds. `--wasm NAME=PATH` adds another build of the filter as
a variant (to compare builds side by side); `--concurrency 1,2,4` repeats the
whole table per worker count, which splits per-VM cost from fixed cost.
`--detail` adds where the RSS is (anonymous executable = V8's compiled code;
other anonymous = heaps and wasm linear memory; file-backed = Envoy itself).

Usage: .venv/bin/python tests/bench/footprint.py [--rounds 3]
           [--concurrency 2] [--requests 3000] [--wasm NAME=PATH] [--detail]
A script, not a test: it prints a table and asserts nothing about time.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SECRET_ENV, authorization_servers  # noqa: E402
from harness import WASM, Cleanup, free_port  # noqa: E402
from perf import (FLOOR, cluster, cpu_seconds, drive, listener, rss_kib, start_envoy,  # noqa: E402
                  upstream_envoy, wasm_filter)

LOAD_CONNECTIONS = 8


def smaps_split(pid):
    """RSS in KiB by kind of mapping: V8's compiled code (anonymous,
    executable), other anonymous memory, and file-backed pages."""
    split = {"code": 0, "anon": 0, "file": 0}
    kind = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            perms, path = head[1], (head[5] if len(head) > 5 else "")
            anon = path == "" or path.startswith("[")
            kind = ("code" if anon and "x" in perms else "anon") if anon else "file"
        elif line.startswith("Rss:") and kind:
            split[kind] += int(head[1])
    return split


def first_200(port, token, proc, timeout=30.0):
    """Seconds until `port` answers 200 to a request with `token`."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"Envoy exited: see {proc.log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/mcp", headers={"authorization": f"Bearer {token}"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no 200 on {port} within {timeout}s: see {proc.log}")


def measure(cleanup, name, filters, clusters, env, token, concurrency, requests, detail):
    port = free_port()
    t0 = time.monotonic()
    proc = start_envoy(cleanup, f"fp-{name}", [listener(name, port, filters)], clusters, core=None,
                       concurrency=concurrency, env=env, wait=False)
    first_200(port, token, proc)
    ready = time.monotonic() - t0
    pid = proc.proc.pid
    cpu = cpu_seconds(pid)
    time.sleep(1.0)
    out = {"ready_ms": ready * 1000, "ready_cpu_ms": cpu * 1000, "start": rss_kib(pid)}
    if detail:
        out["start_split"] = smaps_split(pid)
    drive(port, [token] * requests, LOAD_CONNECTIONS)
    time.sleep(0.5)
    out["load"] = rss_kib(pid)
    if detail:
        out["load_split"] = smaps_split(pid)
    proc.stop()
    return out


def exchange_hit_stack(cleanup):
    """What an Envoy under test needs to serve one user's exchange hits: the
    two authorization servers and an upstream. Returns (the filter config
    with tokenExchange, the client secret's value, the user's token, the
    clusters)."""
    resource = f"http://127.0.0.1:{free_port()}/mcp"
    mcp, backend_as, _, exchange, secret = authorization_servers(
        cleanup, resource, [{"client_id": "bench", "client_secret": "bench-secret"}])
    upstream = upstream_envoy(cleanup)
    token = mcp.token("bench", "bench-secret", resource, "mcp:tools:call")
    clusters = [cluster("upstream", upstream)] + [cluster(f"outbound|{p}||127.0.0.1", p)
                                                   for p in (mcp.port, backend_as.port)]
    return exchange, secret, token, clusters


def run(args, cleanup):
    """{concurrency: {variant: [one result per round]}}, and the variants' labels."""
    exchange, secret, token, clusters = exchange_hit_stack(cleanup)
    # The filter checks the audience, not the resource URL, so one token
    # serves every listener.
    variants = [("none", "no filter", []),
                ("floor", f"SDK floor ({FLOOR.stat().st_size // 1000:,} KB)", [wasm_filter(FLOOR, None, "floor")])]
    builds = [("filter", WASM)] + [tuple(w.split("=", 1)) for w in args.wasm]
    for name, path in builds:
        path = Path(path)
        variants.append((name, f"{name} ({path.stat().st_size // 1000:,} KB)",
                         [wasm_filter(path, exchange, "tef", [SECRET_ENV])]))
    results = {}
    for c in args.concurrency:
        results[c] = {name: [] for name, _, _ in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for name, _, filters in order:
                res = measure(cleanup, name, filters, clusters, {SECRET_ENV: secret}, token, c,
                              args.requests, args.detail)
                results[c][name].append(res)
                print(f"workers {c} round {r + 1} {name}: ready {res['ready_ms']:.0f} ms, RSS "
                      f"{res['start'] / 1024:.1f} / {res['load'] / 1024:.1f} MiB", file=sys.stderr)
    return results, [(name, label) for name, label, _ in variants]


def med(xs):
    return statistics.median(xs)


def render(results, labels, args):
    lines = [f"Envoy RSS and time to ready; medians over {args.rounds} rounds, each a fresh Envoy per variant; "
             f"after load = after {args.requests:,} exchange-hit requests over {LOAD_CONNECTIONS} connections."]
    for c, by in results.items():
        none = {k: med([x[k] for x in by["none"]]) / 1024 for k in ("start", "load")}
        floor = {k: med([x[k] for x in by["floor"]]) / 1024 for k in ("start", "load")}
        lines += ["", f"{c} worker{'s' if c > 1 else ''} ({c + 1} wasm VMs: one per worker and the main thread's):",
                  "", "| Envoy with | RSS after start MiB | added | RSS after load MiB | added | "
                  "× SDK floor's added (load) | ready ms | CPU ms to ready |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, label in labels:
            start = med([x["start"] for x in by[name]]) / 1024
            load = med([x["load"] for x in by[name]]) / 1024
            ready = med([x["ready_ms"] for x in by[name]])
            cpu = med([x["ready_cpu_ms"] for x in by[name]])
            if name == "none":
                lines.append(f"| {label} | {start:.1f} | | {load:.1f} | | | {ready:.0f} | {cpu:.0f} |")
                continue
            floor_added = floor["load"] - none["load"]
            ratio = (load - none["load"]) / floor_added if floor_added > 0 else float("nan")
            lines.append(f"| {label} | {start:.1f} | +{start - none['start']:.1f} | {load:.1f} | "
                         f"+{load - none['load']:.1f} | {ratio:.2f} | {ready:.0f} | {cpu:.0f} |")
        if args.detail:
            lines += ["", "| Envoy with | compiled code MiB (start / load) | other anonymous | file-backed |",
                      "|---|---:|---:|---:|"]
            for name, label in labels:
                s = {k: med([x["start_split"][k] for x in by[name]]) / 1024 for k in ("code", "anon", "file")}
                ld = {k: med([x["load_split"][k] for x in by[name]]) / 1024 for k in ("code", "anon", "file")}
                lines.append(f"| {label} | {s['code']:.1f} / {ld['code']:.1f} | {s['anon']:.1f} / "
                             f"{ld['anon']:.1f} | {s['file']:.1f} / {ld['file']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[2])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--wasm", action="append", default=[], help="NAME=PATH: another build, as one more variant")
    ap.add_argument("--detail", action="store_true", help="also split RSS by mapping kind")
    args = ap.parse_args()
    assert WASM.exists() and FLOOR.exists(), "run tests/bench/run.sh (it builds both .wasm files)"
    cleanup = Cleanup()
    try:
        results, labels = run(args, cleanup)
    finally:
        cleanup.close()
    print(render(results, labels, args))


if __name__ == "__main__":
    main()
