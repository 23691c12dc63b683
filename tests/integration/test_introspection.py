"""Opaque access tokens, checked by RFC 7662 introspection (`oidc.introspection`)
against oidc-provider's own endpoint: the MCP AS runs with IDP_OPAQUE=1, so
it issues opaque access tokens (its default format) and introspects them.

Covers active, inactive (unknown, revoked), expired and wrong-audience
tokens; the shared cache (N requests, one introspection) and its negative
entries; one introspection per worker under 20 concurrent requests; an
endpoint that is down, hangs or answers garbage (503, within the callout
timeout); a JWT beside an opaque token on one route; a rule's resource
introspecting with its own client, its answers kept apart from the other
route's; and an opaque token exchanged end to end, the backend verifying
what it gets.
"""

import base64
import concurrent.futures
import json
import secrets
import time
import urllib.parse

import pytest

from constants import BACKEND_AUDIENCE, CLIENT, MCP_AUDIENCE, MCP_SCOPE
from harness import BrokenTokenEndpoint, call, free_port, wait_for
from stacks import Stack, clients_for, mcp_resources

# The filter's client at the MCP AS, for its introspection endpoint.
INTRO_CLIENT = "gw-introspect"
INTRO_SECRET = "gw-introspect-secret"
INTRO_ENV = "INTROSPECTION_SECRET"
# How long each introspection takes at the IdP: long enough for 20
# concurrent requests to overlap on one callout.
DELAY_MS = 400
# Envoy's workers in the tests (harness.Envoy's --concurrency).
WORKERS = 2
LISTENERS = ("main", "garbage", "down", "hang", "rules")
# A second client at the MCP AS, for the rule that introspects on its own.
OTHER_CLIENT = "gw-introspect-other"
OTHER_SECRET = "gw-introspect-other-secret"
OTHER_ENV = "OTHER_INTROSPECTION_SECRET"


def introspection(url, client=INTRO_CLIENT, env=INTRO_ENV):
    return {"url": url, "clientId": client, "clientSecretEnv": env}


def resources(url):
    """The MCP AS's resources, and one whose tokens are JWTs."""
    r = mcp_resources(url)
    r["urn:test:jwt"] = {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE, "format": "jwt"}
    return r


class OpaqueStack(Stack):
    """The MCP AS issuing opaque tokens; the main listener introspects them
    there, the others at an endpoint that answers garbage, one nothing
    listens on, and one that answers after 5 s."""

    def __init__(self, cleanup, **kw):
        self.broken = cleanup.add(BrokenTokenEndpoint())
        self.closed = free_port()
        super().__init__(cleanup, listeners=LISTENERS, resources=resources,
                         clients=clients_for(CLIENT) + [{"client_id": INTRO_CLIENT, "client_secret": INTRO_SECRET},
                                                        {"client_id": OTHER_CLIENT, "client_secret": OTHER_SECRET}],
                         idp_env={"IDP_OPAQUE": "1", "IDP_INTROSPECTION_DELAY_MS": str(DELAY_MS)},
                         clusters=[self.broken.port, self.closed], env={INTRO_ENV: INTRO_SECRET, OTHER_ENV: OTHER_SECRET},
                         sections={"claimToHeaders": [{"claim": "client_id", "header": "x-client-id"}]}, **kw)

    def configure(self, name):
        endpoint = f"{self.mcp_as.issuer}/token/introspection"
        if name == "rules":
            # /other is another resource, introspected with its own client;
            # everything else inherits the top-level section.
            cfg = self.config(oidc={"introspection": introspection(endpoint)})
            cfg["rules"] = [{"match": {"pathPrefix": "/other"}, "oidc": {
                "audience": "some-other-api", "requiredScopes": [MCP_SCOPE],
                "introspection": introspection(endpoint, OTHER_CLIENT, OTHER_ENV)}}]
            return cfg
        url = {
            "main": endpoint,
            "garbage": f"{self.broken.origin}/garbage",
            "down": f"http://127.0.0.1:{self.closed}/token/introspection",
            "hang": f"{self.broken.origin}/hang",
        }[name]
        return self.config(oidc={"introspection": introspection(url)})

    def introspections(self):
        """Introspection requests the IdP has had."""
        return self.mcp_as.stats()["introspection"]

    def stat(self, name):
        """The filter's metric `name` in Envoy's /stats (0 before it moves)."""
        prefix = f"wasmcustom.token_exchange_filter.{name}: "
        lines = call(self.envoy.admin, f"/stats?filter=token_exchange_filter.{name}")[2].splitlines()
        return sum(int(line[len(prefix):]) for line in lines if line.startswith(prefix))

    def revoke(self, token):
        basic = base64.b64encode(f"{CLIENT}:{CLIENT}-secret".encode()).decode()
        status, _, body = call(self.mcp_as.port, "/token/revocation", method="POST",
                               headers={"authorization": f"Basic {basic}",
                                        "content-type": "application/x-www-form-urlencoded"},
                               body=urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}))
        assert status == 200, body


@pytest.fixture(scope="module")
def opaque(module_cleanup):
    return OpaqueStack(module_cleanup)


def echoed_header(body, name):
    return dict(json.loads(body)["headers"]).get(name)


def test_the_idp_issues_opaque_tokens(opaque):
    assert len(opaque.token().split(".")) == 1
    assert len(opaque.token(resource="urn:test:jwt").split(".")) == 3


def test_an_active_token_passes_and_n_requests_make_one_introspection(opaque):
    token = opaque.token()
    before = opaque.introspections()
    for _ in range(10):
        status, _, body = opaque.get(token=token)
        assert status == 200, body
    assert opaque.introspections() - before == 1
    wait_for(lambda: opaque.stat("introspection_cache.hit") >= 9, "cache hits in the metrics")
    assert opaque.stat("introspections.ok") >= 1
    # The caller's token goes on (no exchange here); claimToHeaders read the answer.
    assert echoed_header(body, "authorization") == f"Bearer {token}"
    assert echoed_header(body, "x-client-id") == CLIENT


def test_unknown_and_revoked_tokens_are_refused_and_negative_cached(opaque):
    unknown = secrets.token_urlsafe(32)
    before = opaque.introspections()
    for _ in range(5):
        status, headers, _ = opaque.get(token=unknown)
        assert status == 401
        assert 'error_description="token not active"' in headers["www-authenticate"]
    assert opaque.introspections() - before == 1, "the inactive answer is cached"

    revoked = opaque.token()
    opaque.revoke(revoked)
    status, headers, _ = opaque.get(token=revoked)
    assert status == 401
    assert "token not active" in headers["www-authenticate"]


def test_an_expired_token_is_refused(opaque):
    token = opaque.token(resource="urn:test:short")  # 2-second tokens
    assert opaque.get(token=token)[0] == 200
    time.sleep(3.5)
    status, headers, _ = opaque.get(token=token)
    assert status == 401, "cached no longer than the token's exp"
    assert "invalid_token" in headers["www-authenticate"]


def test_a_token_for_another_audience_is_refused(opaque):
    token = opaque.token(resource="urn:test:other")
    status, headers, _ = opaque.get(token=token)
    assert status == 401
    assert 'error_description="audience not accepted"' in headers["www-authenticate"]


def test_concurrent_requests_make_at_most_one_introspection_per_worker(opaque):
    token = opaque.token()
    before = opaque.introspections()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: opaque.get(token=token)[0], range(20)))
    assert statuses == [200] * 20
    made = opaque.introspections() - before
    assert 1 <= made <= WORKERS, made


def test_a_jwt_and_an_opaque_token_on_the_same_route(opaque):
    jwt = opaque.token(resource="urn:test:jwt")
    before = opaque.introspections()
    assert opaque.get(token=jwt)[0] == 200
    assert opaque.introspections() == before, "a JWT is checked with the keys"
    assert opaque.get(token=opaque.token())[0] == 200
    assert opaque.introspections() == before + 1


@pytest.mark.parametrize("listener", ["garbage", "down", "hang"])
def test_an_endpoint_that_fails_gives_503_within_the_callout_timeout(opaque, listener):
    token = opaque.token()
    started = time.monotonic()
    status, headers, body = opaque.get(listener, token=token)
    elapsed = time.monotonic() - started
    assert status == 503, body
    assert "token introspection unavailable" in body
    assert headers.get("retry-after")
    wait_for(lambda: opaque.stat("introspections.failed") >= 1, "failures in the metrics")
    assert elapsed < 8, elapsed
    log = opaque.envoy.proc.text()
    assert "token introspection unavailable" in log
    assert token not in log


def test_each_resource_checks_its_own_audience_with_its_own_client(opaque):
    other = opaque.token(resource="urn:test:other")  # aud some-other-api
    mine = opaque.token()
    before = opaque.introspections()
    by_client = opaque.mcp_as.stats()["introspection_by_client"]
    assert opaque.get("rules", token=other, path="/other")[0] == 200
    assert opaque.get("rules", token=other, path="/mcp")[0] == 401, "not for this resource"
    assert opaque.get("rules", token=mine, path="/mcp")[0] == 200
    assert opaque.get("rules", token=mine, path="/other")[0] == 401
    assert opaque.introspections() - before == 4, "a token checked for one resource is not taken for another"
    after = opaque.mcp_as.stats()["introspection_by_client"]
    assert after.get(OTHER_CLIENT, 0) - by_client.get(OTHER_CLIENT, 0) == 2, "the rule's own client"
    assert after.get(INTRO_CLIENT, 0) - by_client.get(INTRO_CLIENT, 0) == 2
    assert opaque.get("rules", token=other, path="/other")[0] == 200
    assert opaque.get("rules", token=other, path="/mcp")[0] == 401
    assert opaque.introspections() - before == 4, "each answer cached under its own resource"


def test_an_opaque_token_is_exchanged_end_to_end(cleanup):
    intro_client = {"client_id": INTRO_CLIENT, "client_secret": INTRO_SECRET}
    s = Stack(cleanup, exchange=True, resources=resources,
              clients=clients_for(CLIENT) + [intro_client], idp_env={"IDP_OPAQUE": "1"},
              backend_as={"introspect": intro_client}, env={INTRO_ENV: INTRO_SECRET},
              oidc={"introspection": introspection("{issuer}/token/introspection")}, envoy=False)
    s.oidc["introspection"]["url"] = f"{s.mcp_as.issuer}/token/introspection"
    s.start_envoy()
    token = s.token()
    assert len(token.split(".")) == 1
    for _ in range(3):
        status, _, body = s.get(token=token)
        assert status == 200, body
    claims = json.loads(body)["verified_claims"]
    assert claims["aud"] == BACKEND_AUDIENCE
    assert claims["sub"] == CLIENT, "the exchange kept the opaque token's subject (its client)"
    assert echoed_header(body, "authorization") != f"Bearer {token}"
    assert s.backend_as.exchanges() == 1, "cached"
