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

import urllib.parse

import pytest

from constants import ADMIN_SCOPE, BACKEND_AUDIENCE, BACKEND_SCOPE, MCP_AUDIENCE, MCP_SCOPE
from harness import decode_part, run_client
from login import login
from stacks import Stack, clients_for, sole_resource

AGENT = "agent-007"
AGENT_SECRET = f"{AGENT}-secret"


@pytest.fixture(scope="module")
def ms(module_cleanup):
    return Stack(module_cleanup, exchange=True, mcp_server=True, interactive=True,
                 resources=sole_resource(f"{MCP_SCOPE} {ADMIN_SCOPE}"), clients=clients_for(AGENT))


def check_whoami(ms, events, sub):
    """Both calls reached the backend with an exchanged token for `sub`."""
    results = [e["result"] for e in events if e["event"] == "whoami"]
    assert len(results) == 2, events
    for got in results:
        claims = got["verified_claims"]  # verified by the backend against the backend AS
        assert claims["iss"] == ms.backend_as.issuer
        assert claims["aud"] == BACKEND_AUDIENCE
        assert claims["sub"] == sub
        assert claims["scope"] == BACKEND_SCOPE


def check_never_seen(ms, token):
    """The MCP server got exchanged tokens only, never the client's."""
    seen = ms.mcp.seen()
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
    events = run_client("client-oauth.mjs", {"MCP_URL": ms.resource}, user)

    assert len(authorize) == 1
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize[0]).query)
    assert authorize[0].startswith(f"{ms.mcp_as.issuer}/auth?")
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"]
    assert q["resource"] == [ms.resource]
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
        "MCP_URL": ms.resource,
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
