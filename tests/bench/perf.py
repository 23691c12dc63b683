"""Throughput and latency of token-exchange-filter against no filter, Envoy's
native jwt_authn, and the cheapest wasm filter; IdP calls; memory.

One Envoy under test (1 worker, pinned to one core) carries a listener per
variant; a second Envoy (pinned to the other core, with wrk) is the upstream,
answering with direct_response. In each of ROUNDS rounds every variant gets
wrk with 16 connections for DURATION seconds, in SLICE-second runs cycling
through the variants (A B C ... A B C ...); the tables report medians and
ratios from this one run. Absolute numbers are noise; ratios in one run are
the result. --profile adds where the Envoy under test spends its CPU (perf).

`--compare NAME=PATH` runs the exchange-hit variant (5) again on another
build, e.g. main's, as one more listener in the same rounds. Then
footprint.py's table follows: Envoy RSS with no filter, the floor and this
filter (and the --compare builds), after start and after load, and the time
to ready (2 workers; --no-footprint skips it).

Usage: .venv/bin/python tests/bench/perf.py [--rounds 3] [--duration 10]
           [--slice 1] [--memory] [--profile] [--compare NAME=PATH]
           [--chart docs/bench.png] [--markdown docs/bench.md]
A script, not a test: it asserts nothing about time.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from common import (GRANT, SECRET_ENV, authorization_servers, envoy_version, many_servers, pct,  # noqa: E402
                    timed_request)
from constants import BACKEND_AUDIENCE, BACKEND_SCOPE, GW_CLIENT, MCP_AUDIENCE, MCP_SCOPE  # noqa: E402
from harness import ENVOY, ROOT, WASM, WORK, Cleanup, Proc, call, free_port, wait_port  # noqa: E402

FLOOR = ROOT / "target" / "wasm32-wasip1" / "release" / "wasm_floor.wasm"
CONNECTIONS = 16

VARIANTS = [
    ("nofilter", "1. no filter"),
    ("jwt_authn", "2. jwt_authn, no cache"),
    ("jwt_authn_cache", "3. jwt_authn + jwt_cache_config"),
    ("validate", "4. this filter, validation only (repeat token)"),
    ("exchange", "5. this filter + exchange, cache hit"),
    ("rules", "8. as 5, behind 3 route rules that do not match"),
    ("rules100", "9. as 5, behind 100 resources' rules (10 issuers) that do not match"),
    ("floor", "7. wasm floor (read + set one header)"),
]
SHORT = {
    "nofilter": "no filter",
    "jwt_authn": "jwt_authn",
    "jwt_authn_cache": "jwt_authn\n+ cache",
    "validate": "this filter:\nvalidation",
    "exchange": "this filter:\nexchange hit",
    "rules": "exchange hit\n+ 3 rules",
    "rules100": "exchange hit\n+ 100 rules",
    "floor": "wasm floor",
    "cold": "this filter:\nnew user",
}


def pinned(core, cmd):
    """`cmd` on one core (`core` None: on all)."""
    return ["taskset", "-c", str(core)] + cmd if core is not None and os.cpu_count() and os.cpu_count() > 1 else cmd


def hcm(name, filters, cluster="upstream"):
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
            "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


def listener(name, port, filters):
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm(name, filters)]}]}


def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def wasm_filter(wasm, config, vm_id, env_keys=()):
    vm = {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}}
    if env_keys:
        vm["environment_variables"] = {"host_env_keys": list(env_keys)}
    cfg = {"name": vm_id, "root_id": vm_id, "vm_config": vm}
    if config is not None:
        cfg["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": json.dumps(config)}
    return {"name": vm_id, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": cfg}}


def jwt_authn(issuer, jwks, cache):
    provider = {"issuer": issuer, "audiences": [MCP_AUDIENCE], "forward": True,
                "local_jwks": {"inline_string": json.dumps(jwks)}}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"mcp": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "mcp"}}]}}


def start_envoy(cleanup, name, listeners, clusters, core, concurrency=1, env=None, wait=True, log_args=None):
    admin = free_port()
    doc = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
           "static_resources": {"listeners": listeners, "clusters": clusters}}
    path = WORK / f"bench-{name}-{admin}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cmd = pinned(core, [str(ENVOY), "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart",
                        "-l", "warning"] + (log_args or []))
    proc = cleanup.add(Proc(f"bench-{name}", cmd, env=env))
    if not wait:
        return proc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if call(admin, "/ready")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    for ls in listeners:
        wait_port(ls["address"]["socket_address"]["port_value"], proc.proc, proc.log)
    return proc


def upstream_envoy(cleanup, extra_routes=None):
    """The fast upstream: Envoy answering 200 itself. `extra_routes` adds
    (path, body) pairs, for a static JWKS and token endpoint."""
    port = free_port()
    routes = [{"match": {"path": p}, "direct_response": {"status": 200, "body": {"inline_string": b}},
               "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]}
              for p, b in (extra_routes or [])]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    ls = {"name": "upstream", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
          "filter_chains": [{"filters": [{
              "name": "envoy.filters.network.http_connection_manager",
              "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                  "stat_prefix": "upstream",
                  "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                  "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                      "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}
    start_envoy(cleanup, "upstream", [ls], [], core=1)
    return port


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def cpu_seconds(pid):
    """User + system CPU time of a process, all threads (steal time excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port, duration, token=None, connections=CONNECTIONS, pid=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    cmd.append(f"http://127.0.0.1:{port}/mcp")
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(pinned(1, cmd), capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out)
    total, seconds = int(m.group(1)), float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"requests": total, "seconds": seconds, "cpu": cpu, "rps": total / seconds,
            "cpu_us": cpu * 1e6 / max(total, 1),
            "p50": parse_latency(lat.get("50", "")), "p99": parse_latency(lat.get("99", "")),
            "non2xx": int(bad.group(1)) if bad else 0}


def combine(slices):
    """One variant's slices in a round: requests per second and CPU per request
    over all of them; latency percentiles are the slices' medians."""
    total = sum(x["requests"] for x in slices)
    return {"rps": total / sum(x["seconds"] for x in slices),
            "cpu_us": sum(x["cpu"] for x in slices) * 1e6 / max(total, 1),
            "p50": med([x["p50"] for x in slices]), "p99": med([x["p99"] for x in slices]),
            "non2xx": sum(x["non2xx"] for x in slices)}


def drive(port, tokens, connections):
    """Sends each token once over `connections` keep-alive connections;
    returns (requests per second, latencies in µs)."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        out = []
        for t in chunk:
            t0 = time.perf_counter()
            conn.request("GET", "/mcp", headers={"authorization": f"Bearer {t}"})
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - t0) * 1e6)
            assert resp.status == 200, resp.status
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        parts = list(pool.map(run, [tokens[i::connections] for i in range(connections)]))
    wall = time.perf_counter() - t0
    return len(tokens) / wall, [x for p in parts for x in p]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def envoy_pid(proc):
    """The Envoy process itself (taskset execs it, so it is the child's pid)."""
    return proc.proc.pid


def mint(idp, client, resource, n, threads=8):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: idp.token(client, f"{client}-secret", resource, MCP_SCOPE), range(n)))


def profile(pid, port, token, seconds, path):
    """Where the Envoy under test spends its CPU on a variant's workload:
    shares of `perf record` samples (cpu-clock, so it works without a PMU;
    a low rate, since sampling in a VM is not free) while wrk runs, split by
    code: the wasm module (V8's JIT code), Envoy's own, the kernel, the rest."""
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-o", str(path), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    wrk(port, seconds, token=token)
    rec.send_signal(2)
    rec.wait()
    out = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "dso", "-g", "none",
                          "--stdio"], capture_output=True, text=True).stdout
    shares = {"wasm": 0.0, "envoy": 0.0, "kernel": 0.0, "other": 0.0}
    for pct_, dso in re.findall(r"^\s+([\d.]+)%\s+(.+?)\s*$", out, re.M):
        part = ("wasm" if dso.startswith("[JIT]") else "envoy" if dso == "envoy"
                else "kernel" if dso.startswith("[kernel") else "other")
        shares[part] += float(pct_) / 100
    return shares


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def run_throughput(args, cleanup, report):
    ports = {key: free_port() for key, _ in VARIANTS}
    resource = f"http://127.0.0.1:{ports['validate']}/mcp"
    mcp, backend_as, oidc, exchange, secret = authorization_servers(
        cleanup, resource, [{"client_id": "bench", "client_secret": "bench-secret"}])
    upstream = upstream_envoy(cleanup)
    env_keys = [SECRET_ENV]
    jwks = mcp.jwks()
    filters = {
        "nofilter": [],
        "jwt_authn": [jwt_authn(mcp.issuer, jwks, cache=False)],
        "jwt_authn_cache": [jwt_authn(mcp.issuer, jwks, cache=True)],
        "validate": [wasm_filter(WASM, {"oidc": oidc}, "tef", env_keys)],
        "exchange": [wasm_filter(WASM, exchange, "tef", env_keys)],
        # The cost of matching: a host rule, a path rule with its own
        # exchange target, and a skip, none of which match /mcp.
        "rules": [wasm_filter(WASM, {**exchange, "rules": [
            {"match": {"hosts": ["api.example.com"]}, "requiredScopes": ["admin"]},
            {"match": {"pathPrefix": "/github/"}, "tokenExchange": {**exchange["tokenExchange"], "audience": "github"}},
            {"match": {"pathPrefix": "/healthz"}, "skip": True},
        ]}, "tef", env_keys)],
        # Issue 16's budget: 100 resources on other hosts cost at most 3%.
        "rules100": [wasm_filter(WASM, many_servers(exchange, 100, 10), "tef", env_keys)],
        "floor": [wasm_filter(FLOOR, None, "floor")],
    }
    # --compare NAME=PATH: the exchange-hit variant again on another build.
    for key, path in args.compare:
        filters[key] = [wasm_filter(path, exchange, f"tef-{key}", env_keys)]
    listeners = [listener(k, ports[k], filters[k]) for k, _ in VARIANTS]
    clusters = [cluster("upstream", upstream)] + [cluster(f"outbound|{p}||127.0.0.1", p)
                                                   for p in (mcp.port, backend_as.port)]
    under_test = start_envoy(cleanup, "under-test", listeners, clusters, core=0, env={SECRET_ENV: secret})
    token = mcp.token("bench", "bench-secret", resource, MCP_SCOPE)
    for key, _ in VARIANTS:
        status = call(ports[key], "/mcp", headers={"authorization": f"Bearer {token}"})[0]
        assert status == 200, (key, status)

    # A B C A B C ...: within a round every variant gets `duration` seconds
    # in one-second slices, cycling through all variants (order rotated each
    # cycle), so a shared machine's slow drift (seconds to minutes here) lands
    # on every variant alike instead of on whichever ran during it. A round's
    # ratio is its requests per second over no filter's in the same round.
    chosen = [k for k, _ in VARIANTS if k != "nofilter" and (not args.only or k in args.only.split(","))]
    keys = ["nofilter"] + chosen
    results = {key: [] for key in keys}
    ratios = {key: [] for key in chosen}
    pid = envoy_pid(under_test)
    cycles = max(1, round(args.duration / args.slice))
    for r in range(args.rounds):
        slices = {key: [] for key in keys}
        for c in range(cycles):
            shift = (r * cycles + c) % len(keys)
            for key in keys[shift:] + keys[:shift]:
                slices[key].append(wrk(ports[key], args.slice, token=token, pid=pid))
        for key in keys:
            results[key].append(combine(slices[key]))
        for key in chosen:
            ratios[key].append(results[key][-1]["rps"] / results["nofilter"][-1]["rps"])
        print(f"round {r + 1}: " + ", ".join(
            f"{key} {results[key][-1]['rps']:.0f} req/s {results[key][-1]['cpu_us']:.1f} µs"
            + (f" ×{ratios[key][-1]:.2f}" if key in ratios else "") for key in keys), file=sys.stderr)
    if args.only:
        return
    # 6. The cold path: every request a new user's token, so validation plus
    # a real exchange at the backend AS. Each token is used once; a threaded
    # Python client drives it (the IdP, not the client, is the bottleneck).
    pid = envoy_pid(under_test)
    tokens = mint(mcp, "bench", resource, args.cold_tokens + 400)
    serial, loaded = tokens[:400], tokens[400:]
    cpu0 = cpu_seconds(pid)
    rps, lat16 = drive(ports["exchange"], loaded, CONNECTIONS)
    cold_cpu = (cpu_seconds(pid) - cpu0) * 1e6 / len(loaded)
    # One at a time, interleaved so that all three see the same machine: a
    # new user's request through Envoy, the same kind of exchange sent to the
    # backend AS directly, and a request through the no-filter listener.
    import base64
    import http.client
    import urllib.parse

    basic = base64.b64encode(f"{GW_CLIENT}:{secret}".encode()).decode()
    direct_tokens = mint(mcp, "bench", resource, len(serial))
    envoy_conn = http.client.HTTPConnection("127.0.0.1", ports["exchange"])
    base_conn = http.client.HTTPConnection("127.0.0.1", ports["nofilter"])
    idp_conn = http.client.HTTPConnection("127.0.0.1", backend_as.port)

    lat1, base1, idp_us = [], [], []
    for cold_token, direct_token in zip(serial, direct_tokens):
        lat1.append(timed_request(envoy_conn, "GET", "/mcp", {"authorization": f"Bearer {cold_token}"}))
        body = urllib.parse.urlencode({"grant_type": GRANT, "subject_token": direct_token, "audience": BACKEND_AUDIENCE,
                                       "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                       "scope": BACKEND_SCOPE, "requested_token_type":
                                       "urn:ietf:params:oauth:token-type:access_token"})
        idp_us.append(timed_request(idp_conn, "POST", "/token", {
            "authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"}, body))
        base1.append(timed_request(base_conn, "GET", "/mcp", {"authorization": f"Bearer {token}"}))
    report["cold"] = {"rps": rps, "p50": pct(lat16, 50), "p99": pct(lat16, 99), "cpu_us": cold_cpu,
                      "serial_p50": pct(lat1, 50), "baseline_p50": pct(base1, 50), "idp_p50": pct(idp_us, 50),
                      "tokens": len(loaded)}
    # Rules against the same config without them, round by round.
    report["rules100_vs_exchange"] = [a["rps"] / b["rps"] for a, b in zip(results.get("rules100", []),
                                                                         results.get("exchange", []))]
    report["variants"] = {key: {
        "label": label,
        "ratio": med(ratios[key]) if key in ratios else 1.0,
        "ratios": ratios.get(key, []),
        "rps": med([x["rps"] for x in results[key]]),
        "cpu_us": med([x["cpu_us"] for x in results[key]]),
        "p50": med([x["p50"] for x in results[key]]),
        "p99": med([x["p99"] for x in results[key]]),
        "non2xx": sum(x["non2xx"] for x in results[key]),
        "rounds": [x["rps"] for x in results[key]],
    } for key, label in VARIANTS}
    report["envoy_rss_kib"] = rss_kib(envoy_pid(under_test))
    if args.profile:
        report["profile"] = {key: profile(pid, ports[key], token, args.duration, WORK / f"perf-{key}.data")
                             for key in ["nofilter", "floor", "validate", "exchange", "jwt_authn"]}


def run_memory(cleanup, report, users=100_000, churn=300_000):
    """RSS of one Envoy worker as 100k distinct users fill a 100k-slot cache,
    then as 300k more churn through it. The IdP here is Envoy itself: a static
    JWKS and a static exchange answer (the same ~700-byte token for everyone),
    so the run measures the filter, not an IdP. Tokens are EdDSA-signed, which
    is the cheapest to make and verify at this volume."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import jwt

    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(pub))
    jwk.update({"kid": "mem", "alg": "EdDSA", "use": "sig"})
    exchanged = jwt.encode({"sub": "x" * 20, "aud": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE, "pad": "p" * 400,
                            "exp": int(time.time()) + 3600}, key, algorithm="EdDSA")
    answer = json.dumps({"access_token": exchanged, "token_type": "Bearer", "expires_in": 3600,
                         "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
    idp = upstream_envoy(cleanup, [("/jwks", json.dumps({"keys": [jwk]})), ("/token", answer)])
    issuer = f"http://127.0.0.1:{idp}"
    port = free_port()
    cfg = {"oidc": {"issuer": issuer, "audience": MCP_AUDIENCE, "jwksUrl": f"{issuer}/jwks"},
           "tokenExchange": {"tokenUrl": f"{issuer}/token", "clientId": GW_CLIENT,
                             "clientSecretEnv": SECRET_ENV, "audience": BACKEND_AUDIENCE},
           "cache": {"maxEntries": users, "expirySkewSeconds": 30}}
    env_keys = [SECRET_ENV]
    proc = start_envoy(cleanup, "memory", [listener("mem", port, [wasm_filter(WASM, cfg, "tef", env_keys)])],
                       [cluster("upstream", idp), cluster(f"outbound|{idp}||127.0.0.1", idp)], core=0,
                       env={SECRET_ENV: "s"})
    pid = envoy_pid(proc)
    now = int(time.time())

    def tokens(start, count):
        return [jwt.encode({"iss": issuer, "aud": MCP_AUDIENCE, "sub": f"user{i}", "iat": now, "exp": now + 3600},
                           key, algorithm="EdDSA", headers={"kid": "mem"}) for i in range(start, start + count)]

    drive(port, tokens(10**9, 1), 1)
    base = rss_kib(pid)
    points = [("after start (1 user)", 1, base)]
    done = 0
    step = max(1, users // 2)
    while done < users + churn:
        drive(port, tokens(done, step), 8)
        done += step
        points.append((f"{done:,} users", done, rss_kib(pid)))
        print(f"memory: {done} users, RSS {points[-1][2] / 1024:.1f} MiB", file=sys.stderr)
    report["memory"] = {"points": points, "per_entry_bytes": (points[-1][2] - base) * 1024 / users,
                        "max_entries": users, "total_users": users + churn}


def render(report, args):
    if "variants" not in report:
        return render_memory(report)
    v = report["variants"]
    base = v["nofilter"]["rps"]
    lines = [f"Run {report['date']} on {report['machine']}, Envoy {report['envoy']}, 1 worker, wrk -t1 "
             f"-c{CONNECTIONS}, {args.rounds} rounds. In each round every variant gets {args.duration} s of load in "
             f"{args.slice}-second wrk runs, cycling through all variants with the order rotated each cycle, so "
             "the machine's drift lands on every variant alike. × no filter is the median over rounds of a "
             "variant's req/s over no filter's in the same round; req/s and CPU are medians over rounds, "
             f"latencies medians over the {args.slice}-second runs.", "",
             "| variant | req/s | × no filter | Envoy CPU µs/req | p50 µs | p99 µs |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, _ in VARIANTS:
        x = v[key]
        lines.append(f"| {x['label']} | {x['rps']:,.0f} | {x['ratio']:.2f} | {x['cpu_us']:.1f} | "
                     f"{x['p50']:.0f} | {x['p99']:.0f} |")
    c = report["cold"]
    added = c["serial_p50"] - c["baseline_p50"] - c["idp_p50"]
    lines.append(f"| 6. cold: new user per request (validation + exchange)* | {c['rps']:,.0f} | "
                 f"{c['rps'] / base:.2f} | {c['cpu_us']:.1f} | {c['p50']:.0f} | {c['p99']:.0f} |")
    lines += ["", f"\\* {c['tokens']:,} distinct tokens, each sent once over {CONNECTIONS} connections by a "
              "threaded Python client (the backend AS, a single Node.js process, is the bottleneck). "
              f"One at a time and interleaved, a new user's request takes {c['serial_p50']:.0f} µs at p50 against "
              f"{c['baseline_p50']:.0f} µs with no filter; the backend AS alone answers an exchange in "
              f"{c['idp_p50']:.0f} µs; so the filter adds **{added:.0f} µs** at p50 over the IdP's own time "
              "(validation, callout, caching).",
              f"Envoy under test RSS at the end: {report['envoy_rss_kib'] / 1024:.1f} MiB. "
              f".wasm: {report['wasm_bytes']:,} bytes."]
    per_round = report.get("rules100_vs_exchange")
    if per_round:
        lines += ["", f"100 resources' rules that do not match, against the same config without them (9 over 5, "
                  f"round by round): median **{med(per_round):.3f}** (rounds: "
                  + ", ".join(f"{x:.3f}" for x in per_round) + ")."]
    if "idp_calls" in report:
        i = report["idp_calls"]
        lines += ["", f"IdP exchange calls for {i['users']} users × {i['per_user']} requests through 2 Envoy "
                  f"workers (32 concurrent clients): **{i['calls']}** for {i['requests']:,} requests."]
    if "profile" in report:
        lines += ["", "Where the Envoy under test spends its CPU (`--profile`: shares of `perf record -e cpu-clock` "
                  f"samples during one {args.duration} s wrk run per variant). The wasm column is the share of "
                  "samples in V8's JIT code, i.e. the filter's own code, times the variant's CPU per request "
                  "from the rounds above:", "",
                  "| variant | CPU µs/req | wasm % | Envoy % | kernel % | other % | wasm µs/req |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, x in report["profile"].items():
            cpu = v[key]["cpu_us"]
            lines.append(f"| {v[key]['label']} | {cpu:.1f} | {x['wasm'] * 100:.1f} | {x['envoy'] * 100:.1f} | "
                         f"{x['kernel'] * 100:.1f} | {x['other'] * 100:.1f} | {x['wasm'] * cpu:.1f} |")
    if "memory" in report:
        lines += ["", render_memory(report)]
    ratios = {
        "cache hit (5) / no filter (1) ≥ 0.80": v["exchange"]["ratio"],
        "cache hit (5) / wasm floor (7)": v["exchange"]["ratio"] / v["floor"]["ratio"],
        "cache hit (5) / jwt_authn no cache (2) ≥ 1.2": v["exchange"]["ratio"] / v["jwt_authn"]["ratio"],
        "validation only (4) / no filter (1) ≥ 0.80": v["validate"]["ratio"],
    }
    for key, _ in args.compare:
        ratios[f"cache hit, {key.removeprefix('exchange_')} build (5b) / this build (5)"] = (
            v[key]["ratio"] / v["exchange"]["ratio"])
    if "idp_calls" in report:
        ratios["IdP calls, 100 users × 100 requests, 2 workers ≤ 200"] = report["idp_calls"]["calls"]
    lines += ["", "| target | measured |", "|---|---:|"] + [
        f"| {k} | {r:.2f} |" if isinstance(r, float) else f"| {k} | {r} |" for k, r in ratios.items()]
    return "\n".join(lines)


def render_memory(report):
    m = report["memory"]
    lines = [f"Memory, maxEntries={m['max_entries']:,}, {m['total_users']:,} distinct users "
             "(EdDSA tokens, static IdP answers), one worker:", "",
             "| after | Envoy RSS MiB |", "|---|---:|"]
    lines += [f"| {label} | {rss / 1024:.1f} |" for label, _, rss in m["points"]]
    lines += ["", f"≈ {m['per_entry_bytes']:.0f} bytes per cache slot (RSS growth at the end / "
              f"{m['max_entries']:,} slots). RSS keeps rising a little after the first {m['max_entries']:,} "
              "users because 2-way placement leaves some slots empty until churn fills them; once all are "
              "used it is flat."]
    return "\n".join(lines)


def chart(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    v = report["variants"]
    base = v["nofilter"]["rps"]
    keys = [k for k, _ in VARIANTS]
    labels = [SHORT[k] for k in keys] + [SHORT["cold"]]
    ratios = [v[k]["ratio"] for k in keys] + [report["cold"]["rps"] / base]
    p99 = [v[k]["p99"] / 1000 for k in keys] + [report["cold"]["p99"] / 1000]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    colors = ["#777777", "#d98c3f", "#e0b070", "#3f7fd9", "#1f4fa0", "#99bbdd", "#55aa55"]
    bars = a.bar(range(len(ratios)), ratios, color=colors)
    a.bar_label(bars, fmt="%.2f", fontsize=8)
    a.axhline(0.8, color="red", linestyle="--", linewidth=1, label="0.80 target")
    a.set_xticks(range(len(labels)), labels, fontsize=8)
    a.set_ylabel("throughput / no filter")
    a.set_title("Throughput ratio (higher is better)")
    a.legend()
    bars = b.bar(range(len(p99)), p99, color=colors)
    b.bar_label(bars, fmt="%.1f", fontsize=8)
    b.set_xticks(range(len(labels)), labels, fontsize=8)
    b.set_ylabel("p99 latency, ms")
    b.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    b.yaxis.set_major_formatter(plain)
    b.yaxis.set_minor_formatter(plain)
    b.set_title("p99 latency (lower is better, log scale)")
    fig.suptitle(f"token-exchange-filter, Envoy {report['envoy']}, 1 worker, {report['date']}, {report['machine']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def footprint(args):
    """footprint.py's table (RSS and time to ready, 2 workers), with the
    --compare builds beside this one."""
    from types import SimpleNamespace

    import footprint as fp

    fargs = SimpleNamespace(rounds=args.rounds, concurrency=[2], requests=3000, detail=False,
                            wasm=[f"{key.removeprefix('exchange_')}={path}" for key, path in args.compare])
    cleanup = Cleanup()
    try:
        results, labels = fp.run(fargs, cleanup)
    finally:
        cleanup.close()
    return fp.render(results, labels, fargs)


def compared(spec):
    """NAME=PATH from --compare: registers the variant, returns (key, path)."""
    name, path = spec.split("=", 1)
    key = f"exchange_{name}"
    VARIANTS.insert([k for k, _ in VARIANTS].index("exchange") + 1, (key, f"5b. as 5, {name} build"))
    SHORT[key] = f"exchange hit\n{name}"
    return key, Path(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per variant per round")
    ap.add_argument("--slice", type=int, default=1, help="seconds per wrk run within a round")
    ap.add_argument("--memory", action="store_true", help="also run the 100k/300k-user memory test (minutes)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory test")
    ap.add_argument("--profile", action="store_true", help="also split Envoy's CPU by code with perf (needs perf)")
    ap.add_argument("--only", default="", help="comma-separated variant keys, for quick iterations (no report)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                    help="also the exchange-hit variant on another .wasm (e.g. main's build), side by side")
    ap.add_argument("--no-footprint", action="store_true", help="skip the RSS and time-to-ready table")
    ap.add_argument("--cold-tokens", type=int, default=3000, help="distinct tokens for the cold path")
    ap.add_argument("--memory-users", type=int, default=100_000, help="maxEntries and first fill for --memory")
    ap.add_argument("--chart", type=Path, default=ROOT / "docs" / "bench.png")
    ap.add_argument("--markdown", type=Path, default=ROOT / "docs" / "bench.md")
    args = ap.parse_args()
    args.compare = [compared(c) for c in args.compare]
    assert WASM.exists() and FLOOR.exists(), "run tests/bench/run.sh (it builds both .wasm files)"
    if args.profile and not shutil.which("perf"):
        ap.error("--profile needs perf (Debian: apt-get install linux-perf)")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release().split('-')[0]}",
        "envoy": envoy_version(),
        "wasm_bytes": WASM.stat().st_size,
    }
    if not args.memory_only:
        cleanup = Cleanup()
        try:
            run_throughput(args, cleanup, report)
        finally:
            cleanup.close()
        if args.only:
            return
        from exchange_cost import idp_calls

        calls, requests, seconds = idp_calls(100, 100)
        report["idp_calls"] = {"users": 100, "per_user": 100, "calls": calls, "requests": requests}
    if args.memory or args.memory_only:
        cleanup = Cleanup()
        try:
            run_memory(cleanup, report, users=args.memory_users, churn=3 * args.memory_users)
        finally:
            cleanup.close()
    text = render(report, args)
    if not (args.memory_only or args.no_footprint):
        text += "\n\n" + footprint(args)
    print(text)
    if args.memory_only:
        return
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text + "\n")
    (WORK / "bench-report.json").write_text(json.dumps(report, indent=1))
    chart(report, args.chart)
    print(f"\nwrote {args.markdown} and {args.chart}", file=sys.stderr)


if __name__ == "__main__":
    main()
