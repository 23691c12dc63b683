"""Issue 3: the validated token is exchanged (RFC 8693) at the backend's
authorization server, the upstream gets the exchanged token, and the result is
cached in shared data.

Two real oidc-provider authorization servers, as in an Okta two-AS setup: the
MCP AS issues the callers' tokens; the backend AS trusts it and exchanges them.
The backend verifies every token it receives against the backend AS. One
Envoy (2 workers) carries one listener per filter configuration under test.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from constants import BACKEND_API, BACKEND_AUDIENCE, BACKEND_SCOPE, CLIENT, GW_CLIENT, MCP_AUDIENCE, SECRET
from harness import BrokenTokenEndpoint, Envoy, IdP, decode_part, free_port
from stacks import Stack, clients_for, exchange_client, merged, plugin_config

USERS = [f"user{i:02d}" for i in range(50)]
SECRETS = {
    "GW_BASIC_SECRET": "basic-secret-&:=+",
    "GW_POST_SECRET": "post-secret",
    "GW_NOGRANT_SECRET": "nogrant-secret",
    "TESTER_SECRET": SECRET,
    "WRONG_SECRET": "not-the-secret",
}
SHORT_API = "https://short.example.com/"

# Listener name -> (tokenExchange overrides, cache section). Every listener
# validates the same MCP tokens; they differ in how they exchange.
LISTENERS = {
    "basic": ({}, None),
    "basic-again": ({}, None),  # the same config: shares the cache with "basic"
    "changed": ({}, {"maxEntries": 10000, "expirySkewSeconds": 29}),  # a config change
    "post": ({"clientId": "gw-post", "clientSecretEnv": "GW_POST_SECRET",
              "clientAuthMethod": "client_secret_post"}, None),
    "short": ({"audience": None, "resource": SHORT_API}, {"maxEntries": 100, "expirySkewSeconds": 1}),
    "external-header": ({"externalTokenHeaderName": "X-Backend-Token"}, None),
    "bad-scope": ({"scopes": ["admin"]}, None),
    "bad-target": ({"audience": "no-such-api"}, None),
    "bad-client": ({"clientSecretEnv": "WRONG_SECRET"}, None),
    "unauthorized-client": ({"clientId": "gw-nogrant", "clientSecretEnv": "GW_NOGRANT_SECRET"}, None),
    "unsupported-grant": ({"tokenUrl": "MCP_AS/token", "clientId": CLIENT,
                           "clientSecretEnv": "TESTER_SECRET"}, None),
    "invalid-request": ({"requestedTokenType": "id_token"}, None),
    "garbage": ({"tokenUrl": "BROKEN/garbage"}, None),
    "oversize": ({"tokenUrl": "BROKEN/oversize"}, None),
    "odd-header": ({"tokenUrl": "BROKEN/odd-header"}, None),
    "idp-500": ({"tokenUrl": "BROKEN/500"}, None),
    "reset": ({"tokenUrl": "BROKEN/reset"}, None),
    "hang": ({"tokenUrl": "BROKEN/hang", "timeoutMs": 500}, None),
    "refused": ({"tokenUrl": "CLOSED/token"}, None),
}


class ExchangeStack(Stack):
    """The exchange stack with a listener per LISTENERS row, the broken token
    endpoint, and a port nothing listens on; the backend AS exchanges slowly
    enough that concurrent requests really overlap."""

    def __init__(self, cleanup):
        self.broken = cleanup.add(BrokenTokenEndpoint())
        self.closed = free_port()
        super().__init__(
            cleanup, listeners=LISTENERS, clients=clients_for(CLIENT, "blocked-user", *USERS), exchange=True,
            backend_as={
                "resources": {
                    BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": f"{BACKEND_SCOPE} backend:write"},
                    SHORT_API: {"audience": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE, "ttl": 3},
                },
                "clients": [
                    exchange_client("gw-basic", SECRETS["GW_BASIC_SECRET"],
                                    token_endpoint_auth_method="client_secret_basic"),
                    exchange_client("gw-post", SECRETS["GW_POST_SECRET"],
                                    token_endpoint_auth_method="client_secret_post"),
                    {"client_id": "gw-nogrant", "client_secret": SECRETS["GW_NOGRANT_SECRET"]},
                ],
                "deny": ["blocked-user"],
                "delay_ms": 300,
            },
            token_exchange={"clientId": "gw-basic", "clientSecretEnv": "GW_BASIC_SECRET",
                            "requestedTokenType": "access_token", "timeoutMs": 5000},
            clusters=[self.broken.port, self.closed], env=SECRETS)

    def configure(self, name):
        overrides, cache = LISTENERS[name]
        bases = {"MCP_AS": self.mcp_as.issuer, "BROKEN": self.broken.origin,
                 "CLOSED": f"http://127.0.0.1:{self.closed}"}
        for k, v in overrides.items():
            if isinstance(v, str) and v.split("/")[0] in bases:
                head, tail = v.split("/", 1)
                overrides = {**overrides, k: f"{bases[head]}/{tail}"}
        return merged(self.config(exchange=overrides), {"cache": cache})


@pytest.fixture(scope="module")
def xs(module_cleanup):
    return ExchangeStack(module_cleanup)


def seen(body):
    return json.loads(body)


def test_exchanged_token_reaches_the_backend_and_the_callers_does_not(xs):
    user = "user00"
    token = xs.token(user)
    assert decode_part(token, 1)["aud"] == MCP_AUDIENCE
    code, _, body = xs.get("basic", token)
    assert code == 200, body
    got = seen(body)
    claims = got["verified_claims"]  # verified by the backend against the backend AS
    assert claims["iss"] == xs.backend_as.issuer
    assert claims["aud"] == BACKEND_AUDIENCE
    assert claims["sub"] == user
    assert claims["scope"] == BACKEND_SCOPE
    assert claims["client_id"] == "gw-basic"
    authorizations = [v for k, v in got["headers"] if k == "authorization"]
    assert len(authorizations) == 1
    assert authorizations[0] != f"Bearer {token}"
    for _, value in got["headers"]:
        assert token not in value, "the caller's token reaches the upstream in no header"
    for part in token.split("."):
        assert part not in json.dumps(got["headers"])


def test_second_request_makes_no_idp_call(xs):
    token = xs.token("user01")
    before = xs.backend_as.exchanges()
    assert xs.get("basic", token)[0] == 200
    assert xs.backend_as.exchanges() == before + 1
    for _ in range(5):
        code, _, body = xs.get("basic", token)
        assert code == 200
        assert seen(body)["verified_claims"]["sub"] == "user01"
    assert xs.backend_as.exchanges() == before + 1


def test_short_lived_exchanged_token_is_exchanged_again(xs):
    token = xs.token("user02")
    before = xs.backend_as.exchanges()
    code, _, body = xs.get("short", token)
    assert code == 200, body
    issued = seen(body)["verified_claims"]
    assert issued["exp"] - issued["iat"] == 3
    assert xs.get("short", token)[0] == 200
    assert xs.backend_as.exchanges() == before + 1, "cached for 3 s less the 1 s skew"
    # Past the exchanged token's exp: a cached copy, if still served, would
    # now fail at the backend, which verifies exp.
    time.sleep(max(0.0, issued["exp"] - time.time()) + 0.2)
    code, _, body = xs.get("short", token)
    assert code == 200, body
    assert xs.backend_as.exchanges() == before + 2
    assert seen(body)["verified_claims"]["iat"] > issued["iat"]


def test_concurrent_requests_for_one_new_user_share_the_exchange(xs):
    token = xs.token("user03")
    before = xs.backend_as.exchanges()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: xs.get("basic", token), range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert all(seen(r[2])["verified_claims"]["sub"] == "user03" for r in results)
    calls = xs.backend_as.exchanges() - before
    assert 1 <= calls <= 2, f"{calls} exchange calls for 20 concurrent requests on 2 workers"


def test_users_never_get_each_others_token(xs):
    tokens = {u: xs.token(u) for u in USERS}
    jobs = [u for u in USERS for _ in range(10)]
    before = xs.backend_as.exchanges()

    def one(user):
        code, _, body = xs.get("changed", tokens[user])
        return user, code, body

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, jobs))
    for user, code, body in results:
        assert code == 200, body
        assert seen(body)["verified_claims"]["sub"] == user
    calls = xs.backend_as.exchanges() - before
    assert calls <= 2 * len(USERS), calls


FAILURES = [
    # (listener, user, status, error)
    ("basic", "blocked-user", 401, "invalid_token"),  # IdP: invalid_grant
    ("odd-header", CLIENT, 401, "invalid_token"),  # invalid_grant, non-UTF-8 header
    ("bad-scope", CLIENT, 403, "insufficient_scope"),  # invalid_scope
    ("bad-target", CLIENT, 403, "insufficient_scope"),  # invalid_target
    ("bad-client", CLIENT, 502, "bad_gateway"),  # invalid_client
    ("unauthorized-client", CLIENT, 502, "bad_gateway"),
    ("unsupported-grant", CLIENT, 502, "bad_gateway"),
    ("invalid-request", CLIENT, 502, "bad_gateway"),
    ("garbage", CLIENT, 502, "bad_gateway"),
    ("oversize", CLIENT, 502, "bad_gateway"),
    ("idp-500", CLIENT, 503, "temporarily_unavailable"),
    ("reset", CLIENT, 503, "temporarily_unavailable"),
    ("refused", CLIENT, 503, "temporarily_unavailable"),
    ("hang", CLIENT, 504, "gateway_timeout"),
]


@pytest.mark.parametrize("listener,user,status,error", FAILURES, ids=[f[0] + "-" + str(f[2]) for f in FAILURES])
def test_exchange_failures(xs, listener, user, status, error):
    token = xs.token(user)
    before = xs.backend.requests()
    code, headers, body = xs.get(listener, token)
    assert code == status, body
    doc = json.loads(body)
    assert doc["error"] == error
    if status == 401:
        assert 'error="invalid_token"' in headers["www-authenticate"]
    if status == 403:
        assert 'error="insufficient_scope"' in headers["www-authenticate"]
    if status == 503:
        assert headers.get("retry-after")
    assert token not in body
    assert xs.backend.requests() == before, "the upstream sees nothing"


def test_client_secret_basic_and_post_on_the_wire(xs):
    # The backend AS registers gw-basic for client_secret_basic and gw-post for
    # client_secret_post, and oidc-provider refuses any other method: each
    # exchange succeeds only if the filter authenticated as configured. The
    # basic secret has characters that RFC 6749 §2.3.1 requires to be
    # form-urlencoded before base64.
    token = xs.token("user04")
    code, _, body = xs.get("basic", token)
    assert code == 200 and seen(body)["verified_claims"]["client_id"] == "gw-basic"
    code, _, body = xs.get("post", token)
    assert code == 200 and seen(body)["verified_claims"]["client_id"] == "gw-post"


def test_secret_comes_from_the_environment(xs):
    config = (xs.envoy.config_path).read_text()
    for secret in SECRETS.values():
        assert secret not in config, "no secret in the Envoy configuration"
    # The secrets reached the filter through vm_config.environment_variables:
    # exchanges authenticated with them succeed (the tests above).


def test_missing_secret_variable_fails_closed(cleanup):
    idp = IdP(cleanup, "mcp-as-min").start()
    cfg = plugin_config(idp, 1)
    cfg["tokenExchange"] = {"tokenUrl": f"{idp.issuer}/token", "clientId": GW_CLIENT,
                            "clientSecretEnv": "NOT_SET_ANYWHERE"}
    envoy = Envoy(cleanup, 1, cfg, {f"outbound|{idp.port}||127.0.0.1": idp.port})
    envoy.proc.proc.wait(timeout=20)
    assert envoy.proc.proc.returncode != 0
    lines = [l for l in envoy.proc.text().splitlines() if "invalid configuration" in l]
    assert len(lines) == 1 and "NOT_SET_ANYWHERE" in lines[0], lines


def test_a_config_change_keeps_the_cache_of_the_targets_it_keeps(xs):
    token = xs.token("user05")
    before = xs.backend_as.exchanges()
    assert xs.get("basic", token)[0] == 200
    assert xs.backend_as.exchanges() == before + 1
    # Same configuration on another listener: the cache is shared.
    assert xs.get("basic-again", token)[0] == 200
    assert xs.backend_as.exchanges() == before + 1
    # Another config whose exchange target is the same: what was cached for
    # the target still serves (each entry holds what it depends on).
    assert xs.get("changed", token)[0] == 200
    assert xs.backend_as.exchanges() == before + 1
    # Another target (another client): never the old target's token.
    code, _, body = xs.get("post", token)
    assert code == 200
    assert xs.backend_as.exchanges() == before + 2


def test_external_token_header(xs):
    token = xs.token("user06")
    code, _, body = xs.get("external-header", token)
    # The exchanged token goes in the configured header; Authorization still
    # carries the caller's token (token passthrough: the README warns), which
    # this backend refuses, as it only trusts the backend AS.
    assert code == 401
    headers = dict(seen(body)["headers"])
    assert headers["authorization"] == f"Bearer {token}"
    exchanged = headers["x-backend-token"].removeprefix("Bearer ")
    assert decode_part(exchanged, 1)["aud"] == BACKEND_AUDIENCE
    assert decode_part(exchanged, 1)["sub"] == "user06"


def test_audit_log_names_user_and_outcome_but_no_token(xs):
    token = xs.token("user07")
    assert xs.get("basic", token)[0] == 200
    time.sleep(0.2)
    log = xs.envoy.proc.text()
    lines = [l for l in log.splitlines() if "exchange sub=user07" in l]
    assert lines, "one audit line per exchange"
    assert "outcome=ok" in lines[0] and "cache=miss" in lines[0] and "latency_ms=" in lines[0]
    assert "client=user07" in lines[0] and "audience=backend" in lines[0]
    assert token not in log
    assert "eyJ" not in log, "no JWT (every one starts with eyJ) of any test user was logged"
    assert "panicked" not in log
    for secret in SECRETS.values():
        assert secret not in log
