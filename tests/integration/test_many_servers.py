"""Issue 16: one gateway, many MCP servers, on real Envoy.

One Envoy (2 workers; the filter delivered by ECDS, as Istio delivers it:
gateway.py) fronts two MCP servers on one host, /github/mcp and /jira/mcp,
and an unrelated app on another host. Each server has its own authorization
server (an oidc-provider MCP AS, with the code flow, that issues its
clients' tokens), its own backend AS that exchanges those tokens (RFC 8693),
its own MCP server (tests/mcp/server.mjs) and its own backend, which
verifies every token it gets against its backend AS; /<server>/api/ reaches
that backend directly. One filter config describes it all, in the issue's
shape: a partial top-level `oidc` (GitHub's issuer and keys), a rule per
server with its own `oidc` merged over it and its own `tokenExchange`, and a
last rule that skips everything else.

Also here: the configs the filter refuses, each pushed to that gateway, and
a config of 100 resources and 10 issuers.
"""

import copy
import json
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from constants import CLIENT, GW_CLIENT, GW_SECRET, GW_SECRET_ENV, SECRET
from gateway import Gateway
from harness import ISSUED_TOKENS, Backend, IdP, McpServer, decode_part, free_port, run_client, wait_for
from login import login
from stacks import clients_for, exchange_client, start_backend_as

APP_HOST = "app.example.com"
# Each server: its audience (None: its resource URL, as the issue's GitHub
# rule has it), the scopes its route requires, and the audience and scope of
# the backend API its tokens are exchanged for.
SERVERS = {
    "github": (None, ["repo:read"], "github-api", "repo"),
    "jira": ("api://jira-mcp", ["jira:read"], "jira-api", "jira"),
}


def start_server(cleanup, name, port):
    """One MCP server's own parts, for the gateway on `port`."""
    audience, scopes, api, api_scope = SERVERS[name]
    resource = f"http://127.0.0.1:{port}/{name}/mcp"
    audience = audience or resource
    mcp_as = IdP(cleanup, f"{name}-as", resources={resource: {"audience": audience, "scope": " ".join(scopes)}},
                 clients=clients_for(CLIENT), extra_env={"IDP_INTERACTIVE": "1"}).start()
    backend_as = start_backend_as(cleanup, mcp_as, f"{name}-backend-as", audience=audience,
                                  resources={f"https://{api}.example.com/": {"audience": api, "scope": api_scope}},
                                  clients=[exchange_client(f"gw-{name}", f"{name}-gw-secret")])
    backend = Backend(cleanup, verify_with=backend_as, audience=api)
    return SimpleNamespace(
        name=name, resource=resource, audience=audience, scopes=scopes, api=api, api_scope=api_scope,
        mcp_as=mcp_as, backend_as=backend_as, backend=backend, mcp=McpServer(cleanup, backend.port),
        secret_env=f"{name.upper()}_GW_SECRET",
        metadata=f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/{name}/mcp")


def server_rule(s, **oidc):
    return {
        "match": {"hosts": ["127.0.0.1"], "pathPrefix": f"/{s.name}/"},
        "oidc": {"audience": s.audience, "resourceUrl": s.resource, "requiredScopes": s.scopes, **oidc},
        "tokenExchange": {"tokenUrl": f"{s.backend_as.issuer}/token", "clientId": f"gw-{s.name}",
                          "clientSecretEnv": s.secret_env, "audience": s.api, "scopes": [s.api_scope]},
    }


def two_server_config(github, jira):
    return {
        # The default issuer is GitHub's; Jira's rule names its own, and its keys.
        "oidc": {"issuer": github.mcp_as.issuer, "jwksUrl": f"{github.mcp_as.issuer}/jwks", "clockSkewSeconds": 1},
        "rules": [
            server_rule(github),
            server_rule(jira, issuer=jira.mcp_as.issuer, jwksUrl=f"{jira.mcp_as.issuer}/jwks"),
            {"match": {}, "skip": True},
        ],
    }


@pytest.fixture(scope="module")
def gw(module_cleanup):
    port = free_port()
    with ThreadPoolExecutor(2) as pool:
        github, jira = pool.map(lambda name: start_server(module_cleanup, name, port), SERVERS)
    app = Backend(module_cleanup)
    routes = [r for s in (github, jira)
              for r in ((f"/{s.name}/mcp", s.mcp.port, "/mcp"), (f"/{s.name}/api/", s.backend.port, None))]
    config = two_server_config(github, jira)
    gateway = Gateway(module_cleanup, "two-servers",
                      {APP_HOST: [("/", app.port, None)], "*": routes + [("/", app.port, None)]},
                      [p for s in (github, jira) for p in (s.mcp_as.port, s.backend_as.port)], config,
                      env={s.secret_env: f"{s.name}-gw-secret" for s in (github, jira)}, port=port)
    return SimpleNamespace(gateway=gateway, github=github, jira=jira, servers=(github, jira), app=app,
                           config=config)


def token(s, scopes=None):
    """A client-credentials token of `s`'s MCP AS for `s`'s resource."""
    return s.mcp_as.token(CLIENT, SECRET, s.resource, " ".join(s.scopes if scopes is None else scopes))


def verified(body):
    return json.loads(body)["verified_claims"]


def test_each_server_has_its_own_issuer_keys_and_backend_as(gw):
    """Each issuer's keys come from its own JWKS, fetched once for the proxy
    (both workers) on the filter's first tick; a server's token is
    exchanged at its own backend AS, and at no other; asked again, both
    come from the caches."""
    def counts():
        # The filter calls an MCP AS for its keys only.
        return {s.name: (gw.gateway.callouts(s.mcp_as.port), s.backend_as.exchanges()) for s in gw.servers}

    wait_for(lambda: all(gw.gateway.callouts(s.mcp_as.port) for s in gw.servers), "both issuers' keys")
    expected = {"github": (1, 0), "jira": (1, 0)}
    assert counts() == expected
    tokens = {}
    for s in gw.servers:
        tokens[s.name] = token(s)
        status, _, body = gw.gateway.get(f"/{s.name}/api/whoami", tokens[s.name])
        assert status == 200, body
        claims = verified(body)  # by this server's backend, against its backend AS
        assert (claims["iss"], claims["aud"], claims["sub"], claims["scope"]) == \
            (s.backend_as.issuer, s.api, CLIENT, s.api_scope)
        expected[s.name] = (1, 1)
        assert counts() == expected, f"{s.name}: exchanged at its own backend AS, once"
    for s in gw.servers:
        assert gw.gateway.get(f"/{s.name}/api/whoami", tokens[s.name])[0] == 200
    assert counts() == expected, "cached"


@pytest.mark.parametrize("name", SERVERS)
def test_each_resource_has_its_own_metadata_and_challenges(gw, name):
    s = getattr(gw, name)
    status, headers, body = gw.gateway.get(f"/.well-known/oauth-protected-resource/{name}/mcp")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["resource"] == s.resource
    assert doc["authorization_servers"] == [s.mcp_as.issuer]
    assert doc["scopes_supported"] == s.scopes

    served = (s.backend.requests(), len(s.mcp.seen()))
    for path in (f"/{name}/mcp", f"/{name}/api/x"):
        status, headers, _ = gw.gateway.get(path)
        assert status == 401
        assert headers["www-authenticate"] == \
            f'Bearer scope="{" ".join(s.scopes)}", resource_metadata="{s.metadata}"'
    status, headers, _ = gw.gateway.get(f"/{name}/mcp", token(s, scopes=[]))
    assert status == 403
    challenge = headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and f'scope="{" ".join(s.scopes)}"' in challenge
    assert f'resource_metadata="{s.metadata}"' in challenge
    assert (s.backend.requests(), len(s.mcp.seen())) == served, "refusals never reach the upstream"


@pytest.mark.parametrize("name,other", [("github", "jira"), ("jira", "github")])
def test_a_token_for_one_resource_is_refused_on_the_other(gw, name, other):
    s, o = getattr(gw, name), getattr(gw, other)
    good = token(s)
    assert gw.gateway.get(f"/{name}/api/x", good)[0] == 200, "the token is good on its own route"
    assert gw.gateway.get(f"/{other}/api/x", token(o))[0] == 200, f"{other}'s keys are in"
    before = [(x.backend_as.exchanges(), x.backend.requests(), len(x.mcp.seen())) for x in gw.servers]
    keys = [gw.gateway.callouts(x.mcp_as.port) for x in (s, o)]
    for path in (f"/{other}/mcp", f"/{other}/api/x"):
        status, headers, _ = gw.gateway.get(path, good)
        assert status == 401
        challenge = headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), challenge
        assert f'resource_metadata="{o.metadata}"' in challenge, f"{other}'s challenge"
    assert [(x.backend_as.exchanges(), x.backend.requests(), len(x.mcp.seen())) for x in gw.servers] == before, \
        "no exchange anywhere, and neither upstream reached"
    # No keys were asked for: not the token's issuer's, which are no keys of
    # this route, and not this route's issuer's again, since a token of
    # another issuer cannot pass whatever keys come (so it waits for none).
    assert [gw.gateway.callouts(x.mcp_as.port) for x in (s, o)] == keys


def test_the_unrelated_host_passes_untouched(gw):
    """The app's host matches no server's rule: the catch-all skips it,
    with or without credentials, on any path (a server's path, and its
    metadata path, included)."""
    github_token = token(gw.github)
    for path in ("/", "/github/mcp", "/.well-known/oauth-protected-resource/github/mcp"):
        for authorization in ("Basic YXBwOmFwcA==", "Bearer the-apps-own-token", f"Bearer {github_token}", None):
            served = gw.app.requests()
            headers = {"authorization": authorization} if authorization else {}
            status, got, body = gw.gateway.get(path, host=APP_HOST, headers=headers)
            assert status == 200 and "www-authenticate" not in got
            seen = dict(json.loads(body)["headers"])
            assert seen.get("authorization") == authorization, "its own Authorization, as sent"
            assert gw.app.requests() == served + 1


def test_one_sdk_client_logs_in_to_both_servers_at_their_own_authorization_servers(gw):
    """The official TypeScript SDK (tests/mcp/client-oauth.mjs), told only
    the two MCP URLs: for each, the 401 names that server's metadata, which
    names that server's authorization server, where it registers and the
    user logs in (code flow with PKCE); then `whoami` comes back with an
    exchanged token from that server's backend AS."""
    authorize = []

    def user(event):
        if event["event"] == "authorize":
            authorize.append(event)
            return login(event["url"], "alice")
        return None

    before = [s.backend_as.exchanges() for s in gw.servers]
    events = run_client("client-oauth.mjs", {"MCP_URL": " ".join(s.resource for s in gw.servers)}, user)
    assert [a["server"] for a in authorize] == [s.resource for s in gw.servers]
    for s, asked, n in zip(gw.servers, authorize, before):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(asked["url"]).query)
        assert asked["url"].startswith(f"{s.mcp_as.issuer}/auth?"), f"{s.name}'s own authorization server"
        assert q["resource"] == [s.resource]
        assert set(s.scopes) <= set(q["scope"][0].split())
        authorized = next(e for e in events if e["event"] == "authorized" and e["server"] == s.resource)
        ISSUED_TOKENS.add(authorized["access_token"])
        claims = decode_part(authorized["access_token"], 1)
        assert (claims["iss"], claims["aud"], claims["sub"]) == (s.mcp_as.issuer, s.audience, "alice")
        results = [e["result"] for e in events if e["event"] == "whoami" and e["server"] == s.resource]
        assert len(results) == 2
        for got in results:
            c = got["verified_claims"]  # by this server's backend
            assert (c["iss"], c["aud"], c["sub"], c["scope"]) == (s.backend_as.issuer, s.api, "alice", s.api_scope)
        assert s.backend_as.exchanges() == n + 1, "one exchange for the session, at this server's backend AS"
        seen = s.mcp.seen()
        assert seen and all(v.startswith("Bearer ") and authorized["access_token"] not in v for v in seen)
        assert {decode_part(v.split(" ", 1)[1], 1)["iss"] for v in seen} == {s.backend_as.issuer}, \
            "the MCP server got exchanged tokens only"


# --- Refused configs -----------------------------------------------------------

def same_resource_two_issuers(c, gw):
    c["rules"][1]["oidc"]["resourceUrl"] = gw.github.resource
    return (f"rules[1].oidc.resourceUrl: {gw.github.resource} is also the resource of rules[0].oidc, "
            f"whose issuer is {gw.github.mcp_as.issuer}")


def same_metadata_place(c, gw):
    # Another resource URL (a trailing slash), described at the same place.
    c["rules"][1]["oidc"]["resourceUrl"] = gw.github.resource + "/"
    return f"rules[1].oidc.resourceUrl: {gw.github.resource}/ would be described at {gw.github.metadata}"


def incomplete_rule(c, gw):
    del c["rules"][1]["oidc"]["audience"]  # and the top-level oidc has none
    return "rules[1].oidc.audience: must name at least one audience"


def no_oidc_and_no_catch_all(c, gw):
    del c["oidc"]
    c["rules"].pop()
    return "oidc: is required, unless the last rule matches every request"


@pytest.mark.parametrize("change", [same_resource_two_issuers, same_metadata_place, incomplete_rule,
                                    no_oidc_and_no_catch_all])
def test_a_refused_config_names_its_field(gw, change):
    """Pushed to the running gateway, each config is refused by
    on_configure with one log line naming the field; the last good config
    goes on serving."""
    g = gw.gateway
    bad = copy.deepcopy(gw.config)
    expected = change(bad, gw)
    fails, log_at = g.stat("config_fail"), len(g.log())
    g.push(bad, accepted=False)
    assert g.stat("config_fail") == fails + 1
    wait_for(lambda: "invalid configuration" in g.log()[log_at:], "the filter's log line")
    time.sleep(0.5)  # any further line of this refusal
    lines = [line for line in g.log()[log_at:].splitlines() if "invalid configuration" in line]
    assert len(lines) == 1, lines
    assert f"token-exchange-filter: invalid configuration: {expected}" in lines[0], lines[0]
    # The last good config serves: Jira's route as it was.
    doc = json.loads(g.get("/.well-known/oauth-protected-resource/jira/mcp")[2])
    assert (doc["resource"], doc["authorization_servers"]) == (gw.jira.resource, [gw.jira.mcp_as.issuer])
    assert g.get("/jira/mcp")[1]["www-authenticate"] == \
        f'Bearer scope="jira:read", resource_metadata="{gw.jira.metadata}"'


# --- Scale ---------------------------------------------------------------------

RESOURCES, ISSUERS = 100, 10


@pytest.fixture(scope="module")
def scale(module_cleanup):
    """100 resources on 10 hosts (mcp0.example.com … mcp9, each serving
    /s0/mcp … /s9/mcp), rule i validated by issuer i % 10. Issuers 8 and 9
    are real IdPs that share one signing key; issuers 0-7 are tenants of
    issuer 9 (its keys, issuers of their own) that no request here names.
    Every rule exchanges at one real backend AS, each for its own audience."""
    resource = lambda i: f"https://mcp{i // 10}.example.com/s{i % 10}/mcp"  # noqa: E731
    last_resource = {resource(RESOURCES - 1): {"audience": resource(RESOURCES - 1), "scope": f"s{RESOURCES - 1}:use"}}
    last = IdP(module_cleanup, "scale-as-9", resources=last_resource, clients=clients_for(CLIENT)).start()
    with ThreadPoolExecutor(2) as pool:
        twin = pool.submit(lambda: IdP(module_cleanup, "scale-as-8", keys=last.keys, resources=last_resource,
                                       clients=clients_for(CLIENT)).start())
        backend_as = pool.submit(lambda: start_backend_as(
            module_cleanup, last, "scale-backend-as", audience=resource(RESOURCES - 1),
            resources={"https://api-99.example.com/": {"audience": "api-99", "scope": "read"}}))
        twin, backend_as = twin.result(), backend_as.result()
    issuers = [f"{last.issuer}/tenant-{k}" for k in range(ISSUERS - 2)] + [twin.issuer, last.issuer]
    jwks = [f"{last.issuer}/jwks"] * (ISSUERS - 2) + [f"{twin.issuer}/jwks", f"{last.issuer}/jwks"]
    backend = Backend(module_cleanup, verify_with=backend_as, audience="api-99")
    rules = [{
        "match": {"hosts": [f"mcp{i // 10}.example.com"], "pathPrefix": f"/s{i % 10}/"},
        "oidc": {"issuer": issuers[i % ISSUERS], "jwksUrl": jwks[i % ISSUERS], "audience": resource(i),
                 "resourceUrl": resource(i), "requiredScopes": [f"s{i}:use"]},
        "tokenExchange": {"tokenUrl": f"{backend_as.issuer}/token", "clientId": GW_CLIENT,
                          "clientSecretEnv": GW_SECRET_ENV, "audience": f"api-{i}", "scopes": ["read"]},
    } for i in range(RESOURCES)]
    config = {"oidc": {"clockSkewSeconds": 1}, "rules": rules + [{"match": {}, "skip": True}]}
    started = time.monotonic()
    gateway = Gateway(module_cleanup, "scale", {"*": [("/", backend.port, None)]},
                      [last.port, twin.port, backend_as.port], config, env={GW_SECRET_ENV: GW_SECRET})
    print(f"100 resources, 10 issuers: {len(json.dumps(config))} bytes of config; "
          f"Envoy (2 workers) ready in {time.monotonic() - started:.2f} s")
    return SimpleNamespace(gateway=gateway, last=last, twin=twin, backend_as=backend_as, backend=backend,
                           issuers=issuers, resource=resource(RESOURCES - 1))


def test_a_hundred_resources_and_ten_issuers(scale):
    g, host = scale.gateway, f"mcp{(RESOURCES - 1) // 10}.example.com"
    configured = next(line for line in g.log().splitlines() if "token-exchange-filter configured:" in line)
    assert all(f"issuer {i}," in configured for i in scale.issuers), configured
    # Each issuer's keys are fetched once for the proxy, on the first tick:
    # issuers 0-7 and 9 from the last IdP's JWKS (a key set each), 8 from its own.
    fetched = lambda: (g.callouts(scale.last.port), g.callouts(scale.twin.port))  # noqa: E731
    wait_for(lambda: fetched() == (ISSUERS - 1, 1), "every issuer's keys")

    # The last resource's metadata, on its host; the same path on another host is that host's resource.
    path = "/.well-known/oauth-protected-resource/s9/mcp"
    doc = json.loads(g.get(path, host=host)[2])
    assert (doc["resource"], doc["authorization_servers"], doc["scopes_supported"]) == \
        (scale.resource, [scale.last.issuer], [f"s{RESOURCES - 1}:use"])
    doc = json.loads(g.get("/.well-known/oauth-protected-resource/s8/mcp", host="mcp3.example.com")[2])
    assert (doc["resource"], doc["authorization_servers"]) == ("https://mcp3.example.com/s8/mcp", [scale.twin.issuer])
    status, headers, _ = g.get("/s9/mcp", host=host)
    assert status == 401
    assert headers["www-authenticate"] == \
        f'Bearer scope="s{RESOURCES - 1}:use", resource_metadata="https://{host}{path}"'

    # Its own issuer's token passes, and is exchanged for its own target.
    good = scale.last.token(CLIENT, SECRET, scale.resource, f"s{RESOURCES - 1}:use")
    status, _, body = g.get("/s9/mcp", good, host=host)
    assert status == 200, body
    claims = verified(body)
    assert (claims["iss"], claims["aud"], claims["sub"]) == (scale.backend_as.issuer, "api-99", CLIENT)
    assert scale.backend_as.exchanges("api-99") == scale.backend_as.exchanges() == 1
    # Issuer 8 signs with the same key, for the same audience and scope:
    # only `iss` differs, and rule 99 takes its own issuer's tokens only.
    twin = scale.twin.token(CLIENT, SECRET, scale.resource, f"s{RESOURCES - 1}:use")
    assert decode_part(twin, 0)["kid"] == decode_part(good, 0)["kid"]
    served = scale.backend.requests()
    status, headers, _ = g.get("/s9/mcp", twin, host=host)
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert scale.backend.requests() == served and scale.backend_as.exchanges() == 1
    assert fetched() == (ISSUERS - 1, 1), "no key fetched again"
