"""Issue 10, scope step-up: a tool that needs more than the route's scope.

The filter's `mcp.toolScopes` makes `tools/call` of `ping` need `mcp:admin`
on top of `mcp:tools:call`. A client that logged in with the scope the 401
named can list tools and call `whoami`; its `ping` gets

  403  WWW-Authenticate: Bearer error="insufficient_scope",
       scope="mcp:tools:call mcp:admin", resource_metadata="…"

and a client following the MCP authorization spec authorizes again, asking
for the scopes the challenge names (kept together with the ones it already
had), and retries. Here that client is the official Python SDK (PyPI `mcp`
2.3): its OAuth provider treats a 403 with error="insufficient_scope" as a
step-up and runs the authorization code flow again, even though it holds a
refresh token (a refresh cannot widen the scope).

Dynamic client registration gets in the way: the SDK registers with `scope`
set to what the first 401 named, and an authorization server that holds a
client to its registered scope (oidc-provider does, as RFC 7591 allows)
refuses the step-up with invalid_scope; the SDK does not register again.
So the step-up test uses a pre-registered public client with no scope
limit (as VS Code and other hosts with a known client id do), and a second
test pins down what happens with dynamic registration.

The stack is test_mcp_python.py's: the interactive MCP AS (code flow with
PKCE, dynamic registration, the login and consent pages driven by login.py)
whose resource offers `mcp:tools:call mcp:admin`, the backend AS that
exchanges its tokens, the verifying backend, and the TypeScript SDK's MCP
server behind Envoy with the filter.
"""

import json
import urllib.parse
from contextlib import AsyncExitStack

import anyio
import httpx2
import pytest
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata

from conftest import plugin_config
from harness import (
    MCP_AUDIENCE, MCP_SCOPE, ROOT, WASM, Backend, Cleanup, Envoy, IdP, Proc, decode_part, free_port, wait_port,
)
from login import login
from mcp_client import MemoryStorage

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ADMIN = "mcp:admin"
GW_SECRET = "gw-secret"
APP = "step-up-app"  # pre-registered public client
REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens: login() stops there


class StepUpStack:
    def __init__(self, cleanup):
        self.envoy_port = free_port()
        self.resource = f"http://127.0.0.1:{self.envoy_port}/mcp"
        self.metadata_url = f"http://127.0.0.1:{self.envoy_port}/.well-known/oauth-protected-resource/mcp"
        self.mcp_as = IdP(
            cleanup, "mcp-as",
            # The only resource, so code flows that name none get it; both
            # scopes may be granted for it.
            resources={self.resource: {"audience": MCP_AUDIENCE, "scope": f"{MCP_SCOPE} {ADMIN}"}},
            clients=[{
                "client_id": APP, "token_endpoint_auth_method": "none", "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            }],
            extra_env={"IDP_INTERACTIVE": "1"},
        ).start()
        self.backend_as = IdP(
            cleanup, "backend-as",
            resources={"https://api.example.com/": {"audience": "backend", "scope": "backend:read"}},
            clients=[{"client_id": "gw", "client_secret": GW_SECRET, "grant_types": [EXCHANGE_GRANT]}],
            extra_env={"IDP_TRUST_ISSUER": self.mcp_as.issuer, "IDP_TRUST_AUDIENCE": MCP_AUDIENCE},
        ).start()
        self.backend = Backend(cleanup, verify_with=self.backend_as, audience="backend")
        mcp_port = free_port()
        server = cleanup.add(Proc(
            "mcp-server", ["node", "server.mjs"], cwd=ROOT / "tests" / "mcp",
            env={"MCP_PORT": str(mcp_port), "BACKEND_URL": f"http://127.0.0.1:{self.backend.port}"},
        ))
        wait_port(mcp_port, server.proc, server.log)
        config = plugin_config(self.mcp_as, self.envoy_port)
        config["tokenExchange"] = {
            "tokenUrl": f"{self.backend_as.issuer}/token",
            "clientId": "gw",
            "clientSecretEnv": "GW_SECRET",
            "audience": "backend",
            "scopes": ["backend:read"],
        }
        config["mcp"] = {"toolScopes": {"ping": [ADMIN]}}
        clusters = {f"outbound|{p}||127.0.0.1": p for p in (self.mcp_as.port, self.backend_as.port)}
        self.envoy = Envoy(cleanup, mcp_port, config, clusters, port=self.envoy_port,
                           env={"GW_SECRET": GW_SECRET}).wait_ready()


@pytest.fixture(scope="module")
def su():
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    cleanup = Cleanup()
    try:
        yield StepUpStack(cleanup)
    finally:
        cleanup.close()


class AuthorizationFailed(Exception):
    """The IdP sent the user back with an error instead of a code."""


class User:
    """A person behind the SDK's OAuth provider: every authorization URL the
    SDK opens is recorded and logged in to (and consented) as `name`."""

    def __init__(self, name, pre_registered=False):
        self.name = name
        self.storage = MemoryStorage()
        if pre_registered:
            self.storage.client_info = OAuthClientInformationFull(
                client_id=APP, redirect_uris=[REDIRECT], grant_types=["authorization_code", "refresh_token"],
                response_types=["code"], token_endpoint_auth_method="none")
        self.landed = []  # where the IdP sent the user back each time
        self.authorization_urls = []
        self.challenges = []  # (status, WWW-Authenticate) of every refused MCP request

    async def open_browser(self, url):
        self.authorization_urls.append(url)
        self.landed.append(await anyio.to_thread.run_sync(login, url, self.name))

    async def read_callback(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.landed[-1]).query)
        if "code" not in q:
            raise AuthorizationFailed(self.landed[-1])
        return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0])

    async def on_response(self, response):
        if response.status_code in (401, 403) and response.request.url.path == "/mcp":
            self.challenges.append((response.status_code, response.headers.get("www-authenticate")))

    def provider(self, resource):
        metadata = OAuthClientMetadata(
            client_name=f"step-up {self.name}",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        )
        return OAuthClientProvider(resource, metadata, self.storage, self.open_browser, self.read_callback)


def scope_of(url):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["scope"][0].split()


def run_session(su, user, may_fail=False):
    """whoami, then ping (which needs mcp:admin), then whoami again, in one
    MCP session; returns what it saw. With `may_fail`, an error ends it and
    is returned as `failed`."""
    seen = {}

    async def run():
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx2.AsyncClient(
                auth=user.provider(su.resource), event_hooks={"response": [user.on_response]},
                timeout=httpx2.Timeout(30, read=120)))
            read, write = await stack.enter_async_context(streamable_http_client(su.resource, http_client=http))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            result = await session.call_tool("whoami", {})
            assert not result.is_error, result
            seen["whoami_before"] = json.loads(result.content[0].text)
            seen["token_before"] = user.storage.tokens.access_token
            seen["refresh_before"] = user.storage.tokens.refresh_token
            seen["logins_before"] = len(user.authorization_urls)
            result = await session.call_tool("ping", {})  # 403, step-up, retried
            assert not result.is_error, result
            seen["ping"] = result.content[0].text
            result = await session.call_tool("whoami", {})
            assert not result.is_error, result
            seen["whoami_after"] = json.loads(result.content[0].text)

    if not may_fail:
        anyio.run(run)
        return seen
    try:
        anyio.run(run)
    except Exception as e:  # noqa: BLE001 - the transport's task group raises it
        seen["failed"] = e
    return seen


def causes(exc):
    """`exc` and everything it was raised from or grouped with."""
    todo, out = [exc], []
    while todo:
        e = todo.pop()
        out.append(e)
        todo.extend(getattr(e, "exceptions", ()))
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return out


def assert_step_up_challenge(su, user):
    """ping was refused once, with a challenge naming the scopes it needs."""
    step_up = [h for status, h in user.challenges if status == 403]
    assert len(step_up) == 1, user.challenges
    challenge = step_up[0]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert f'scope="{MCP_SCOPE} {ADMIN}"' in challenge
    assert f'resource_metadata="{su.metadata_url}"' in challenge


def test_python_sdk_steps_up_on_insufficient_scope(su):
    user = User("frank", pre_registered=True)
    seen = run_session(su, user)

    # First login: the scope the 401 named, nothing more; whoami is enough.
    assert seen["logins_before"] == 1
    first = user.authorization_urls[0]
    assert scope_of(first) == [MCP_SCOPE]
    assert decode_part(seen["token_before"], 1)["scope"].split() == [MCP_SCOPE]
    assert seen["refresh_before"], "it held a refresh token, and still re-authorized"
    assert seen["whoami_before"]["verified_claims"]["sub"] == "frank"

    assert_step_up_challenge(su, user)

    # The SDK authorized again, asking for the wider scope, as the same client.
    assert len(user.authorization_urls) == 2
    second = user.authorization_urls[1]
    assert set(scope_of(second)) == {MCP_SCOPE, ADMIN}
    q1, q2 = (urllib.parse.parse_qs(urllib.parse.urlsplit(u).query) for u in (first, second))
    assert q2["client_id"] == q1["client_id"] == [APP]
    assert q2["resource"] == [su.resource]
    assert q2["code_challenge"] != q1["code_challenge"], "a fresh PKCE verifier"

    # The retried ping succeeded with the new token, and the user is unchanged.
    assert seen["ping"] == "pong"
    after = decode_part(user.storage.tokens.access_token, 1)
    assert set(after["scope"].split()) == {MCP_SCOPE, ADMIN}
    assert after["sub"] == "frank" and after["aud"] == MCP_AUDIENCE
    claims = seen["whoami_after"]["verified_claims"]
    assert claims["sub"] == "frank" and claims["aud"] == "backend" and claims["iss"] == su.backend_as.issuer


def test_python_sdk_step_up_after_dynamic_registration_is_refused_by_the_idp(su):
    """What happens today with dynamic registration. The filter's part is
    the same (403 naming the scopes) and the SDK does step up, but it
    registered the client with scope="mcp:tools:call" (the first 401's), so
    oidc-provider refuses `mcp:admin` for that client and sends the user back
    with error=invalid_scope; the SDK raises instead of registering again.
    If this starts passing the step-up, fold it into the test above."""
    user = User("grace")
    seen = run_session(su, user, may_fail=True)

    assert seen["logins_before"] == 1
    assert seen["whoami_before"]["verified_claims"]["sub"] == "grace"
    assert user.storage.client_info.scope == MCP_SCOPE, "registered with the first challenge's scope"
    assert_step_up_challenge(su, user)
    assert len(user.authorization_urls) == 2
    assert set(scope_of(user.authorization_urls[1])) == {MCP_SCOPE, ADMIN}
    back = urllib.parse.parse_qs(urllib.parse.urlsplit(user.landed[1]).query)
    assert back["error"] == ["invalid_scope"] and back["scope"] == [ADMIN], user.landed[1]
    assert "failed" in seen and any(isinstance(e, AuthorizationFailed) for e in causes(seen["failed"])), seen
    assert "ping" not in seen
