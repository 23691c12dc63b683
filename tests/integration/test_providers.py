"""Issue 9: provider dialects on real Envoy.

- private_key_jwt against the real oidc-provider backend AS, whose client is
  registered with `token_endpoint_auth_method: private_key_jwt` and its JWKS:
  the IdP's own check of our assertions is the proof.
- Google STS (+ service-account impersonation) and Entra on-behalf-of
  against the recording stand-ins in tests/standins/providers.py, which check
  every field Google's and Microsoft's documentation specifies and answer as
  those pages show. They are not Google or Microsoft.
- ToolHive's seed setups, translated (istio/toolhive-okta/,
  istio/toolhive-bigquery/), run as written: each WasmPlugin delivered as
  Istio delivers it to the MCP server's sidecar, behind the shape's own
  gateway routes, with the IdPs at the hosts and paths the files name,
  behind TLS; the official Python MCP SDK finds its way in from the MCP URL.
"""

import base64
import json
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from constants import BACKEND_AUDIENCE, MCP_AUDIENCE, MCP_SCOPE
from harness import WASM, Backend, IdP, McpServer, call, decode_part, free_port
from istio import CA, Ecds, EnvoyProc, IdpFront, ecds_resource, envoy_bootstrap, filter_name
from istio import istio_clusters, shape_listeners, static_cluster
from mcp_client import Resolver, call_tool
from shapes import shape
from stacks import Stack, clients_for, exchange_client, start_backend_as
from standins.providers import EntraStandin, GoogleStandin, make_client_certificate

WIP = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/okta-pool/providers/okta"
BIGQUERY = "https://www.googleapis.com/auth/bigquery"
SA = "bq-reader@my-project.iam.gserviceaccount.com"
USERS = ["alice", "bob", "mfa-user"]
LISTENERS = ("pkjwt", "pkjwt-wrong-key", "google", "entra", "entra-cert")


def rsa_key(kid):
    """A fresh RSA key: its PKCS#8 PEM and its public JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return pem, {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class Providers(Stack):
    """The MCP AS, a backend AS with a private_key_jwt client, the Google and
    Entra stand-ins, an echo backend, and one Envoy with a listener per
    configuration."""

    def __init__(self, cleanup):
        self.key_pem, jwk = rsa_key("gw-key-1")
        wrong_pem, _ = rsa_key("gw-key-1")
        pkjwt_client = exchange_client("gw-pkjwt", None, token_endpoint_auth_method="private_key_jwt",
                                       token_endpoint_auth_signing_alg="RS256", jwks={"keys": [jwk]})
        super().__init__(cleanup, listeners=LISTENERS, clients=clients_for(*USERS), exchange=True,
                         backend_as={"clients": [pkjwt_client]}, verify=False, envoy=False)
        jwks_url = f"{self.mcp_as.issuer}/jwks"
        self.google = GoogleStandin(jwks_url, self.mcp_as.issuer, MCP_AUDIENCE, audience=WIP, scope=BIGQUERY,
                                    service_account=SA, iam_scope=[BIGQUERY], user_project="my-project")
        self.entra = EntraStandin(jwks_url, self.mcp_as.issuer, "app-1", client_secret="entra-secret",
                                  assertion_audience=MCP_AUDIENCE, scope="api://backend/.default")
        cert_key, cert = make_client_certificate()
        self.entra_cert = EntraStandin(jwks_url, self.mcp_as.issuer, "app-2", client_certificate=cert,
                                       assertion_audience=MCP_AUDIENCE, scope="api://backend/.default",
                                       unique_jti=True)
        for standin in (self.google, self.entra, self.entra_cert):
            cleanup.add(standin)
            self.add_cluster(standin.port)
        self.env = {"GW_KEY": self.key_pem, "WRONG_KEY": wrong_pem, "ENTRA_SECRET": "entra-secret",
                    "ENTRA_KEY": cert_key, "ENTRA_CERT": cert}
        self.start_envoy()

    def configure(self, name):
        pkjwt = {"tokenUrl": f"{self.backend_as.issuer}/token", "clientId": "gw-pkjwt",
                 "clientAssertionKeyEnv": "GW_KEY", "clientAssertionKid": "gw-key-1",
                 # oidc-provider wants its issuer identifier as the audience (RFC 7523bis).
                 "clientAssertionAudience": self.backend_as.issuer, "audience": BACKEND_AUDIENCE}
        google = self.google.origin
        exchange = {
            "pkjwt": pkjwt,
            "pkjwt-wrong-key": {**pkjwt, "clientAssertionKeyEnv": "WRONG_KEY"},
            "google": {"provider": "google-sts", "tokenUrl": f"{google}/v1/token", "audience": WIP,
                       "subjectTokenType": "id_token", "scopes": [BIGQUERY], "options": {"userProject": "my-project"},
                       "serviceAccountImpersonation": {
                           "url": f"{google}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken",
                           "scopes": [BIGQUERY], "lifetimeSeconds": 1800}},
            "entra": {"provider": "entra-obo", "tokenUrl": self.entra.token_url, "clientId": "app-1",
                      "clientSecretEnv": "ENTRA_SECRET", "scopes": ["api://backend/.default"]},
            "entra-cert": {"provider": "entra-obo", "tokenUrl": self.entra_cert.token_url, "clientId": "app-2",
                           "clientAssertionKeyEnv": "ENTRA_KEY", "clientAssertionCertEnv": "ENTRA_CERT",
                           "scopes": ["api://backend/.default"]},
        }[name]
        return {**self.config(exchange=False), "tokenExchange": exchange}


@pytest.fixture(scope="module")
def ps(module_cleanup):
    return Providers(module_cleanup)


def forwarded(body):
    """The bearer token the backend received."""
    headers = dict(json.loads(body)["headers"])
    return headers["authorization"].split(" ", 1)[1]


def test_private_key_jwt_is_accepted_by_the_real_idp(ps):
    before = ps.backend_as.exchanges()
    for user in ("alice", "bob"):
        token = ps.token(user)
        status, _, body = ps.get("pkjwt", token)
        assert status == 200, body
        claims = decode_part(forwarded(body), 1)
        assert (claims["iss"], claims["aud"], claims["sub"]) == (ps.backend_as.issuer, BACKEND_AUDIENCE, user)
        assert claims["client_id"] == "gw-pkjwt", "the IdP authenticated our client by its assertion"
    # Two users, two assertions: oidc-provider refuses a replayed jti, so each was fresh.
    assert ps.backend_as.exchanges() == before + 2
    assert "client_assertion" not in ps.envoy.proc.text()


def test_a_key_the_idp_does_not_know_is_a_502(ps):
    served = ps.backend.requests()
    status, _, body = ps.get("pkjwt-wrong-key", ps.token("alice"))
    assert status == 502, body
    assert ps.backend.requests() == served
    assert "invalid_client" in ps.envoy.proc.text()


def test_google_sts_then_impersonation_in_one_pause(ps):
    token = ps.token("alice")
    status, _, body = ps.get("google", token)
    assert status == 200, body
    sent = forwarded(body)
    issued = ps.google.issued[sent]
    assert (issued["kind"], issued["sub"], issued["service_account"]) == ("iam", "alice", SA)
    assert ps.google.errors == [], ps.google.errors
    kinds = [r["path"] for r in ps.google.requests]
    assert kinds == ["/v1/token", f"/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"]
    sts = ps.google.requests[0]
    assert sts["form"]["options"] == '{"userProject":"my-project"}'
    assert ps.google.requests[1]["json"] == {"scope": [BIGQUERY], "lifetime": "1800s"}
    # Only the final token is forwarded and cached: the next request makes no call.
    status, _, body = ps.get("google", token)
    assert status == 200 and forwarded(body) == sent
    assert len(ps.google.requests) == 2


@pytest.mark.parametrize("step, status", [("sts", 401), ("sts_target", 403), ("iam", 403)])
def test_google_failures_in_either_step_map_through_the_table(ps, step, status):
    ps.google.fail_step = step
    try:
        served = ps.backend.requests()
        code, _, body = ps.get("google", ps.token("bob"))
        assert code == status, body
        assert ps.backend.requests() == served
    finally:
        ps.google.fail_step = None
    log = ps.envoy.proc.text()
    if step == "iam":
        assert "generateAccessToken answered HTTP 403" in log
    assert ps.google.errors == [], ps.google.errors


def test_entra_obo_with_a_secret(ps):
    token = ps.token("alice")
    status, _, body = ps.get("entra", token)
    assert status == 200, body
    issued = ps.entra.issued[forwarded(body)]
    assert (issued["sub"], issued["client_auth"]) == ("alice", "secret")
    assert ps.entra.errors == [], ps.entra.errors
    form = ps.entra.requests[-1]["form"]
    assert form["requested_token_use"] == "on_behalf_of" and form["assertion"] == token


def test_entra_obo_with_a_certificate(ps):
    for user in ("alice", "bob"):
        status, _, body = ps.get("entra-cert", ps.token(user))
        assert status == 200, body
        issued = ps.entra_cert.issued[forwarded(body)]
        assert (issued["sub"], issued["client_auth"]) == (user, "certificate")
    assert ps.entra_cert.errors == [], ps.entra_cert.errors


def test_entra_claims_challenge_reaches_the_client(ps):
    ps.entra.step_up_subjects.add("mfa-user")
    served = ps.backend.requests()
    status, headers, _ = ps.get("entra", ps.token("mfa-user"))
    assert status == 401
    challenge = headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_claims"'), challenge
    claims = challenge.split('claims="', 1)[1].split('"', 1)[0]
    assert base64.b64decode(claims).decode() == ps.entra.claims_challenge
    assert "resource_metadata=" in challenge
    assert ps.backend.requests() == served
    assert ps.entra.errors == [], ps.entra.errors


# ---------------------------------------------------------------------------
# ToolHive's seeds, translated, run as written.


def seed_envoy(cleanup, shape_, front, ca, upstream, env):
    """Envoy running the shape's WasmPlugin as Istio delivers it to the MCP
    server's sidecar, behind the shape's gateway routes, with the clusters
    its ServiceEntries and DestinationRules make, all pointed at the TLS
    front. The MCP server's Service is `upstream`."""
    (wp,) = shape_.of("WasmPlugin")
    ecds = Ecds(shape_.dir.name)
    ecds.put(ecds_resource(wp, WASM))
    listeners, clusters, port = shape_listeners("seed", shape_.routes(), ecds.http_filter(filter_name(wp)), True,
                                                lambda r: "upstream")
    clusters += [static_cluster("upstream", upstream.port)] + istio_clusters(shape_.docs, front.port, ca.ca)
    admin = free_port()
    envoy = EnvoyProc(cleanup, f"envoy-{shape_.dir.name}", envoy_bootstrap(admin, listeners, clusters), admin,
                      env=env).wait_ready([port])
    envoy.port = port
    return wp["spec"]["pluginConfig"], envoy


def path(url):
    return urllib.parse.urlsplit(url).path


def host(url):
    return urllib.parse.urlsplit(url).hostname


def client_routes(oidc, mcp_as):
    """What an MCP client reads from the authorization server: its OIDC
    metadata under the issuer, and the token endpoint that names."""
    return [(path(oidc["issuer"]) + "/.well-known/openid-configuration", mcp_as.port,
             "/.well-known/openid-configuration"), ("/token", mcp_as.port, "/token")]


def mcp_url(oidc):
    """The MCP endpoint: the resource's path, or /mcp for a resource that is a whole host."""
    return oidc["resourceUrl"] if path(oidc["resourceUrl"]).strip("/") else oidc["resourceUrl"].rstrip("/") + "/mcp"


def test_seed_okta_two_authorization_servers_runs_as_written(cleanup):
    shape_ = shape("istio/toolhive-okta")
    pc = shape_.plugins()[0].config
    oidc, te = pc["oidc"], pc["tokenExchange"]
    okta = host(oidc["jwksUrl"])
    mcp_as = IdP(cleanup, "okta-mcp-as", issuer=oidc["issuer"],
                 resources={oidc["resourceUrl"]: {"audience": oidc["audience"], "scope": MCP_SCOPE}},
                 clients=clients_for("alice"), extra_env={"IDP_BEHIND_PROXY": "1"}).start()
    backend_issuer = te["tokenUrl"].rsplit("/v1/token", 1)[0]
    backend_as = start_backend_as(
        cleanup, mcp_as, "okta-backend-as", issuer=backend_issuer, audience=oidc["audience"], trust_jwks=True,
        resources={"api://backend": {"audience": te["audience"], "scope": " ".join(te["scopes"])}},
        clients=[exchange_client(te["clientId"], "okta-secret")])
    ca = CA(okta)
    front = IdpFront(cleanup, ca, {okta: [(path(oidc["jwksUrl"]), mcp_as.port, "/jwks"),
                                          (path(te["tokenUrl"]), backend_as.port, "/token")]
                                   + client_routes(oidc, mcp_as)})
    backend = Backend(cleanup, verify_with=backend_as, audience=te["audience"])
    server = McpServer(cleanup, backend.port)
    _, envoy = seed_envoy(cleanup, shape_, front, ca, server, {te["clientSecretEnv"]: "okta-secret"})
    mcp_host = host(oidc["resourceUrl"])
    status, headers, _ = call(envoy.port, "/mcp", headers={"host": mcp_host})
    assert status == 401 and f'resource_metadata="https://{mcp_host}/.well-known/oauth-protected-resource"' in \
        headers["www-authenticate"]
    metadata = json.loads(call(envoy.port, "/.well-known/oauth-protected-resource", headers={"host": mcp_host})[2])
    assert metadata["scopes_supported"] == ["openid"], "ToolHive's default, as the file says"

    resolver = Resolver({mcp_host: (envoy.port, False), okta: (front.port, True)}, ca.ca)
    _, result, token = call_tool(mcp_url(oidc), resolver, "alice", "alice-secret", oidc["issuer"], MCP_SCOPE)
    assert not result.is_error, result
    claims = json.loads(result.content[0].text)["verified_claims"]
    assert (claims["iss"], claims["aud"], claims["sub"]) == (backend_issuer, te["audience"], "alice")
    assert claims["scope"] == "api:read api:write"
    assert token not in json.dumps(server.seen())
    assert backend_as.exchanges() == 1


def test_seed_bigquery_runs_as_written_against_the_google_standin(cleanup):
    shape_ = shape("istio/toolhive-bigquery")
    pc = shape_.plugins()[0].config
    oidc, te = pc["oidc"], pc["tokenExchange"]
    okta, sts = host(oidc["jwksUrl"]), host(te["tokenUrl"])
    mcp_as = IdP(cleanup, "okta-as", issuer=oidc["issuer"],
                 resources={oidc["resourceUrl"]: {"audience": oidc["audience"], "scope": MCP_SCOPE}},
                 clients=clients_for("alice"), extra_env={"IDP_BEHIND_PROXY": "1"}).start()
    google = GoogleStandin(f"http://127.0.0.1:{mcp_as.port}/jwks", oidc["issuer"], oidc["audience"],
                           audience=te["audience"], scope=" ".join(te["scopes"]))
    cleanup.add(google)
    ca = CA(okta, sts)
    front = IdpFront(cleanup, ca, {okta: [(path(oidc["jwksUrl"]), mcp_as.port, "/jwks")] + client_routes(oidc, mcp_as),
                                   sts: [(path(te["tokenUrl"]), google.port, "/v1/token")]})
    server = McpServer(cleanup, Backend(cleanup).port)
    _, envoy = seed_envoy(cleanup, shape_, front, ca, server, {})
    mcp_host = host(oidc["resourceUrl"])
    resolver = Resolver({mcp_host: (envoy.port, False), okta: (front.port, True)}, ca.ca)
    tools, result, token = call_tool(mcp_url(oidc), resolver, "alice", "alice-secret", oidc["issuer"],
                                     MCP_SCOPE, tool="ping")
    assert "whoami" in tools and not result.is_error, result
    # The MCP server got Google's token for alice, never Okta's.
    got = {v.split(" ", 1)[1] for v in server.seen() if v}
    assert got and all(google.issued[t]["kind"] == "sts" and google.issued[t]["sub"] == "alice" for t in got)
    assert token not in got
    form = google.requests[0]["form"]
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:id_token"
    assert form["requested_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert google.errors == [], google.errors
