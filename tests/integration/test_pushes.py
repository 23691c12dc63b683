"""Issue 16: config pushes under load keep what they do not change, and
shared data stays bounded.

A gateway (gateway.py: Envoy with 2 workers, the filter fed by a watched
ECDS directory as istiod pushes it) fronts two MCP servers, /a/ and /b/.
One MCP AS issues their callers' tokens (each server its own audience); one
backend AS exchanges them, each server's for its own target (audience
backend-a or backend-b), and counts the exchanges of each target. The
backend verifies every token it gets, and that it is the token of the user
who sent the request (load.py's marker).

60 users, 30 per server, each make a first request (one exchange each).
Then 16 client threads send requests without pause while the config is
replaced 10 times, each time with one more server that no request goes to;
each push is waited for until the new server's metadata is served on new
connections 20 times in a row (so on both workers), and then serves the
load for 0.3 s. Then one target's
scopes change: only its users exchange again.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from constants import BACKEND_SCOPE, GW_CLIENT, GW_SECRET, GW_SECRET_ENV, MCP_SCOPE
from gateway import Gateway
from harness import Backend, IdP, free_port
from load import MARKER, run
from stacks import clients_for, start_backend_as

USERS, THREADS, PUSHES = 60, 16, 10
WRITE_SCOPE = "backend:write"
KEYS_CREATED = "token_exchange_filter.shared_data.keys_created"
# Shared-data keys of the one issuer: its keys, their lease, the last attempt.
ISSUER_KEYS = 3


def server_of(user):
    return "a" if int(user[1:]) < USERS // 2 else "b"


@pytest.fixture(scope="module")
def ps(module_cleanup):
    port = free_port()
    users = [f"u{i:02d}" for i in range(USERS)]
    resource = lambda server: f"http://127.0.0.1:{port}/{server}/mcp"  # noqa: E731
    mcp_as = IdP(module_cleanup, "push-mcp-as", clients=clients_for(*users), resources={
        resource(s): {"audience": f"mcp-{s}", "scope": MCP_SCOPE, "ttl": 3600} for s in "ab"}).start()
    backend_as = start_backend_as(module_cleanup, mcp_as, "push-backend-as", audience="mcp-a,mcp-b", resources={
        f"https://{s}.example.com/": {"audience": f"backend-{s}", "scope": f"{BACKEND_SCOPE} {WRITE_SCOPE}",
                                      "ttl": 3600} for s in "ab"})
    backend = Backend(module_cleanup, verify_with=backend_as, audience="backend-a,backend-b", marker=MARKER)

    def config(servers, scopes=None):
        """The two servers and `servers` more, each a rule of its own;
        `scopes`: a server's exchange scopes other than BACKEND_SCOPE."""
        rules = [{
            "match": {"pathPrefix": f"/{s}/"},
            "oidc": {"audience": f"mcp-{s}", "resourceUrl": resource(s), "requiredScopes": [MCP_SCOPE]},
            "tokenExchange": {"tokenUrl": f"{backend_as.issuer}/token", "clientId": GW_CLIENT,
                              "clientSecretEnv": GW_SECRET_ENV, "audience": f"backend-{s}",
                              "scopes": (scopes or {}).get(s, [BACKEND_SCOPE])},
        } for s in ["a", "b", *servers]]
        return {"oidc": {"issuer": mcp_as.issuer, "jwksUrl": f"{mcp_as.issuer}/jwks", "clockSkewSeconds": 1},
                "rules": rules + [{"match": {}, "skip": True}]}

    gateway = Gateway(module_cleanup, "pushes", {"*": [("/", backend.port, None)]}, [mcp_as.port, backend_as.port],
                      config([]), env={GW_SECRET_ENV: GW_SECRET}, port=port)
    with ThreadPoolExecutor(8) as pool:
        tokens = dict(zip(users, pool.map(
            lambda u: mcp_as.token(u, f"{u}-secret", resource(server_of(u)), MCP_SCOPE), users)))
    return SimpleNamespace(gateway=gateway, mcp_as=mcp_as, backend_as=backend_as, backend=backend, tokens=tokens,
                           config=config)


def path_of(user):
    return f"/{server_of(user)}/mcp"


def each_user_once(ps):
    """One request per user, users in parallel; the claims the backend verified, by user."""
    def one(user):
        status, _, body = ps.gateway.get(path_of(user), ps.tokens[user], headers={MARKER: user})
        assert status == 200, body
        return json.loads(body)["verified_claims"]

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(ps.tokens, pool.map(one, ps.tokens)))


def exchanges(ps):
    return {s: ps.backend_as.exchanges(f"backend-{s}") for s in "ab"}


def keys_created(ps):
    """The metric, once every worker has counted its writes (each hands its
    counts over on its tick, every 500 ms)."""
    time.sleep(1.2)
    return ps.gateway.stat(KEYS_CREATED)


def test_pushes_under_load_keep_cached_tokens_and_shared_data_bounded(ps):
    g, half = ps.gateway, USERS // 2
    seen = each_user_once(ps)
    assert all(c["sub"] == u and c["aud"] == f"backend-{server_of(u)}" for u, c in seen.items())
    assert exchanges(ps) == {"a": half, "b": half}, "one exchange per user"
    warm, fetched = keys_created(ps), g.callouts(ps.mcp_as.port)
    # A key per user's cache slot and the issuer's; two workers may both
    # count one key they created at the same moment.
    assert USERS + ISSUER_KEYS <= warm <= USERS + ISSUER_KEYS + 2, warm

    stop, load = threading.Event(), {}
    loader = threading.Thread(target=lambda: load.update(
        run(g.port, ps.tokens, concurrency=THREADS, stop=stop, path_of=path_of, timeout=10)))
    loader.start()
    try:
        for k in range(1, PUSHES + 1):
            g.push(ps.config([f"s{j}" for j in range(1, k + 1)]))
            g.wait_everywhere(f"/.well-known/oauth-protected-resource/s{k}/mcp")
            time.sleep(0.3)  # each config serves the load a while
    finally:
        stop.set()
        loader.join()
    print(f"{load['requests']} requests under {PUSHES} pushes: {load}")
    assert load["requests"] > 10 * THREADS
    assert (load["other"], load["5xx"], load["timeouts"]) == (0, 0, 0), "every request ends 200, none hangs"
    assert ps.backend.mismatches() == 0, "every user got their own exchanged token"
    assert exchanges(ps) == {"a": half, "b": half}, "no exchange in 10 pushes: every cached token kept"
    pushed = keys_created(ps)
    assert pushed == warm, f"shared data grew by {pushed - warm} keys in {PUSHES} pushes"
    assert g.callouts(ps.mcp_as.port) == fetched, "the issuer's keys, kept by every push"

    # Server a's target asks for another scope: its users exchange again, once
    # each, and b's keep their tokens.
    g.push(ps.config([f"s{j}" for j in range(1, PUSHES + 2)], scopes={"a": [BACKEND_SCOPE, WRITE_SCOPE]}))
    g.wait_everywhere(f"/.well-known/oauth-protected-resource/s{PUSHES + 1}/mcp")
    seen = each_user_once(ps)
    for user, claims in seen.items():
        want = f"{BACKEND_SCOPE} {WRITE_SCOPE}" if server_of(user) == "a" else BACKEND_SCOPE
        assert (claims["sub"], claims["scope"]) == (user, want)
    assert exchanges(ps) == {"a": 2 * half, "b": half}, "only the changed target's users exchanged again"
    changed = keys_created(ps)
    assert changed <= pushed + half, "at most a key per new entry (and never past maxEntries)"
    print(f"keys_created: {warm} after the first requests, {pushed} after {PUSHES} pushes, "
          f"{changed} after a's scopes changed")
