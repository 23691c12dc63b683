"""What the first sight of a token costs, against a repeat of it.

Runs Envoy (1 worker, direct_response upstream) with the filter in
validation-only mode and the demo IdP, mints N distinct RS256-2048 tokens,
then sends each once (cold: signature check) and one token N times (cached:
SHA-256 lookup), on one keep-alive connection, alternating rounds. Prints a
markdown table. A measurement, not a test: nothing here asserts on time.

Usage: .venv/bin/python tests/bench/verify_cost.py [N] [ROUNDS]
"""

import http.client
import statistics
import sys

from common import envoy_version, pct, timed
from constants import MCP_AUDIENCE, MCP_SCOPE
from harness import WASM, Cleanup, Envoy, IdP, free_port
from stacks import clients_for

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def main():
    assert WASM.exists(), "run tests/bootstrap.sh first"
    cleanup = Cleanup()
    try:
        port = free_port()
        resource = f"http://127.0.0.1:{port}/mcp"
        idp = IdP(cleanup, "bench-as", resources={resource: {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE}},
                  clients=clients_for("bench")).start()
        config = {"oidc": {"issuer": idp.issuer, "audience": MCP_AUDIENCE, "jwksUrl": f"{idp.issuer}/jwks",
                           "requiredScopes": [MCP_SCOPE]}}
        envoy = Envoy(cleanup, 1, config, {f"outbound|{idp.port}||127.0.0.1": idp.port}, port=port,
                      concurrency=1, direct_response=True, log_level="warning").wait_ready()
        tokens = [idp.token("bench", "bench-secret", resource, MCP_SCOPE) for _ in range(N * ROUNDS + 1)]
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port)
        timed(conn, tokens[-1])  # loads the keys
        cold, cached = [], []
        for r in range(ROUNDS):
            fresh = tokens[r * N:(r + 1) * N]
            cold += [timed(conn, t) for t in fresh]
            cached += [timed(conn, tokens[-1]) for _ in range(N)]
        print(f"RS256-2048 tokens through Envoy {envoy_version()} (1 worker), {N * ROUNDS} requests each, µs per request:\n")
        print("| path | p50 | p90 | p99 | mean |")
        print("|---|---:|---:|---:|---:|")
        for name, xs in (("cold: first sight, signature checked", cold), ("cached: repeat token", cached)):
            print(f"| {name} | {pct(xs, 50):.0f} | {pct(xs, 90):.0f} | {pct(xs, 99):.0f} | {statistics.mean(xs):.0f} |")
        print(f"\ncold verification adds {pct(cold, 50) - pct(cached, 50):.0f} µs at p50 "
              f"({statistics.mean(cold) - statistics.mean(cached):.0f} µs mean); .wasm {WASM.stat().st_size:,} bytes")
    finally:
        cleanup.close()


if __name__ == "__main__":
    main()
