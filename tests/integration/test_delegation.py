"""Issue 18: delegation (RFC 8693 actor tokens) and Cross App Access (ID-JAG)
on real Envoy, against oidc-provider stand-ins (tests/idp) that check what
the filter sends.

- Actor tokens. The backend AS (IDP_ACTORS) refuses any exchange whose
  `actor_token` is not its own client credentials token of the gateway's
  client with the `agent` scope, and names the actor in the issued token's
  `act`. The backend verifies `act.sub` is the gateway's client.
- ID-JAG. The MCP AS is also the enterprise IdP (IDP_ID_JAG): it issues
  ID-JAGs for the caller's token. The resource AS (IDP_ID_JAG_TRUST)
  verifies each (signature against the IdP's JWKS, typ, aud, client_id,
  expiry, jti replay) before it issues the access token the backend
  verifies. Tests below also show that the resource AS refuses what the
  draft says it must, so its acceptance of the filter's grants means
  something.
- ToolHive's Okta seed, turned into a Cross App Access setup
  (istio/toolhive-okta-xaa/), run as written behind TLS.
"""

import base64
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from constants import BACKEND_API, BACKEND_AUDIENCE, BACKEND_SCOPE, EXCHANGE_GRANT, GW_CLIENT, GW_SECRET
from constants import MCP_AUDIENCE, MCP_RESOURCE, MCP_SCOPE
from harness import ISSUED_TOKENS, Backend, IdP, call, decode_part, free_port
from istio import CA, IdpFront
from shapes import shape
from stacks import Stack, clients_for, exchange_client
from test_providers import host, path, seed_envoy

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
USERS = ["alice", "bob", "carol"] + [f"user{i:02d}" for i in range(20)]


def post_form(port, path_, form, client=None, secret=None):
    """A token endpoint POST; (status, JSON answer)."""
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if client:
        headers["authorization"] = "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()
    status, _, body = call(port, path_, method="POST", headers=headers, body=urllib.parse.urlencode(form))
    return status, json.loads(body)


def verified(body):
    """The claims of the token the backend received and verified."""
    got = json.loads(body)
    bearer = dict(got["headers"])["authorization"].split(" ", 1)[1]
    ISSUED_TOKENS.add(bearer)
    return got["verified_claims"]


# ---------------------------------------------------------------------------
# Actor tokens.

ACTOR_LISTENERS = {
    # The filter's own token, by client credentials at the backend AS.
    "own": {"actor": {"source": "clientCredentials", "scopes": ["agent"]}},
    # The same, a separate filter instance, for the concurrency count.
    "own-burst": {"actor": {"source": "clientCredentials", "scopes": ["agent"]}},
    # A token from the environment.
    "env": {"actor": {"source": "env", "env": "ACTOR_TOKEN", "tokenType": "access_token"}},
    # None: the backend AS requires one.
    "none": {},
    # Our own token, without the scope the backend AS wants of an actor.
    "unscoped": {"actor": {"source": "clientCredentials"}},
}


class ActorStack(Stack):
    def __init__(self, cleanup):
        super().__init__(
            cleanup, listeners=ACTOR_LISTENERS, clients=clients_for(*USERS), exchange=True, envoy=False,
            backend_as={"clients": [exchange_client(grant_types=[EXCHANGE_GRANT, "client_credentials"])],
                        "resources": {BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE},
                                      "urn:test:agents": {"audience": "agents", "scope": "agent"}},
                        "actors": [GW_CLIENT]},
            upstream=free_port())
        # The backend verifies every token against the backend AS, and that it
        # names the gateway's client as its actor.
        self.backend = Backend(cleanup, verify_with=self.backend_as, audience=BACKEND_AUDIENCE, act_sub=GW_CLIENT)
        self.upstream_port = self.backend.port
        status, answer = post_form(self.backend_as.port, "/token",
                                   {"grant_type": "client_credentials", "scope": "agent"}, GW_CLIENT, GW_SECRET)
        assert status == 200, answer
        self.env["ACTOR_TOKEN"] = answer["access_token"]
        self.start_envoy()

    def configure(self, name):
        return self.config(exchange=ACTOR_LISTENERS[name])


@pytest.fixture(scope="module")
def actors(module_cleanup):
    return ActorStack(module_cleanup)


def test_the_filters_own_actor_token_is_fetched_once_and_named_in_act(actors):
    before = actors.backend_as.grants("client_credentials")
    exchanges = actors.backend_as.exchanges()
    for user in ("alice", "bob", "carol"):
        status, _, body = actors.get("own", actors.token(user))
        assert status == 200, body
        claims = verified(body)
        assert (claims["sub"], claims["act"], claims["iss"]) == (user, {"sub": GW_CLIENT}, actors.backend_as.issuer)
    fetched = actors.backend_as.grants("client_credentials") - before
    # Per worker memory: at most one fetch per worker (Envoy runs two).
    assert 1 <= fetched <= 2, fetched
    assert actors.backend_as.exchanges() == exchanges + 3
    # Cached: the same caller again costs nothing at the IdP.
    status, _, _ = actors.get("own", actors.token("alice"))
    assert status == 200


def test_concurrent_exchanges_share_the_actor_token(actors):
    before = actors.backend_as.grants("client_credentials")
    tokens = [actors.token(u) for u in USERS[3:]]
    with ThreadPoolExecutor(len(tokens)) as pool:
        results = list(pool.map(lambda t: actors.get("own-burst", t), tokens))
    for status, _, body in results:
        assert status == 200, body
        assert verified(body)["act"] == {"sub": GW_CLIENT}
    assert actors.backend_as.grants("client_credentials") - before <= 2, "one per worker at most"


def test_an_actor_token_from_the_environment(actors):
    status, _, body = actors.get("env", actors.token("bob"))
    assert status == 200, body
    assert verified(body)["act"] == {"sub": GW_CLIENT}


def test_the_backend_as_refuses_an_exchange_without_a_fit_actor(actors):
    served = actors.backend.requests()
    status, _, body = actors.get("none", actors.token("alice"))
    assert status == 502, body  # invalid_request: our configuration lacks the actor
    status, _, body = actors.get("unscoped", actors.token("alice"))
    assert status == 401, body  # invalid_grant: the actor token is not an agent's
    assert actors.backend.requests() == served
    log = actors.envoy.proc.text()
    assert "an actor_token (access_token) is required" in log
    assert "step=token" in log


# ---------------------------------------------------------------------------
# Cross App Access.

RAS_SCOPES = "todos.read todos.write"
XAA_LISTENERS = {
    "xaa": {},
    # private_key_jwt at the resource AS: a fresh signed assertion per grant
    # (oidc-provider refuses a replayed jti).
    "xaa-pkjwt": {"clientId": "gw-pk",
                  "assertionGrant": {"clientId": "gw-pkjwt-at-as", "clientAssertionKeyEnv": "AS_KEY",
                                     "clientAssertionKid": "as-key-1", "scopes": ["todos.read"]}},
    # A client the IdP did not name in the grant: the resource AS refuses it.
    "xaa-other-client": {"assertionGrant": {"clientId": "other-at-as", "clientSecretEnv": "AS_SECRET",
                                            "scopes": ["todos.read"]}},
    # An audience the IdP has no trust relationship with.
    "xaa-unknown-as": {"audience": "https://unknown-as.example.com/"},
}


class XaaStack(Stack):
    """The MCP AS is the enterprise IdP; a second oidc-provider is the
    resource AS; the backend verifies the resource AS's tokens."""

    def __init__(self, cleanup):
        from test_providers import rsa_key

        ras_port = free_port()
        self.ras_issuer = f"http://127.0.0.1:{ras_port}"
        # Which client of the resource AS each of ours is, there (the
        # ID-JAG's client_id); a second audience to make a foreign grant.
        there = {GW_CLIENT: "gw-at-as", "gw-pk": "gw-pkjwt-at-as"}
        id_jag = {"subjectAudience": MCP_AUDIENCE,
                  "audiences": {self.ras_issuer: there, "http://127.0.0.1:1/other-as": there}}
        idp = IdP(cleanup, "xaa-idp", resources={MCP_RESOURCE: {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE}},
                  clients=clients_for(*USERS) + [exchange_client(), exchange_client("gw-pk")],
                  extra_env={"IDP_ID_JAG": json.dumps(id_jag)}).start()
        super().__init__(cleanup, listeners=XAA_LISTENERS, mcp_as=idp, envoy=False, upstream=free_port(),
                         clusters=[ras_port], env={"GW_SECRET": GW_SECRET, "AS_SECRET": "as-secret"})
        key_pem, jwk = rsa_key("as-key-1")
        self.env["AS_KEY"] = key_pem
        jwt_bearer = {"grant_types": [JWT_BEARER]}
        self.ras = IdP(cleanup, "resource-as", port=ras_port,
                       resources={BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": RAS_SCOPES}},
                       clients=[{"client_id": "gw-at-as", "client_secret": "as-secret", **jwt_bearer},
                                {"client_id": "other-at-as", "client_secret": "as-secret", **jwt_bearer},
                                {"client_id": "gw-pkjwt-at-as", "token_endpoint_auth_method": "private_key_jwt",
                                 "token_endpoint_auth_signing_alg": "RS256", "jwks": {"keys": [jwk]}, **jwt_bearer}],
                       extra_env={"IDP_ID_JAG_TRUST": json.dumps(
                           {"issuer": idp.issuer, "jwks": f"{idp.issuer}/jwks"})}).start()
        self.backend = Backend(cleanup, verify_with=self.ras, audience=BACKEND_AUDIENCE)
        self.upstream_port = self.backend.port
        self.start_envoy()

    def token(self, user=USERS[0], scope=MCP_SCOPE, resource=None):
        return super().token(user, scope, resource or MCP_RESOURCE)

    def configure(self, name):
        te = {"provider": "id-jag", "tokenUrl": f"{self.mcp_as.issuer}/token", "clientId": GW_CLIENT,
              "clientSecretEnv": "GW_SECRET", "audience": self.ras_issuer, "resource": BACKEND_API,
              "scopes": ["todos.read"],
              "assertionGrant": {"tokenUrl": f"{self.ras_issuer}/token", "clientId": "gw-at-as",
                                 "clientSecretEnv": "AS_SECRET", "clientAuthMethod": "client_secret_post",
                                 "scopes": ["todos.read"]}}
        for k, v in XAA_LISTENERS[name].items():
            te[k] = {**te[k], **v} if k == "assertionGrant" else v
        if "clientAssertionKeyEnv" in te["assertionGrant"]:
            for k in ("clientSecretEnv", "clientAuthMethod"):
                te["assertionGrant"].pop(k)
            te["assertionGrant"]["clientAssertionAudience"] = self.ras_issuer
        return {**self.config(), "tokenExchange": te}

    def id_jag(self, user, audience=None):
        """An ID-JAG the IdP issues the gateway's client for `user`, asked
        for directly."""
        status, answer = post_form(self.mcp_as.port, "/token", {
            "grant_type": EXCHANGE_GRANT, "requested_token_type": ID_JAG,
            "subject_token": self.token(user), "subject_token_type": ACCESS_TOKEN,
            "audience": audience or self.ras_issuer, "resource": BACKEND_API, "scope": "todos.read"},
            GW_CLIENT, GW_SECRET)
        assert status == 200, answer
        return answer

    def grant(self, assertion, client="gw-at-as"):
        return post_form(self.ras.port, "/token", {"grant_type": JWT_BEARER, "assertion": assertion},
                         client, "as-secret")


@pytest.fixture(scope="module")
def xaa(module_cleanup):
    return XaaStack(module_cleanup)


def test_xaa_two_steps_give_the_resource_as_token(xaa):
    exchanges, grants = xaa.mcp_as.exchanges(), xaa.ras.grants(JWT_BEARER)
    for user in ("alice", "bob"):
        token = xaa.token(user)
        status, _, body = xaa.get("xaa", token)
        assert status == 200, body
        claims = verified(body)
        assert (claims["iss"], claims["aud"], claims["sub"]) == (xaa.ras.issuer, BACKEND_AUDIENCE, user)
        assert (claims["client_id"], claims["scope"]) == ("gw-at-as", "todos.read")
        # Only the final token is cached: again, no call to either server.
        status, _, again = xaa.get("xaa", token)
        assert status == 200 and verified(again)["jti"] == claims["jti"]
    assert xaa.mcp_as.exchanges() == exchanges + 2
    assert xaa.ras.grants(JWT_BEARER) == grants + 2
    assert "oauth-id-jag" not in xaa.envoy.proc.text()


def test_xaa_with_private_key_jwt_at_the_resource_as(xaa):
    for user in ("alice", "bob", "carol"):
        status, _, body = xaa.get("xaa-pkjwt", xaa.token(user))
        assert status == 200, body
        assert verified(body)["client_id"] == "gw-pkjwt-at-as"


def test_xaa_failures_map_through_the_table_and_name_the_step(xaa):
    served = xaa.backend.requests()
    status, _, body = xaa.get("xaa-other-client", xaa.token("alice"))
    assert status == 401, body  # the resource AS: invalid_grant (ID-JAG is for another client)
    status, _, body = xaa.get("xaa-unknown-as", xaa.token("alice"))
    assert status == 403, body  # the IdP: invalid_target
    assert xaa.backend.requests() == served
    lines = [l for l in xaa.envoy.proc.text().splitlines() if "outcome=" in l and "step=" in l]
    assert any("outcome=invalid_grant step=assertion" in l for l in lines), lines
    assert any("outcome=insufficient_scope step=token" in l and "unknown-as" in l for l in lines), lines


def test_the_idp_issues_what_the_draft_says(xaa):
    answer = xaa.id_jag("alice")
    assert (answer["issued_token_type"], answer["token_type"]) == (ID_JAG, "N_A")
    header, claims = decode_part(answer["access_token"], 0), decode_part(answer["access_token"], 1)
    assert header["typ"] == "oauth-id-jag+jwt"
    assert (claims["iss"], claims["sub"], claims["aud"]) == (xaa.mcp_as.issuer, "alice", xaa.ras_issuer)
    assert (claims["client_id"], claims["resource"], claims["scope"]) == ("gw-at-as", BACKEND_API, "todos.read")
    assert claims["jti"] and claims["exp"] > claims["iat"]


def test_the_resource_as_refuses_what_the_draft_says_it_must(xaa):
    grant = xaa.id_jag("bob")["access_token"]
    status, answer = xaa.grant(grant, client="other-at-as")
    assert (status, answer["error"]) == (400, "invalid_grant"), "client_id must be the authenticated client"
    status, answer = xaa.grant(grant)
    assert status == 200, answer
    ISSUED_TOKENS.add(answer["access_token"])
    status, answer = xaa.grant(grant)
    assert (status, answer["error"]) == (400, "invalid_grant"), "a jti is good once"
    status, answer = xaa.grant(xaa.id_jag("bob", audience="http://127.0.0.1:1/other-as")["access_token"])
    assert (status, answer["error"]) == (400, "invalid_grant"), "aud must be this resource AS"
    status, answer = xaa.grant(xaa.token("bob"))
    assert (status, answer["error"]) == (400, "invalid_grant"), "an access token is not an ID-JAG (typ)"
    head, payload, sig = grant.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["jti"] = "forged"
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    status, answer = xaa.grant(f"{head}.{body}.{sig}")
    assert (status, answer["error"]) == (400, "invalid_grant"), "the signature is the IdP's"


# ---------------------------------------------------------------------------
# ToolHive's Okta seed, as a Cross App Access setup.

def test_seed_okta_cross_app_access_runs_as_written(cleanup):
    shape_ = shape("istio/toolhive-okta-xaa")
    pc = shape_.plugins()[0].config
    oidc, te = pc["oidc"], pc["tokenExchange"]
    grant = te["assertionGrant"]
    okta, ras_host = host(oidc["jwksUrl"]), host(grant["tokenUrl"])
    # The org authorization server: it signs the gateway's users in (the
    # callers' ID tokens, audience the gateway's client) and issues ID-JAGs.
    idp = IdP(cleanup, "okta-org-as", issuer=oidc["issuer"],
              resources={oidc["resourceUrl"]: {"audience": oidc["audience"]}},
              clients=clients_for("alice") + [{"client_id": te["clientId"], "client_secret": "okta-secret",
                                               "grant_types": [EXCHANGE_GRANT]}],
              extra_env={"IDP_ID_JAG": json.dumps({"subjectAudience": oidc["audience"],
                                                   "audiences": {te["audience"]: {te["clientId"]: grant["clientId"]}}})})
    idp.start()
    ras = IdP(cleanup, "todo-as", issuer=te["audience"],
              resources={grant["resource"]: {"audience": "todo-api", "scope": " ".join(grant["scopes"])}},
              clients=[{"client_id": grant["clientId"], "client_secret": "todo-secret", "grant_types": [JWT_BEARER]}],
              extra_env={"IDP_ID_JAG_TRUST": json.dumps({"issuer": oidc["issuer"],
                                                          "jwks": f"http://127.0.0.1:{idp.port}/jwks"})}).start()
    ca = CA(okta, ras_host)
    front = IdpFront(cleanup, ca, {okta: [(path(oidc["jwksUrl"]), idp.port, "/jwks"),
                                          (path(te["tokenUrl"]), idp.port, "/token")],
                                   ras_host: [(path(grant["tokenUrl"]), ras.port, "/token")]})
    backend = Backend(cleanup, verify_with=ras, audience="todo-api")
    _, envoy = seed_envoy(cleanup, shape_, front, ca, backend,
                          {te["clientSecretEnv"]: "okta-secret", grant["clientSecretEnv"]: "todo-secret"})
    id_token = idp.token("alice", "alice-secret", oidc["resourceUrl"])
    assert decode_part(id_token, 1)["aud"] == te["clientId"], "issued to the gateway's client"
    mcp_host = host(oidc["resourceUrl"])
    status, headers, _ = call(envoy.port, "/mcp", headers={"host": mcp_host})
    assert status == 401 and f'resource_metadata="https://{mcp_host}/.well-known/oauth-protected-resource/mcp"' \
        in headers["www-authenticate"]
    status, _, body = call(envoy.port, "/mcp", headers={"host": mcp_host, "authorization": f"Bearer {id_token}"})
    assert status == 200, body
    claims = verified(body)
    assert (claims["iss"], claims["aud"], claims["sub"]) == (te["audience"], "todo-api", "alice")
    assert (claims["client_id"], claims["scope"]) == (grant["clientId"], " ".join(grant["scopes"]))
    assert (idp.exchanges(), ras.grants(JWT_BEARER)) == (1, 1)
