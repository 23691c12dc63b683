"""Pieces the benchmark scripts share: percentiles, timed requests, the Envoy
version, and the two demo authorization servers (MCP AS and backend AS)."""

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from harness import ENVOY, IdP  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
SECRET_ENV = "TOKEN_EXCHANGE_CLIENT_SECRET"


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
    """The MCP AS (hour-long tokens for `resource`, audience mcpserver, so a
    run cannot outlast its tokens) and the backend AS that exchanges them for
    audience backend, with client gw / gw-secret. Returns (mcp, backend_as,
    oidc section, config with tokenExchange, the secret's value)."""
    mcp = IdP(cleanup, "bench-mcp-as",
              resources={resource: {"audience": "mcpserver", "scope": "mcp:tools:call", "ttl": 3600}},
              clients=clients).start()
    backend_as = IdP(cleanup, "bench-backend-as",
                     resources={"https://api.example.com/": {"audience": "backend", "scope": "backend:read",
                                                              "ttl": 3600}},
                     clients=[{"client_id": "gw", "client_secret": "gw-secret", "grant_types": [GRANT]}],
                     extra_env={"IDP_TRUST_ISSUER": mcp.issuer, "IDP_TRUST_AUDIENCE": "mcpserver"}).start()
    oidc = {"issuer": mcp.issuer, "audience": "mcpserver", "jwksUrl": f"{mcp.issuer}/jwks",
            "requiredScopes": ["mcp:tools:call"]}
    exchange = {"oidc": oidc, "tokenExchange": {
        "tokenUrl": f"{backend_as.issuer}/token", "clientId": "gw", "clientSecretEnv": SECRET_ENV,
        "audience": "backend", "scopes": ["backend:read"], "requestedTokenType": "access_token"}}
    return mcp, backend_as, oidc, exchange, "gw-secret"
