"""Issue 10, the filter's side on real Envoy: CORS for browser clients, claim
headers, per-tool scopes (the JSON-RPC body read through Envoy's buffering),
the metrics in /stats and /stats/prometheus, and the audit log.

One Envoy (2 workers) with a listener per configuration; the MCP AS issues
the callers' tokens and the backend AS exchanges them, as in
test_exchange.py. The backend echoes what reached it.
"""

import json
import re
import time

import pytest

from constants import ADMIN_SCOPE, BACKEND_AUDIENCE, GW_SECRET, MCP_SCOPE
from harness import BrokenTokenEndpoint, call, free_port, tamper_signature
from stacks import Stack, clients_for, mcp_resources

ORIGIN = "https://app.example"
PREFIX = "wasmcustom.token_exchange_filter."
LISTENERS = ("main", "bad-gateway", "hang", "idp-500", "no-keys", "own-keys")


class Edge(Stack):
    """The exchange stack, with an echo backend; `main` has every edge
    feature on, the others fail in one way each."""

    def __init__(self, cleanup):
        self.broken = cleanup.add(BrokenTokenEndpoint())
        self.closed = free_port()
        self.tokens = []
        super().__init__(cleanup, listeners=LISTENERS, clients=clients_for("alice", "bob", "blocked", "dora"),
                         resources=lambda url: mcp_resources(url, scope=f"{MCP_SCOPE} {ADMIN_SCOPE}"),
                         exchange=True, backend_as={"deny": ["blocked"]}, verify=False,
                         token_exchange={"scopes": None, "timeoutMs": 500},
                         clusters=[self.broken.port, self.closed])

    def configure(self, name):
        if name == "main":
            return {**self.config(),
                    "cors": {"allowedOrigins": [ORIGIN]},
                    "claimToHeaders": [{"claim": "sub", "header": "x-user-sub"}],
                    "mcp": {"toolScopes": {"delete_repo": [ADMIN_SCOPE]}, "maxBodyBytes": 512},
                    "rules": [{"match": {"pathPrefix": "/healthz"}, "skip": True}],
                    "cache": {"maxEntries": 1, "expirySkewSeconds": 30}}
        if name == "no-keys":
            return self.config(oidc={"jwksUrl": f"http://127.0.0.1:{self.closed}/jwks"})
        if name == "own-keys":
            # Keys published under a JWKS URL of its own, first asked for by
            # test_every_metric_moves (listeners with one issuer and URL share them).
            return self.config(oidc={"jwksUrl": f"{self.mcp_as.issuer}/jwks?for=own-keys"})
        broken = {"bad-gateway": "garbage", "hang": "hang", "idp-500": "500"}[name]
        return self.config(exchange={"tokenUrl": f"{self.broken.origin}/{broken}"})

    def token(self, user="alice", scope=MCP_SCOPE):
        t = super().token(user, scope)
        self.tokens.append(t)
        return t

    def req(self, listener="main", path="/mcp", token=None, method="GET", headers=None, body=None):
        h = dict(headers or {})
        if token:
            h["authorization"] = f"Bearer {token}"
        return call(self.ports[listener], path, method=method, headers=h, body=body)

    def stats(self):
        out = {}
        for line in call(self.envoy.admin, "/stats?filter=token_exchange_filter")[2].splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(PREFIX) and value.strip().isdigit():
                out[name[len(PREFIX):]] = int(value)
        return out


@pytest.fixture(scope="module")
def edge(module_cleanup):
    return Edge(module_cleanup)


def test_preflights_reach_the_upstream_and_refusals_are_readable_cross_origin(edge):
    served = edge.backend.requests()
    status, _, _ = edge.req(method="OPTIONS", headers={"origin": ORIGIN, "access-control-request-method": "POST",
                                                       "access-control-request-headers": "authorization"})
    assert status == 200 and edge.backend.requests() == served + 1, "the upstream answered the preflight"
    status, headers, _ = edge.req(headers={"origin": ORIGIN})
    assert status == 401
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-expose-headers"] == "WWW-Authenticate"
    assert headers["vary"] == "Origin"
    assert "resource_metadata=" in headers["www-authenticate"]
    status, headers, _ = edge.req(headers={"origin": "https://evil.example"})
    assert status == 401 and "access-control-allow-origin" not in headers


def test_claim_headers_come_from_the_token_only(edge):
    status, _, body = edge.req(token=edge.token("alice"), headers={"x-user-sub": "root"})
    assert status == 200, body
    headers = dict(json.loads(body)["headers"])
    assert headers["x-user-sub"] == "alice"
    status, _, body = edge.req(path="/healthz", headers={"x-user-sub": "root"})
    assert "x-user-sub" not in dict(json.loads(body)["headers"]), "skipped routes lose the client's copy too"


def rpc(name, pad=0):
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": name, "arguments": {"pad": "x" * pad}}})


def test_tool_scopes_are_checked_from_the_body(edge):
    plain, admin = edge.token("bob"), edge.token("bob", f"{MCP_SCOPE} {ADMIN_SCOPE}")
    ctype = {"content-type": "application/json"}
    status, headers, _ = edge.req(method="POST", token=plain, headers=ctype, body=rpc("delete_repo"))
    assert status == 403
    assert 'scope="mcp:tools:call mcp:admin"' in headers["www-authenticate"]
    status, _, body = edge.req(method="POST", token=admin, headers=ctype, body=rpc("delete_repo"))
    assert status == 200, body
    status, _, body = edge.req(method="POST", token=plain, headers=ctype, body=rpc("echo"))
    assert status == 200, body
    status, _, _ = edge.req(method="POST", token=admin, headers=ctype, body=rpc("delete_repo", pad=1000))
    assert status == 413
    batch = "[" + rpc("echo") + "," + rpc("delete_repo") + "]"
    assert edge.req(method="POST", token=plain, headers=ctype, body=batch)[0] == 403, "the strictest member"


def test_a_gated_request_is_decided_once(edge):
    """A tool call passes at its headers, then its body decides: one audit
    line for the request, at the body's verdict, naming who it was."""
    ctype = {"content-type": "application/json"}
    plain, admin = edge.token("dora"), edge.token("dora", f"{MCP_SCOPE} mcp:admin")
    assert edge.req(method="POST", token=plain, headers=ctype, body=rpc("delete_repo"))[0] == 403
    assert edge.req(method="POST", token=admin, headers=ctype, body=rpc("delete_repo"))[0] == 200

    def doras():
        lines = [l.split(" audit ", 1)[1] for l in edge.envoy.proc.text().splitlines() if " audit {" in l]
        return [e for e in map(json.loads, lines) if e["sub"] == "dora"]

    deadline = time.monotonic() + 5
    while len(doras()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = doras()
    assert [(e["decision"], e["status"]) for e in entries] == [("deny", 403), ("allow", None)], entries
    assert entries[0]["reason"] == "insufficient scope" and entries[0]["target"] == "backend"


def test_every_metric_moves(edge):
    before = edge.stats()
    alice = edge.token("alice")
    edge.req()                                                          # missing_token
    edge.req(token=tamper_signature(alice))                             # invalid_token
    edge.req(token=edge.token("alice", None))                           # insufficient_scope
    call(edge.ports["main"], "/mcp", header_list=[("authorization", "Bearer a"), ("authorization", "Bearer b")])
    edge.req(path="/healthz")                                           # skipped
    edge.req(token=edge.token("blocked"))                               # exchange_refused
    edge.req(method="POST", token=alice, headers={"content-type": "application/json"},
             body=rpc("delete_repo", pad=1000))                         # body_too_large
    edge.req("bad-gateway", token=alice)
    edge.req("hang", token=alice)
    edge.req("idp-500", token=alice)
    edge.req("no-keys", token=alice)                                    # jwks fetch fails: unavailable
    edge.req("own-keys", token=alice)                                   # jwks fetch ok
    bob = edge.token("bob")
    for t in (alice, alice, bob):                                       # miss, hit, miss + overwrite (1 slot)
        assert edge.req(token=t)[0] == 200
    expected = {
        "requests.allowed", "requests.skipped", "requests.missing_token", "requests.invalid_request",
        "requests.invalid_token", "requests.insufficient_scope", "requests.body_too_large",
        "requests.exchange_refused", "requests.exchange_bad_gateway", "requests.exchange_timeout",
        "requests.unavailable", "exchanges.ok", "exchanges.failed", "cache.hit", "cache.miss",
        "cache.overwrite", "jwks.fetch_ok", "jwks.fetch_failed",
    }
    # Workers hand their counts to Envoy on their 500 ms tick.
    deadline = time.monotonic() + 10
    while True:
        after = edge.stats()
        moved = {k for k in after if after[k] > before.get(k, 0)}
        if expected <= moved or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= moved, f"did not move: {sorted(expected - moved)}"
    assert after["jwks.keys"] >= 1
    prom = call(edge.envoy.admin, "/stats/prometheus")[2]
    assert re.search(r"^token_exchange_filter_requests_allowed\{\} [1-9]", prom, re.M), "in Prometheus form too"
    # Histograms reach the admin API at Envoy's stats flush (every 5 s).
    deadline = time.monotonic() + 15
    while not re.search(r"^token_exchange_filter_exchange_latency_ms_count\{\} [1-9]", prom, re.M):
        assert time.monotonic() < deadline, "the latency histogram never filled"
        time.sleep(0.5)
        prom = call(edge.envoy.admin, "/stats/prometheus")[2]


def test_audit_lines_hold_decisions_and_never_a_token(edge):
    token = edge.token("alice")
    edge.req(token=token)
    edge.req()
    lines = [l.split(" audit ", 1)[1] for l in edge.envoy.proc.text().splitlines() if " audit {" in l]
    entries = [json.loads(l) for l in lines]
    assert any(e["decision"] == "allow" and e["sub"] == "alice" and e["target"] == BACKEND_AUDIENCE
               and e["cache"] in ("hit", "miss") and e["iss"] == edge.mcp_as.issuer for e in entries)
    assert any(e["decision"] == "deny" and e["reason"] == "missing bearer token" and e["status"] == 401
               for e in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    wasm_lines = [l for l in edge.envoy.proc.text().splitlines() if "wasm log" in l]
    for t in edge.tokens:
        for part in t.split("."):
            assert not any(part in l for l in wasm_lines if len(part) >= 16), "a token in the log"
    assert not any(GW_SECRET in l for l in wasm_lines)
