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
import pytest
from mcp.shared.auth import OAuthClientInformationFull

from constants import ADMIN_SCOPE, BACKEND_AUDIENCE, MCP_AUDIENCE, MCP_SCOPE
from harness import decode_part
from sdk_user import GRANT_TYPES, REDIRECT, AuthorizationFailed, User
from stacks import Stack, sole_resource

APP = "step-up-app"  # pre-registered public client
APP_INFO = OAuthClientInformationFull(client_id=APP, redirect_uris=[REDIRECT], grant_types=GRANT_TYPES,
                                      response_types=["code"], token_endpoint_auth_method="none")


@pytest.fixture(scope="module")
def su(module_cleanup):
    # The only resource, so code flows that name none get it; both scopes may be granted for it.
    return Stack(module_cleanup, exchange=True, mcp_server=True, interactive=True,
                 resources=sole_resource(f"{MCP_SCOPE} {ADMIN_SCOPE}"),
                 clients=[{"client_id": APP, "token_endpoint_auth_method": "none", "redirect_uris": [REDIRECT],
                           "grant_types": GRANT_TYPES, "response_types": ["code"]}],
                 sections={"mcp": {"toolScopes": {"ping": [ADMIN_SCOPE]}}})


def metadata_url(su):
    return f"http://127.0.0.1:{su.envoy_port}/.well-known/oauth-protected-resource/mcp"


def scope_of(url):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["scope"][0].split()


def run_session(su, user, may_fail=False):
    """whoami, then ping (which needs mcp:admin), then whoami again, in one
    MCP session; returns what it saw. With `may_fail`, an error ends it and
    is returned as `failed`."""
    seen = {}

    async def run():
        async with AsyncExitStack() as stack:
            session = await user.session(stack, su.resource, read_timeout=120)
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
    assert f'scope="{MCP_SCOPE} {ADMIN_SCOPE}"' in challenge
    assert f'resource_metadata="{metadata_url(su)}"' in challenge


def test_python_sdk_steps_up_on_insufficient_scope(su):
    user = User("frank", client_info=APP_INFO)
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
    assert set(scope_of(second)) == {MCP_SCOPE, ADMIN_SCOPE}
    q1, q2 = (urllib.parse.parse_qs(urllib.parse.urlsplit(u).query) for u in (first, second))
    assert q2["client_id"] == q1["client_id"] == [APP]
    assert q2["resource"] == [su.resource]
    assert q2["code_challenge"] != q1["code_challenge"], "a fresh PKCE verifier"

    # The retried ping succeeded with the new token, and the user is unchanged.
    assert seen["ping"] == "pong"
    after = decode_part(user.storage.tokens.access_token, 1)
    assert set(after["scope"].split()) == {MCP_SCOPE, ADMIN_SCOPE}
    assert after["sub"] == "frank" and after["aud"] == MCP_AUDIENCE
    claims = seen["whoami_after"]["verified_claims"]
    assert claims["sub"] == "frank" and claims["aud"] == BACKEND_AUDIENCE and claims["iss"] == su.backend_as.issuer


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
    assert set(scope_of(user.authorization_urls[1])) == {MCP_SCOPE, ADMIN_SCOPE}
    back = urllib.parse.parse_qs(urllib.parse.urlsplit(user.landed[1]).query)
    assert back["error"] == ["invalid_scope"] and back["scope"] == [ADMIN_SCOPE], user.landed[1]
    assert "failed" in seen and any(isinstance(e, AuthorizationFailed) for e in causes(seen["failed"])), seen
    assert "ping" not in seen
