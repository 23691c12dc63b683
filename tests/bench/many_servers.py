"""One gateway, many MCP servers: what serving N protected resources from one
filter costs, against one filter per resource.

1. Config load: a config with N resources (one rule each, on its own host,
   with its own `oidc`) and a tenth as many issuers, loaded by Envoy
   (2 workers): how long each VM's `on_configure` takes, from Envoy's own
   wasm trace lines (their timestamps have millisecond resolution), and
   Envoy's RSS after start, against a config with one resource.
2. One VM or many: Envoy's RSS with one filter serving N resources against
   N filters, one per resource, each with its own `vm_id` (Envoy Gateway
   gives every EnvoyExtensionPolicy its own), for N = 1 and 10.

Each round starts one fresh Envoy per variant, in turn; medians over rounds.
Usage: .venv/bin/python tests/bench/many_servers.py [--rounds 3]
           [--resources 100] [--issuers 10] [--vms 1,10]
A script, not a test: it prints tables and asserts nothing about time.
"""

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SECRET_ENV, envoy_version, many_servers  # noqa: E402
from footprint import exchange_hit_stack, first_200  # noqa: E402
from harness import WASM, Cleanup, free_port  # noqa: E402
from perf import listener, rss_kib, start_envoy, wasm_filter  # noqa: E402

WORKERS = 2
TRACE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[(\d+)\].*proxy_on_configure(\(| return)")


def one_server(exchange, i):
    """A config serving only mcp<i>.example.com and skipping every other
    host: one of N filters, one per resource."""
    host = f"mcp{i}.example.com"
    base = exchange["oidc"]
    return {"oidc": {**base, "audience": f"https://{host}/mcp", "resourceUrl": f"https://{host}/mcp",
                     "insecureAllowHttp": True},
            "tokenExchange": {**exchange["tokenExchange"], "audience": f"backend-{i}"},
            "rules": [{"match": {"hosts": [host]}, "requiredScopes": base["requiredScopes"]},
                      {"match": {}, "skip": True}]}


def configure_ms(log_text):
    """Milliseconds each VM spent in `on_configure`, from the trace lines."""
    started, spent = {}, []
    for line in log_text.splitlines():
        m = TRACE.match(line)
        if not m:
            continue
        at = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(m.group(1)[20:]) / 1000
        if m.group(3) == "(":
            started[m.group(2)] = at
        elif m.group(2) in started:
            spent.append((at - started.pop(m.group(2))) * 1000)
    return spent


def start(cleanup, name, filters, clusters, env, port, token, trace=False):
    """A fresh Envoy with one listener; its RSS once a request passed and
    one second went by, and the process."""
    proc = start_envoy(cleanup, name, [listener(name, port, filters)], clusters, core=None,
                       concurrency=WORKERS, env=env, wait=False,
                       log_args=["--component-log-level", "wasm:trace"] if trace else None)
    first_200(port, token, proc)
    time.sleep(1.0)
    return rss_kib(proc.proc.pid), proc


def run(args, cleanup):
    exchange, secret, token, clusters = exchange_hit_stack(cleanup)
    env = {SECRET_ENV: secret}
    loads = {"one": exchange, "many": many_servers(exchange, args.resources, args.issuers)}
    load_ms, load_rss = defaultdict(list), defaultdict(list)
    vm_rss = defaultdict(list)
    for r in range(args.rounds):
        for name, config in loads.items():
            port = free_port()
            rss, proc = start(cleanup, f"load-{name}", [wasm_filter(WASM, config, "tef", [SECRET_ENV])],
                              clusters, env, port, token, trace=True)
            proc.stop()
            load_ms[name].extend(configure_ms(proc.text()))
            load_rss[name].append(rss)
        for n in args.vms:
            one = many_servers(exchange, n, max(1, n // 10))
            variants = {
                f"1 filter, {n} resources": [wasm_filter(WASM, one, "tef", [SECRET_ENV])],
                # The bench's own host passes the others and is served by the last.
                f"{n} filters, own vm_id": [wasm_filter(WASM, exchange if i == n - 1 else one_server(exchange, i),
                                                        f"tef-{i}", [SECRET_ENV]) for i in range(n)],
            }
            for label, filters in variants.items():
                port = free_port()
                rss, proc = start(cleanup, f"vms-{n}", filters, clusters, env, port, token)
                proc.stop()
                vm_rss[label].append(rss)
        print(f"round {r + 1}: " + ", ".join(f"{k} {statistics.median(v):.0f} KiB" for k, v in vm_rss.items()),
              file=sys.stderr)
    none_port = free_port()
    none_rss, proc = start(cleanup, "none", [], clusters, env, none_port, token)
    proc.stop()
    return load_ms, load_rss, vm_rss, none_rss


def render(args, load_ms, load_rss, vm_rss, none_rss):
    mib = lambda kib: kib / 1024  # noqa: E731
    print(f"\nEnvoy {envoy_version()}, {WORKERS} workers, medians of {args.rounds} rounds; "
          f"no filter: {mib(none_rss):.1f} MiB.\n")
    print(f"| config | on_configure ms per VM (median, max) | RSS after start MiB | added |")
    print("|---|---:|---:|---:|")
    labels = {"one": "1 resource, 1 issuer",
              "many": f"{args.resources} resources, {args.issuers} issuers (one rule each, own host and oidc)"}
    for name, label in labels.items():
        ms = load_ms[name]
        rss = statistics.median(load_rss[name])
        print(f"| {label} | {statistics.median(ms):.0f}, {max(ms):.0f} | {mib(rss):.1f} | "
              f"+{mib(rss - none_rss):.1f} |")
    print("\n| Envoy with | RSS after start MiB | added |")
    print("|---|---:|---:|")
    for label, values in vm_rss.items():
        rss = statistics.median(values)
        print(f"| {label} | {mib(rss):.1f} | +{mib(rss - none_rss):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resources", type=int, default=100)
    ap.add_argument("--issuers", type=int, default=10)
    ap.add_argument("--vms", default="1,10", help="comma-separated N for one filter with N resources vs N filters")
    args = ap.parse_args()
    args.vms = [int(n) for n in args.vms.split(",")]
    cleanup = Cleanup()
    try:
        render(args, *run(args, cleanup))
    finally:
        cleanup.close()


if __name__ == "__main__":
    main()
