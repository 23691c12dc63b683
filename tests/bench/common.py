"""Pieces the benchmark scripts share: percentiles, timed requests, the Envoy
version, and the two demo authorization servers (MCP AS and backend AS)."""

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from constants import (  # noqa: E402
    BACKEND_API,
    BACKEND_AUDIENCE,
    BACKEND_SCOPE,
    EXCHANGE_GRANT,
    GW_CLIENT,
    GW_SECRET,
    MCP_AUDIENCE,
    MCP_SCOPE,
    SHIPPED_SECRET_ENV,
)
from harness import ENVOY, IdP  # noqa: E402
from stacks import start_backend_as  # noqa: E402

GRANT = EXCHANGE_GRANT
SECRET_ENV = SHIPPED_SECRET_ENV


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def timed_request(conn, method, path, headers, body=None):
    """One request on a keep-alive connection; µs, asserting a 200."""
    t0 = time.perf_counter_ns()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    dt = time.perf_counter_ns() - t0
    assert resp.status == 200, resp.status
    return dt / 1000.0


def timed(conn, token):
    """GET /mcp with `token`; µs."""
    return timed_request(conn, "GET", "/mcp", {"authorization": f"Bearer {token}"})


def envoy_version():
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out) or re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "?"


def authorization_servers(cleanup, resource, clients):
    """The MCP AS (hour-long tokens for `resource`, audience MCP_AUDIENCE, so
    a run cannot outlast its tokens) and the backend AS that exchanges them
    (hour-long too) for BACKEND_AUDIENCE, with its default client. Returns
    (mcp, backend_as, oidc section, config with tokenExchange, the secret's
    value)."""
    mcp = IdP(cleanup, "bench-mcp-as",
              resources={resource: {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE, "ttl": 3600}},
              clients=clients).start()
    backend_as = start_backend_as(cleanup, mcp, "bench-backend-as", resources={
        BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE, "ttl": 3600}})
    oidc = {"issuer": mcp.issuer, "audience": MCP_AUDIENCE, "jwksUrl": f"{mcp.issuer}/jwks",
            "requiredScopes": [MCP_SCOPE]}
    exchange = {"oidc": oidc, "tokenExchange": {
        "tokenUrl": f"{backend_as.issuer}/token", "clientId": GW_CLIENT, "clientSecretEnv": SECRET_ENV,
        "audience": BACKEND_AUDIENCE, "scopes": [BACKEND_SCOPE], "requestedTokenType": "access_token"}}
    return mcp, backend_as, oidc, exchange, GW_SECRET


def many_servers(exchange, resources, issuers):
    """`exchange`'s config serving `resources` MCP servers, one per host
    (mcp<i>.example.com), with `issuers` issuers among them, ending with a
    catch-all rule: a request to any other host (the bench's own) is the
    last rule's, and validates and exchanges as `exchange` does."""
    base = exchange["oidc"]
    rules = []
    for i in range(resources):
        host = f"mcp{i}.example.com"
        rules.append({"match": {"hosts": [host], "pathPrefix": "/mcp"},
                      "oidc": {"issuer": f"{base['issuer']}/tenant{i % issuers}",
                               "jwksUrl": f"{base['issuer']}/jwks?tenant={i % issuers}",
                               "audience": f"https://{host}/mcp", "resourceUrl": f"https://{host}/mcp"},
                      "tokenExchange": {**exchange["tokenExchange"], "audience": f"backend-{i}"}})
    rules.append({"match": {}, "oidc": base})
    return {"oidc": {"requiredScopes": base["requiredScopes"], "insecureAllowHttp": True},
            "tokenExchange": exchange["tokenExchange"], "rules": rules}
