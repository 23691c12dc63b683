"""Issue 9: without oidc.jwksUrl, the filter reads the JWKS URL from the
issuer's metadata (OpenID Connect Discovery, else RFC 8414), in real Envoy."""

import json
import time

from constants import CLIENT, MCP_AUDIENCE, MCP_RESOURCE, MCP_SCOPE, SECRET
from harness import IdP
from httpd import HttpServer
from stacks import Stack, clients_for

OPENID = "/.well-known/openid-configuration"
OAUTH = "/.well-known/oauth-authorization-server"


class Metadata(HttpServer):
    """A metadata server in a thread of the test process: answers the paths
    in `documents` with that JSON, anything else with 404, and remembers
    every path asked for."""

    def __init__(self):
        self.documents = {}
        self.seen = []
        super().__init__(self.answer)

    def answer(self, req):
        self.seen.append(req.path)
        doc = self.documents.get(req.path)
        if doc is None:
            return 404, {"content-type": "text/plain"}, b"not found"
        return 200, {"content-type": "application/json"}, json.dumps(doc).encode()


def idp(cleanup, issuer=None):
    """The MCP authorization server; with `issuer`, it signs as that issuer
    while listening on its own port."""
    return IdP(cleanup, "mcp-as", issuer=issuer,
               resources={MCP_RESOURCE: {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE}},
               clients=clients_for(CLIENT)).start()


def envoy(cleanup, as_, issuer, ports, **oidc):
    """Envoy with the filter configured for `issuer` without jwksUrl; each of
    `ports` gets the Istio-default cluster name that the filter derives for it."""
    stack = Stack(cleanup, mcp_as=as_, clusters=ports,
                  oidc={"issuer": issuer, "jwksUrl": None, "resourceUrl": None, **oidc})
    return stack.envoy, stack.backend


def token(authorization_server):
    return authorization_server.token(CLIENT, SECRET, MCP_RESOURCE, MCP_SCOPE)


def test_keys_from_the_idps_own_discovery_document(cleanup):
    as_ = idp(cleanup)
    proxy, backend = envoy(cleanup, as_, as_.issuer, [as_.port])
    t = token(as_)
    for _ in range(4):
        code, _, body = proxy.get(token=t)
        assert code == 200, body
    assert backend.requests() == 4
    log = proxy.proc.text()
    assert (f"JWKS URL from {as_.issuer}{OPENID} (else {as_.issuer}{OAUTH}) "
            f"via cluster outbound|{as_.port}||127.0.0.1") in log
    assert (f"oidc discovery: JWKS at {as_.issuer}/jwks via cluster outbound|{as_.port}||127.0.0.1 "
            f"(from {as_.issuer}{OPENID})") in log
    assert "panicked" not in log
    assert "unknown callout" not in log, "discovery answers are the key fetch's own"
    assert t not in log, "tokens are never logged"


def test_rfc8414_fallback_and_keys_on_another_host(cleanup):
    """An issuer with a path whose OpenID document is missing: the RFC 8414
    document (well-known segment before the path) names a JWKS on another
    port, which is fetched through that port's own default cluster."""
    meta = cleanup.add(Metadata())
    issuer = f"{meta.origin}/tenant"
    as_ = idp(cleanup, issuer=issuer)
    meta.documents[f"{OAUTH}/tenant"] = {"issuer": issuer, "jwks_uri": f"http://127.0.0.1:{as_.port}/jwks"}
    proxy, backend = envoy(cleanup, as_, issuer, [meta.port, as_.port])
    code, _, body = proxy.get(token=token(as_))
    assert code == 200, body
    assert backend.requests() == 1
    assert meta.seen[:2] == [f"/tenant{OPENID}", f"{OAUTH}/tenant"]
    assert set(meta.seen) == {f"/tenant{OPENID}", f"{OAUTH}/tenant"}
    log = proxy.proc.text()
    assert f"oidc discovery: {issuer}{OPENID} answered 404; trying {meta.origin}{OAUTH}/tenant" in log
    assert (f"oidc discovery: JWKS at http://127.0.0.1:{as_.port}/jwks via cluster "
            f"outbound|{as_.port}||127.0.0.1 (from {meta.origin}{OAUTH}/tenant)") in log
    assert "unknown callout" not in log, "discovery answers are the key fetch's own"


def test_issuer_mismatch_fails_closed(cleanup):
    """The document's issuer differs (a trailing slash, and a line break that
    must not reach the log as one): no keys are fetched, every request gets
    503, none reaches the upstream, and the log says why."""
    meta = cleanup.add(Metadata())
    as_ = idp(cleanup)
    wrong = f"{meta.origin}/\nforged: log line"
    meta.documents[OPENID] = {"issuer": wrong, "jwks_uri": f"{meta.origin}/jwks"}
    proxy, backend = envoy(cleanup, as_, meta.origin, [meta.port])
    t = token(as_)
    for _ in range(3):
        code, headers, body = proxy.get(token=t)
        assert code == 503, body
        assert headers.get("retry-after")
        doc = json.loads(body)
        assert doc["error"] == "temporarily_unavailable"
        assert doc["error_description"] == "signing keys unavailable"
    # After the back-off, discovery is retried, and fails the same way.
    time.sleep(1.5)
    assert proxy.get(token=t)[0] == 503
    assert backend.requests() == 0, "the upstream is never reached"
    assert "/jwks" not in meta.seen, "no JWKS fetch from a document for another issuer"
    assert meta.seen and set(meta.seen) == {OPENID}, "a mismatch is not a reason to try RFC 8414"
    log = proxy.proc.text()
    expected = (f'oidc discovery: issuer in {meta.origin}{OPENID} is "{meta.origin}/\\nforged: log line", '
                f'expected "{meta.origin}"')
    lines = [line for line in log.splitlines() if expected in line]
    assert lines, log[-3000:]
    assert "error" in lines[0].lower()
    assert not any(line.startswith("forged") for line in log.splitlines())
    assert "panicked" not in log


def test_unusable_jwks_uri_fails_closed(cleanup):
    """A matching issuer, but a jwks_uri that a configured URL could not be
    (plain http off loopback): no fetch, 503."""
    meta = cleanup.add(Metadata())
    as_ = idp(cleanup)
    meta.documents[OPENID] = {"issuer": meta.origin, "jwks_uri": "http://idp.example.com/jwks"}
    proxy, backend = envoy(cleanup, as_, meta.origin, [meta.port])
    code, _, body = proxy.get(token=token(as_))
    assert code == 503, body
    assert backend.requests() == 0
    log = proxy.proc.text()
    assert (f"oidc discovery from {meta.origin}{OPENID} failed: jwks_uri: plain http is only allowed "
            "for loopback hosts") in log


def test_jwks_cluster_serves_discovery_and_keys(cleanup):
    """With jwksCluster, both callouts go to it, whatever the URLs' hosts."""
    as_ = idp(cleanup)
    stack = Stack(cleanup, mcp_as=as_, envoy=False, oidc={
        "jwksCluster": "idp", "jwksUrl": None, "resourceUrl": None, "requiredScopes": None, "clockSkewSeconds": None})
    stack.clusters = {"idp": as_.port}
    proxy = stack.start_envoy().envoy
    code, _, body = proxy.get(token=token(as_))
    assert code == 200, body
    assert f"oidc discovery: JWKS at {as_.issuer}/jwks via cluster idp" in proxy.proc.text()
