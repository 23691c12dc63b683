"""Issue 10: MCP clients end to end, on real Envoy with the filter in front of
a real MCP server (the official TypeScript SDK, tests/mcp/server.mjs).

The stack is the two-AS setup of test_exchange.py: the MCP authorization
server (tests/idp with IDP_INTERACTIVE=1: code flow with PKCE, dynamic client
registration, login and consent pages), the backend AS that trusts it and
exchanges its tokens (RFC 8693), and a backend that verifies what it receives
against the backend AS. The MCP server's `whoami` tool calls the backend with
the Authorization header the MCP server received, so the backend's verified
claims are what the upstream was given. Clients are told only the MCP URL;
they find everything else from the filter's 401 challenge and RFC 9728
metadata.
"""

import json
import os
import subprocess
import threading
import urllib.parse

import pytest

from conftest import plugin_config
from harness import (
    MCP_AUDIENCE,
    MCP_SCOPE,
    ROOT,
    WASM,
    WORK,
    Backend,
    Cleanup,
    Envoy,
    IdP,
    Proc,
    call,
    decode_part,
    free_port,
    wait_port,
)
from login import login

MCP_DIR = ROOT / "tests" / "mcp"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
BACKEND_API = "https://api.example.com/"
GW_SECRET = "gw-secret"
AGENT, AGENT_SECRET = "agent-007", "agent-secret"


class McpStack:
    def __init__(self, cleanup):
        self.envoy_port = free_port()
        self.url = f"http://127.0.0.1:{self.envoy_port}/mcp"
        self.mcp_as = IdP(
            cleanup,
            "mcp-as",
            resources={self.url: {"audience": MCP_AUDIENCE, "scope": f"{MCP_SCOPE} mcp:admin"}},
            clients=[{"client_id": AGENT, "client_secret": AGENT_SECRET}],
            extra_env={"IDP_INTERACTIVE": "1"},
        ).start()
        self.backend_as = IdP(
            cleanup,
            "backend-as",
            resources={BACKEND_API: {"audience": "backend", "scope": "backend:read"}},
            clients=[{"client_id": "gw", "client_secret": GW_SECRET, "grant_types": [EXCHANGE_GRANT]}],
            extra_env={"IDP_TRUST_ISSUER": self.mcp_as.issuer, "IDP_TRUST_AUDIENCE": MCP_AUDIENCE},
        ).start()
        self.backend = Backend(cleanup, verify_with=self.backend_as, audience="backend")
        self.mcp_port = free_port()
        self.mcp_server = cleanup.add(Proc(
            "mcp-server",
            ["node", "server.mjs"],
            env={"MCP_PORT": str(self.mcp_port), "BACKEND_URL": f"http://127.0.0.1:{self.backend.port}"},
            cwd=MCP_DIR,
        ))
        wait_port(self.mcp_port, self.mcp_server.proc, self.mcp_server.log)
        config = plugin_config(self.mcp_as, self.envoy_port)
        config["tokenExchange"] = {
            "tokenUrl": f"{self.backend_as.issuer}/token",
            "clientId": "gw",
            "clientSecretEnv": "GW_SECRET",
            "audience": "backend",
            "scopes": ["backend:read"],
        }
        clusters = {f"outbound|{p}||127.0.0.1": p for p in (self.mcp_as.port, self.backend_as.port)}
        self.envoy = Envoy(cleanup, self.mcp_port, config, clusters, port=self.envoy_port,
                           env={"GW_SECRET": GW_SECRET}).wait_ready()

    def seen_by_mcp_server(self):
        """Every Authorization value the MCP server received."""
        return json.loads(call(self.mcp_port, "/_seen")[2])


@pytest.fixture(scope="module")
def ms():
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    cleanup = Cleanup()
    try:
        yield McpStack(cleanup)
    finally:
        cleanup.close()


def run_client(script, env, on_event=None, timeout=60):
    """Runs tests/mcp/<script>; returns its JSON lines. `on_event(event)` may
    answer a line for the client's stdin."""
    WORK.mkdir(parents=True, exist_ok=True)
    err = WORK / f"{script}-{free_port()}.log"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(["node", script], cwd=MCP_DIR, env={**os.environ, **env},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, text=True)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        events = []
        try:
            for line in proc.stdout:
                event = json.loads(line)
                events.append(event)
                reply = on_event(event) if on_event else None
                if reply is not None:
                    proc.stdin.write(reply + "\n")
                    proc.stdin.flush()
            code = proc.wait()
        finally:
            watchdog.cancel()
            proc.kill()
    assert code == 0, f"{script} exited with {code}:\n{err.read_text()}\nevents: {events}"
    return events


def check_whoami(ms, events, sub):
    """Both calls reached the backend with an exchanged token for `sub`."""
    results = [e["result"] for e in events if e["event"] == "whoami"]
    assert len(results) == 2, events
    for got in results:
        claims = got["verified_claims"]  # verified by the backend against the backend AS
        assert claims["iss"] == ms.backend_as.issuer
        assert claims["aud"] == "backend"
        assert claims["sub"] == sub
        assert claims["scope"] == "backend:read"


def check_never_seen(ms, token):
    """The MCP server got exchanged tokens only, never the client's."""
    seen = ms.seen_by_mcp_server()
    assert seen, "the MCP server saw no request"
    for value in seen:
        assert value and value.startswith("Bearer "), seen
        assert token not in value
        assert decode_part(value.split(" ", 1)[1], 1)["iss"] == ms.backend_as.issuer


def test_authorization_code_with_pkce_via_the_typescript_sdk(ms):
    """An interactive client: 401, RFC 9728 and RFC 8414 discovery, dynamic
    registration, authorization code with PKCE, a user who logs in and
    consents; then two tool calls, exchanged once."""
    authorize = []

    def user(event):
        if event["event"] == "authorize":
            authorize.append(event["url"])
            return login(event["url"], "alice")
        return None

    before = ms.backend_as.exchanges()
    events = run_client("client-oauth.mjs", {"MCP_URL": ms.url}, user)

    assert len(authorize) == 1
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize[0]).query)
    assert authorize[0].startswith(f"{ms.mcp_as.issuer}/auth?")
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"]
    assert q["resource"] == [ms.url]
    assert MCP_SCOPE in q["scope"][0].split()
    authorized = next(e for e in events if e["event"] == "authorized")
    assert authorized["client_id"] == q["client_id"][0]  # registered on the fly (RFC 7591)
    assert authorized["refresh_token"]
    token = authorized["access_token"]
    claims = decode_part(token, 1)
    assert claims["iss"] == ms.mcp_as.issuer
    assert claims["aud"] == MCP_AUDIENCE
    assert claims["sub"] == "alice"
    assert MCP_SCOPE in claims["scope"].split()

    check_whoami(ms, events, "alice")
    check_never_seen(ms, token)
    # One exchange for the whole session: the second call came from the cache.
    assert ms.backend_as.exchanges() == before + 1


def test_client_credentials_via_the_typescript_sdk(ms):
    """An agent: the SDK's ClientCredentialsProvider, a pre-registered
    confidential client; no user, the client is the subject."""
    before = ms.backend_as.exchanges()
    events = run_client("client-credentials.mjs", {
        "MCP_URL": ms.url,
        "MCP_CLIENT_ID": AGENT,
        "MCP_CLIENT_SECRET": AGENT_SECRET,
        "MCP_ISSUER": ms.mcp_as.issuer,
        # The SDK (1.32) asks for the provider's own scope in client_credentials
        # requests, not the scope the challenge names (as it does for the code
        # flow); without one, the token has none and the filter answers 403.
        "MCP_SCOPE": MCP_SCOPE,
    })
    authorized = next(e for e in events if e["event"] == "authorized")
    token = authorized["access_token"]
    claims = decode_part(token, 1)
    assert claims["iss"] == ms.mcp_as.issuer
    assert claims["aud"] == MCP_AUDIENCE
    assert claims["sub"] == AGENT
    assert claims["scope"].split() == [MCP_SCOPE]

    check_whoami(ms, events, AGENT)
    check_never_seen(ms, token)
    assert ms.backend_as.exchanges() == before + 1
