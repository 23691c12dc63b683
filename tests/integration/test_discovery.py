"""Issue 9: without oidc.jwksUrl, the filter reads the JWKS URL from the
issuer's metadata (OpenID Connect Discovery, else RFC 8414), in real Envoy."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import CLIENT, SECRET
from harness import MCP_AUDIENCE, MCP_SCOPE, WASM, Backend, Envoy, IdP, free_port

RESOURCE = "urn:test:mcp"
OPENID = "/.well-known/openid-configuration"
OAUTH = "/.well-known/oauth-authorization-server"


class Metadata:
    """A metadata server in a thread of the test process: answers the paths
    in `documents` with that JSON, anything else with 404, and remembers
    every path asked for."""

    def __init__(self):
        self.documents = {}
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.seen.append(self.path)
                doc = outer.documents.get(self.path)
                body = json.dumps(doc).encode() if doc is not None else b"not found"
                self.send_response(200 if doc is not None else 404)
                self.send_header("content-type", "application/json" if doc is not None else "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def idp(cleanup, issuer=None):
    """The MCP authorization server; with `issuer`, it signs as that issuer
    while listening on its own port."""
    return IdP(cleanup, "mcp-as", issuer=issuer,
               resources={RESOURCE: {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE}},
               clients=[{"client_id": CLIENT, "client_secret": SECRET}]).start()


def envoy(cleanup, issuer, ports, **oidc):
    """Envoy with the filter configured without jwksUrl; each of `ports` gets
    the Istio-default cluster name that the filter derives for it."""
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    backend = Backend(cleanup)
    config = {"oidc": {"issuer": issuer, "audience": MCP_AUDIENCE, "requiredScopes": [MCP_SCOPE],
                       "clockSkewSeconds": 1, **oidc}}
    clusters = {f"outbound|{p}||127.0.0.1": p for p in ports}
    return Envoy(cleanup, backend.port, config, clusters).wait_ready(), backend


def token(authorization_server):
    return authorization_server.token(CLIENT, SECRET, RESOURCE, MCP_SCOPE)


def test_keys_from_the_idps_own_discovery_document(cleanup):
    as_ = idp(cleanup)
    proxy, backend = envoy(cleanup, as_.issuer, [as_.port])
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
    meta = Metadata()
    try:
        issuer = f"{meta.origin}/tenant"
        as_ = idp(cleanup, issuer=issuer)
        meta.documents[f"{OAUTH}/tenant"] = {"issuer": issuer, "jwks_uri": f"http://127.0.0.1:{as_.port}/jwks"}
        proxy, backend = envoy(cleanup, issuer, [meta.port, as_.port])
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
    finally:
        meta.stop()


def test_issuer_mismatch_fails_closed(cleanup):
    """The document's issuer differs (a trailing slash, and a line break that
    must not reach the log as one): no keys are fetched, every request gets
    503, none reaches the upstream, and the log says why."""
    meta = Metadata()
    try:
        as_ = idp(cleanup)
        wrong = f"{meta.origin}/\nforged: log line"
        meta.documents[OPENID] = {"issuer": wrong, "jwks_uri": f"{meta.origin}/jwks"}
        proxy, backend = envoy(cleanup, meta.origin, [meta.port])
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
    finally:
        meta.stop()


def test_unusable_jwks_uri_fails_closed(cleanup):
    """A matching issuer, but a jwks_uri that a configured URL could not be
    (plain http off loopback): no fetch, 503."""
    meta = Metadata()
    try:
        as_ = idp(cleanup)
        meta.documents[OPENID] = {"issuer": meta.origin, "jwks_uri": "http://idp.example.com/jwks"}
        proxy, backend = envoy(cleanup, meta.origin, [meta.port])
        code, _, body = proxy.get(token=token(as_))
        assert code == 503, body
        assert backend.requests() == 0
        log = proxy.proc.text()
        assert (f"oidc discovery from {meta.origin}{OPENID} failed: jwks_uri: plain http is only allowed "
                "for loopback hosts") in log
    finally:
        meta.stop()


def test_jwks_cluster_serves_discovery_and_keys(cleanup):
    """With jwksCluster, both callouts go to it, whatever the URLs' hosts."""
    as_ = idp(cleanup)
    backend = Backend(cleanup)
    config = {"oidc": {"issuer": as_.issuer, "audience": MCP_AUDIENCE, "jwksCluster": "idp"}}
    proxy = Envoy(cleanup, backend.port, config, {"idp": as_.port}, port=free_port()).wait_ready()
    code, _, body = proxy.get(token=token(as_))
    assert code == 200, body
    assert f"oidc discovery: JWKS at {as_.issuer}/jwks via cluster idp" in proxy.proc.text()
