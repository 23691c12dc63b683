"""Issues 8 and 17: the filter as Istio and Envoy Gateway deliver it, through
the routes the shipped shapes define, on real Envoy.

The module is built into an OCI image, pushed to a local registry and pulled
back as Istio's agent pulls it (`oci.py`). Each shape's WasmPlugin, read as
shipped (istio/<shape>/06-wasmplugin.yaml), is translated into the ECDS
resource istiod would send (`istio.py`) and loaded by Envoy from watched
files. Envoy's routes come from the shape's own VirtualService or HTTPRoute
(hosts, prefixes): on a gateway shape the filter sits on the gateway
listener; on a sidecar shape the gateway listener only routes, to a second
listener standing for the sidecar's inbound side, which runs the filter.
Envoy Gateway's shape gets the filter disabled in the connection manager and
enabled per route on the targeted HTTPRoute's routes, as EG generates it.
Another app on another host shares every gateway.

The IdPs (two oidc-provider servers, Okta-style paths on one host) are
reachable only over TLS with SNI, through clusters built from each shape's
ServiceEntry + DestinationRule (or EnvoyPatchPolicy). The backend verifies
every token it gets against the backend AS. Through every shape, the
official Python MCP SDK finds its way in from nothing but the MCP URL:
401 -> RFC 9728 metadata -> the authorization server's metadata -> a token
-> a tool call that reaches the backend with an exchanged token.

The shared gateway (istio/shared-gateway/) fronts two MCP servers on one
host, each with its own issuer: it gets an Envoy of its own, and each
server its own authorization server, backend AS, backend and MCP server,
at the IdP URLs and behind the Services its files name. Told either URL,
the client finds that server's own authorization server.
"""

import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import constants
import oci
from harness import WASM, WORK, Backend, IdP, McpServer, call, decode_part, free_port, tamper_signature, wait_for
from httpd import HttpServer, files
from istio import (
    CA,
    Ecds,
    EnvoyProc,
    IdpFront,
    clone,
    deny_resource,
    ecds_resource,
    envoy_bootstrap,
    filter_name,
    istio_clusters,
    routed_listener,
    shape_listeners,
    static_cluster,
    virtual_hosts,
)
from mcp_client import Resolver, call_tool
from shapes import METADATA_PREFIX, SHAPES, Route, shape
from stacks import clients_for, exchange_client, start_backend_as

SHARED_SHAPE = shape("istio/shared-gateway")
# The shapes of one MCP server, whose authorization servers are idp.example.com's
# (the `idps` fixture). The shared gateway's servers each have their own (`shared`).
ISTIO_SHAPES = [s for s in SHAPES if s.platform == "istio" and "toolhive" not in s.name and s is not SHARED_SHAPE]
EG_SHAPE = shape("envoy-gateway/mcp-route")
GATEWAY_SHAPE, SIDECAR_SHAPE = shape("istio/ingress-gateway"), shape("istio/sidecar")
(GATEWAY,) = GATEWAY_SHAPE.of("WasmPlugin")
(SIDECAR,) = SIDECAR_SHAPE.of("WasmPlugin")
SECRET = "istio-client-secret"
BACKEND_ISSUER = "https://idp.example.com/oauth2/backend"
# What the backend AS issues for each audience the manifests ask for.
BACKEND_RESOURCES = {
    "https://backend.example.com/": {"audience": "backend", "scope": "backend:read"},
    "https://reports.example.com/": {"audience": "reports", "scope": "reports:read"},
}
TESTER = (constants.CLIENT, constants.SECRET)
# Another app behind the same gateways, on its own host: no filter business.
OTHER_HOST = "other.example.com"
OTHER_APP = Route({"kind": "VirtualService", "metadata": {"name": "other-app"}}, [OTHER_HOST], "prefix", "/",
                  ("other-app.apps.svc.cluster.local", 80), "apps")


def plugin_configs():
    """Every plugin config of the shapes on idp.example.com, and every rule's."""
    for s in ISTIO_SHAPES + [EG_SHAPE]:
        for p in s.plugins():
            yield p.config.get("tokenExchange"), p.config
            for rule in p.config.get("rules", []):
                yield rule.get("tokenExchange"), p.config


def url_path(url):
    return urllib.parse.urlsplit(url).path


def is_sidecar(shape_, wp):
    (plugin,) = [p for p in shape_.plugins() if p.doc is wp] or [None]
    return plugin is not None and any(p.kind == "sidecar" for p in plugin.proxies())


@pytest.fixture(scope="module")
def module(module_cleanup):
    """Test 1's chain: build the image, push it, pull it back as Istio does."""
    missing = oci.missing_tools()
    assert not missing, f"missing {missing}: run tests/bootstrap.sh --oci"
    registry = oci.Registry(module_cleanup)
    layout, tag, _ = oci.build_image(WASM, WORK / f"oci-istio-{registry.port}")
    digest = oci.push(layout, tag, registry, "token-exchange-filter")
    ref = f"oci://{registry.host}/token-exchange-filter:{tag}"
    path = oci.pull(ref, digest, WORK / f"wasm-cache-{registry.port}")
    assert path.read_bytes() == WASM.read_bytes()
    return SimpleNamespace(ref=ref, digest=digest, path=path)


@pytest.fixture(scope="module")
def idps(module_cleanup):
    """The two authorization servers, with the issuers, audiences and client
    the manifests name, behind TLS for the manifests' IdP host; the echo
    backend (verifying), the other app, and the MCP server."""
    oidc = GATEWAY["spec"]["pluginConfig"]["oidc"]
    host = urllib.parse.urlsplit(oidc["jwksUrl"]).hostname
    ca = CA(host)
    scope = " ".join(oidc["requiredScopes"])
    resources = {pc["oidc"]["resourceUrl"]: {"audience": oidc["audience"], "scope": scope}
                 for _, pc in plugin_configs()}
    resources["urn:test:no-scope"] = {"audience": oidc["audience"], "scope": ""}
    # Behind the TLS front, its metadata names https://idp.example.com/... endpoints.
    mcp_as = IdP(module_cleanup, "mcp-as", issuer=oidc["issuer"], resources=resources,
                 clients=clients_for(TESTER[0]), extra_env={"IDP_BEHIND_PROXY": "1"}).start()
    client_ids = {te["clientId"] for te, _ in plugin_configs() if te}
    backend_as = start_backend_as(module_cleanup, mcp_as, issuer=BACKEND_ISSUER, audience=oidc["audience"],
                                  trust_jwks=True, resources=BACKEND_RESOURCES,
                                  clients=[exchange_client(c, SECRET) for c in client_ids])
    routes = {url_path(pc["oidc"]["jwksUrl"]): (mcp_as.port, "/jwks") for _, pc in plugin_configs()}
    routes.update({url_path(te["tokenUrl"]): (backend_as.port, "/token") for te, _ in plugin_configs() if te})
    # What an MCP client reads: the issuer's OIDC metadata, and the token
    # endpoint it names (oidc-provider's, at the front's host).
    routes[url_path(oidc["issuer"]) + "/.well-known/openid-configuration"] = (
        mcp_as.port, "/.well-known/openid-configuration")
    routes["/token"] = (mcp_as.port, "/token")
    front = IdpFront(module_cleanup, ca, {host: [(p, port, up) for p, (port, up) in routes.items()]})
    backend = Backend(module_cleanup, verify_with=backend_as,
                      audience=",".join(r["audience"] for r in BACKEND_RESOURCES.values()))
    other_app = Backend(module_cleanup)
    clusters = {c["name"]: c for s in ISTIO_SHAPES for c in istio_clusters(s.docs, front.port, ca.ca)}
    mcp_server = McpServer(module_cleanup, backend.port)
    return SimpleNamespace(mcp_as=mcp_as, backend_as=backend_as, backend=backend, other_app=other_app, ca=ca,
                           clusters=list(clusters.values()), front=front, host=host, mcp_server=mcp_server,
                           server=lambda resource: Server(resource, oidc["issuer"], scope, oidc["audience"],
                                                          backend_as, "backend", mcp_server),
                           token=lambda resource=oidc["resourceUrl"], scope=scope:
                           mcp_as.token(*TESTER, resource, scope))


@dataclass
class Server:
    """One MCP server as its clients meet it: its resource URL, the issuer
    and scope of the token it wants and that token's audience; and behind
    the gateway, the backend AS its tokens are exchanged at, the audience
    of the tokens that AS issues, and the MCP server itself; `mcp_as`, the
    authorization server, when the test started one for this server alone."""
    resource: str
    issuer: str
    scope: str
    audience: str
    backend_as: object
    backend_audience: str
    mcp_server: object
    mcp_as: object = None


@dataclass
class Entry:
    """One WasmPlugin on the test's Envoy, with the shape whose routes lead to it."""
    shape: object
    wp: dict
    extra_routes: tuple = ()


def istio_envoy(cleanup, idps, entries, ecds, env=None, upstream_port=None, services=None):
    """Envoy with the listeners of each entry (shape_listeners), each filter
    fed by ECDS from `ecds` and placed first (phase AUTHN), as istiod builds
    the chain. `services` maps a route's destination Service (FQDN) to the
    port standing for it; every other Service of the shapes is
    `upstream_port` (default: the echo backend); the other app's host goes
    to the other app. `idps` gives the echo backend, the other app and the
    IdPs' clusters."""
    services = services or {}

    def upstream(r):
        if r is OTHER_APP:
            return "other-app"
        return f"service|{r.backend[0]}" if r and r.backend[0] in services else "upstream"

    listeners, clusters, ports = [], [], {}
    for key, e in entries.items():
        routes = list(e.extra_routes) + e.shape.routes() + [OTHER_APP]
        ls, cs, ports[key] = shape_listeners(key, routes, ecds.http_filter(filter_name(e.wp)),
                                             is_sidecar(e.shape, e.wp), upstream)
        listeners += ls
        clusters += cs
    clusters += [static_cluster("upstream", upstream_port or idps.backend.port),
                 static_cluster("other-app", idps.other_app.port)] + idps.clusters
    clusters += [static_cluster(f"service|{fqdn}", port) for fqdn, port in services.items()]
    admin = free_port()
    envoy = EnvoyProc(cleanup, "envoy-istio", envoy_bootstrap(admin, listeners, clusters), admin,
                      env=env or {"TOKEN_EXCHANGE_CLIENT_SECRET": SECRET})
    envoy.wait_ready(ports.values())
    envoy.ports = ports
    return envoy


def get(envoy, listener, path="/mcp", token=None, host="mcp.example.com", headers=None):
    headers = {"host": host, **(headers or {})}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return call(envoy.ports[listener], path, headers=headers)


def seen(body):
    """The backend's report of the request it served."""
    return json.loads(body)


def resource_of(shape_):
    (plugin,) = shape_.plugins()
    return plugin.config["oidc"]["resourceUrl"], plugin.resource()


# Test-only routes for a second API behind the MCP host, for the rules test.
EXTRA_API = tuple(Route({"kind": "VirtualService", "metadata": {"name": "api"}}, ["mcp.example.com"], "prefix", p,
                        ("api.apps.svc.cluster.local", 80), "apps") for p in ("/healthz", "/reports/"))


def with_rules(wp, name):
    """`wp` with a skipped /healthz and a second exchange target in front of
    its own rules, on the MCP host."""
    pc = wp["spec"]["pluginConfig"]
    te = {**pc["tokenExchange"], "audience": "reports", "scopes": ["reports:read"]}
    rules = [{"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/healthz"}, "skip": True},
             {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/reports/"}, "tokenExchange": te}]
    return clone(wp, **{"metadata.name": name, "spec.pluginConfig": {**pc, "rules": rules + pc["rules"]}})


def mesh_entries():
    """Every Istio shape on idp.example.com; a second gateway plugin (test 4)
    that differs from the first only in its name and one cache setting, so
    only the shared-data prefix keeps them apart, delivered as Istio 1.30+
    names it; and the gateway plugin with more rules."""
    entries = {s.name: Entry(s, s.of("WasmPlugin")[0]) for s in ISTIO_SHAPES}
    pc = GATEWAY["spec"]["pluginConfig"]
    second = clone(GATEWAY, istio1_30=True, **{"metadata.name": "token-exchange-b", "spec.pluginConfig": {
        **pc, "cache": {"maxEntries": 10000, "expirySkewSeconds": 29}}})
    entries["gateway-b"] = Entry(GATEWAY_SHAPE, second)
    entries["rules"] = Entry(GATEWAY_SHAPE, with_rules(GATEWAY, "token-exchange-rules"), EXTRA_API)
    return entries


@pytest.fixture(scope="module")
def mesh(module_cleanup, module, idps):
    """One Envoy carrying every entry, the shapes' Service being the echo backend."""
    ecds = Ecds("mesh")
    entries = mesh_entries()
    for e in entries.values():
        ecds.put(ecds_resource(e.wp, module.path))
    return istio_envoy(module_cleanup, idps, entries, ecds)


@pytest.fixture(scope="module")
def mcp_mesh(module_cleanup, module, idps):
    """The Istio shapes again, their Service being the MCP server."""
    ecds = Ecds("mcp-mesh")
    entries = {s.name: Entry(s, s.of("WasmPlugin")[0]) for s in ISTIO_SHAPES}
    for e in entries.values():
        ecds.put(ecds_resource(e.wp, module.path))
    return istio_envoy(module_cleanup, idps, entries, ecds, upstream_port=idps.mcp_server.port)


def test_ecds_resource_is_what_istiod_sends(module):
    r = ecds_resource(GATEWAY, module.path)
    assert r["name"] == "extensions.istio.io/wasmplugin/istio-system.token-exchange"
    c = r["typed_config"]["config"]
    assert c["name"] == "istio-system.token-exchange" and c["root_id"] == "token-exchange"
    assert "vm_id" not in c["vm_config"]
    assert c["vm_config"]["environment_variables"]["host_env_keys"] == ["TOKEN_EXCHANGE_CLIENT_SECRET"]
    assert c["failure_policy"] == "FAIL_CLOSED"
    text = c["configuration"]["value"]
    assert '"timeoutMs":5000.0' in text and '"maxEntries":10000.0' in text, "numbers as a Struct has them"
    assert json.loads(text)["tokenExchange"]["clientSecretEnv"] == "TOKEN_EXCHANGE_CLIENT_SECRET"
    assert SECRET not in json.dumps(r), "the secret is never in the resource"
    assert c["vm_config"]["code"]["local"]["filename"].endswith(f"{module.digest}.wasm")


def test_envoy_loaded_each_plugin_as_istio_names_it(mesh):
    dump = json.loads(call(mesh.admin, "/config_dump?resource=ecds_filters")[2])
    loaded = {c["ecds_filter"]["name"]: c["ecds_filter"]["typed_config"] for c in dump["configs"]}
    assert set(loaded) == {
        "extensions.istio.io/wasmplugin/istio-system.token-exchange",
        "extensions.istio.io/wasmplugin/istio-ingress.token-exchange",
        "extensions.istio.io/wasmplugin/mcp-gateway.token-exchange",
        "extensions.istio.io/wasmplugin/mcp.token-exchange",
        "extensions.istio.io/trafficextension/istio-system.token-exchange-b~istio-translated-wasmplugin",
        "extensions.istio.io/wasmplugin/istio-system.token-exchange-rules",
    }
    for cfg in (c["config"] for c in loaded.values()):
        assert cfg["root_id"] == "token-exchange" and "vm_id" not in cfg["vm_config"]
    log = mesh.proc.text()
    assert "token-exchange-filter configured" in log
    assert "via cluster outbound|443||idp.example.com" in log, "gateways: pattern B, the default name"
    assert "via cluster outbound|80||idp.example.com" in log, "sidecar: pattern A, named explicitly"


@pytest.mark.parametrize("shape_", ISTIO_SHAPES, ids=str)
def test_core_and_exchange_through_the_shipped_routes(mesh, idps, shape_):
    resource, (host, path, meta_path) = resource_of(shape_)
    oidc = shape_.plugins()[0].config["oidc"]
    # No token: a challenge naming the metadata, which is routed and served.
    status, headers, _ = get(mesh, shape_.name, path, host=host)
    assert status == 401
    assert f'resource_metadata="https://{host}{meta_path}"' in headers["www-authenticate"]
    status, _, body = get(mesh, shape_.name, meta_path, host=host)
    assert status == 200 and json.loads(body)["resource"] == resource
    assert json.loads(body)["authorization_servers"] == [oidc["issuer"]]

    # A good token is exchanged through the TLS cluster; the backend verifies it.
    token = idps.token(resource)
    before = idps.backend_as.exchanges()
    status, _, body = get(mesh, shape_.name, path, token=token, host=host)
    assert status == 200, body
    claims = seen(body)["verified_claims"]
    assert claims["iss"] == BACKEND_ISSUER and claims["aud"] == "backend"
    assert claims["sub"] == decode_part(token, 1)["sub"]
    assert token not in body, "the caller's token never reaches the upstream"
    assert idps.backend_as.exchanges() == before + 1
    # Served from the cache next time.
    assert get(mesh, shape_.name, path, token=token, host=host)[0] == 200
    assert idps.backend_as.exchanges() == before + 1

    # Refusals never reach the upstream.
    served = idps.backend.requests()
    assert get(mesh, shape_.name, path, token=tamper_signature(token), host=host)[0] == 401
    status, headers, _ = get(mesh, shape_.name, path, token=idps.token("urn:test:no-scope", None), host=host)
    assert status == 403 and 'error="insufficient_scope"' in headers["www-authenticate"]
    assert idps.backend.requests() == served


def check_client_path(front, port, server, exchanges_before):
    """The Python SDK, told only the MCP URL, finds the authorization server
    of `server` (a Server) and calls whoami through the Envoy listener on
    `port`; the IdPs are behind `front`. Returns what the client asked for."""
    u = urllib.parse.urlsplit(server.resource)
    resolver = Resolver({u.hostname: (port, False), **{h: (front.port, True) for h in front.hosts}}, front.ca)
    tools, result, token = call_tool(server.resource, resolver, *TESTER, server.issuer, server.scope)
    assert "whoami" in tools and not result.is_error, result
    claims = json.loads(result.content[0].text)["verified_claims"]
    assert (claims["iss"], claims["aud"], claims["sub"]) == \
        (server.backend_as.issuer, server.backend_audience, TESTER[0])
    # The way it came: a 401, the metadata the challenge named (through the
    # same listener), the issuer's metadata, a token, then the MCP calls.
    log = resolver.log
    assert log[0][0] == "POST" and log[0][1] == server.resource and log[0][2] == 401, log
    asked = [url for _, url, s in log if s == 200]
    assert f"https://{u.hostname}{METADATA_PREFIX}{u.path.rstrip('/')}" in asked, log
    assert f"{server.issuer}/.well-known/openid-configuration" in asked, log
    assert f"https://{urllib.parse.urlsplit(server.issuer).hostname}/token" in asked, log
    assert any(m == "POST" and url == server.resource and s == 200 for m, url, s in log), log
    assert decode_part(token, 1)["aud"] == server.audience
    assert token not in json.dumps(server.mcp_server.seen()), "the client's token never reached the MCP server"
    assert server.backend_as.exchanges() == exchanges_before + 1, "one exchange for the whole session"
    return asked


@pytest.mark.parametrize("shape_", ISTIO_SHAPES, ids=str)
def test_an_mcp_client_finds_its_way_in(mcp_mesh, idps, shape_):
    resource, _ = resource_of(shape_)
    check_client_path(idps.front, mcp_mesh.ports[shape_.name], idps.server(resource), idps.backend_as.exchanges())


def check_other_host_left_alone(envoy, listener, other_app, host=OTHER_HOST, paths=("/", "/mcp", "/api/orders")):
    """The other app's requests pass untouched: no 401 without a token, its
    own Authorization kept, even on the MCP server's paths."""
    for path in paths:
        served = other_app.requests()
        status, headers, body = get(envoy, listener, path, host=host)
        assert status == 200 and "www-authenticate" not in headers, (path, status, body)
        assert other_app.requests() == served + 1
    status, _, body = get(envoy, listener, "/mcp", host=host, headers={"authorization": "Bearer app-own-token"})
    assert status == 200 and ["authorization", "Bearer app-own-token"] in seen(body)["headers"]


@pytest.mark.parametrize("shape_", [s for s in ISTIO_SHAPES if s is not SIDECAR_SHAPE], ids=str)
def test_other_hosts_on_the_gateway_are_left_alone(mesh, idps, shape_):
    check_other_host_left_alone(mesh, shape_.name, idps.other_app)


def test_rules_skip_and_route_to_their_own_target(mesh, idps):
    served = idps.backend.requests()
    status, _, body = get(mesh, "rules", "/healthz")
    # Skipped: the filter let it through, and the backend itself answered
    # (it wants a token of its own, as a real API would).
    assert idps.backend.requests() == served + 1
    assert (status, seen(body).get("detail")) == (401, "no bearer token")

    token = idps.token()
    before = idps.backend_as.exchanges()
    status, _, body = get(mesh, "rules", "/reports/q1", token=token)
    assert status == 200, body
    assert seen(body)["verified_claims"]["aud"] == "reports"
    assert seen(body)["verified_claims"]["scope"] == "reports:read"
    status, _, body = get(mesh, "rules", "/mcp", token=token)
    assert seen(body)["verified_claims"]["aud"] == "backend"
    # Each target's token is cached under its own key.
    n = idps.backend_as.exchanges()
    assert n - before <= 2
    for path in ("/reports/q2", "/mcp"):
        assert get(mesh, "rules", path, token=token)[0] == 200
    assert idps.backend_as.exchanges() == n
    # Another host matches no host rule: the catch-all skip, untouched.
    status, _, body = get(mesh, "rules", "/reports/q1", token=token, host=OTHER_HOST)
    assert status == 200 and ["authorization", f"Bearer {token}"] in seen(body)["headers"]
    # A path that could resolve into another route is refused.
    assert get(mesh, "rules", "/healthz/../mcp")[0] == 400


def test_two_plugins_share_no_cache_entries(mesh, idps):
    """Test 4: same VM (Istio sets no vm_id), same exchange parameters; only
    the plugin name and a cache setting differ."""
    token = idps.token()
    before = idps.backend_as.exchanges()
    assert get(mesh, GATEWAY_SHAPE.name, token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 1
    status, _, body = get(mesh, "gateway-b", token=token)
    assert status == 200 and seen(body)["verified_claims"]["aud"] == "backend"
    assert idps.backend_as.exchanges() == before + 2, "the second plugin exchanged for itself"
    for listener in (GATEWAY_SHAPE.name, "gateway-b"):
        assert get(mesh, listener, token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 2


def test_every_shipped_wasmplugin_is_accepted(cleanup, module, idps):
    """Every WasmPlugin of every shape, the ToolHive translations included,
    is accepted by the filter as Istio delivers it: no shape ships a config
    the filter would refuse."""
    entries, env = {}, {}
    for s in (s for s in SHAPES if s.platform == "istio"):
        for i, wp in enumerate(s.of("WasmPlugin")):
            entries[f"{s.dir.name}-{i}"] = Entry(s, wp)
            for plugin in s.plugins():
                env.update({var: "a-secret" for var in plugin.secret_envs()})
    assert len(entries) >= 6
    ecds = Ecds("all")
    for e in entries.values():
        ecds.put(ecds_resource(e.wp, module.path))
    envoy = istio_envoy(cleanup, idps, entries, ecds, env=env)
    dump = json.loads(call(envoy.admin, "/config_dump?resource=ecds_filters")[2])
    assert {c["ecds_filter"]["name"] for c in dump["configs"]} == {filter_name(e.wp) for e in entries.values()}
    assert "invalid configuration" not in envoy.proc.text()


def test_live_reload_bad_config_and_failed_pull(cleanup, module, idps):
    """Test 5, on its own Envoy: a new config takes effect without a restart;
    a bad one is refused, naming the field, and the old one keeps serving; a
    module that cannot be pulled is replaced by Istio's deny-all filter."""
    ecds = Ecds("reload")
    ecds.put(ecds_resource(GATEWAY, module.path))
    envoy = istio_envoy(cleanup, idps, {"gateway": Entry(GATEWAY_SHAPE, GATEWAY)}, ecds)
    pid = envoy.proc.proc.pid
    token = idps.token()
    assert get(envoy, "gateway", token=token)[0] == 200

    scopes = ["mcp:tools:call", "mcp:admin"]
    rules = [{**r, "requiredScopes": scopes} if "requiredScopes" in r else r
             for r in GATEWAY["spec"]["pluginConfig"]["rules"]]
    stricter = clone(GATEWAY, **{"spec.pluginConfig.oidc.requiredScopes": scopes, "spec.pluginConfig.rules": rules})
    ecds.put(ecds_resource(stricter, module.path))
    wait_for(lambda: get(envoy, "gateway", token=token)[0] == 403, "the new config")
    assert 'scope="mcp:tools:call mcp:admin"' in get(envoy, "gateway")[1]["www-authenticate"]

    bad = clone(stricter, **{"spec.pluginConfig.oidc.jwksUrl": "keys"})
    ecds.put(ecds_resource(bad, module.path))
    wait_for(lambda: 'oidc.jwksUrl: must be an absolute http(s) URL, got \\"keys\\"' in envoy.proc.text()
             or 'oidc.jwksUrl: must be an absolute http(s) URL, got "keys"' in envoy.proc.text(),
             "the refusal naming the field")
    wait_for(lambda: sum(envoy.stats("config_fail").values()) >= 1, "Envoy to count the refused update")
    status, headers, _ = get(envoy, "gateway", token=token)
    assert status == 403 and "mcp:admin" in headers["www-authenticate"], "the last good config still serves"

    # The agent cannot pull the module (a wrong digest): FAIL_CLOSE denies all.
    with pytest.raises(oci.PullError):
        oci.pull(module.ref, "0" * 64, WORK / "wasm-cache-bad")
    ecds.put(deny_resource(GATEWAY))
    wait_for(lambda: get(envoy, "gateway", token=token)[0] == 403 and "RBAC" in get(envoy, "gateway")[2],
             "the deny-all filter")
    assert get(envoy, "gateway", "/", host=OTHER_HOST)[0] == 403, "nothing passes, not even other hosts"
    assert envoy.proc.proc.pid == pid and envoy.proc.proc.poll() is None, "no restart"


# ---------------------------------------------------------------------------
# The shared gateway (istio/shared-gateway/): two MCP servers on one host,
# each with its own authorization server, audience and exchange target, and
# an app on another host. Everything it needs is read from its files.


def start_shared_server(cleanup, oidc, te, front_routes, env):
    """The parts behind one of the shared gateway's resources: an MCP AS at
    the rule's issuer issuing tokens for its resource, a backend AS at its
    token URL that exchanges them, a backend verifying what that AS issues,
    and an MCP server. Adds their URL paths to `front_routes` (host -> path
    -> (port, path)) and the exchange client's secret to `env`."""
    scope = " ".join(oidc["requiredScopes"])
    name = te["clientId"]
    mcp_as = IdP(cleanup, f"{name}-mcp-as", issuer=oidc["issuer"], clients=clients_for(TESTER[0]),
                 resources={oidc["resourceUrl"]: {"audience": oidc["audience"], "scope": scope}},
                 extra_env={"IDP_BEHIND_PROXY": "1"}).start()
    env[te["clientSecretEnv"]] = secret = f"{name}-secret"
    backend_as = start_backend_as(
        cleanup, mcp_as, f"{name}-backend-as", issuer=te["tokenUrl"].rsplit("/token", 1)[0],
        audience=oidc["audience"], trust_jwks=True, clients=[exchange_client(name, secret)],
        resources={f"https://{te['audience']}.example.com/": {"audience": te["audience"],
                                                               "scope": " ".join(te["scopes"])}})
    backend = Backend(cleanup, verify_with=backend_as, audience=te["audience"])
    issuer = urllib.parse.urlsplit(oidc["issuer"])
    for url, port, path in ((oidc["jwksUrl"], mcp_as.port, "/jwks"),
                            (f"{oidc['issuer']}/.well-known/openid-configuration", mcp_as.port,
                             "/.well-known/openid-configuration"),
                            # The token endpoint its metadata names, at its host's root.
                            (f"https://{issuer.hostname}/token", mcp_as.port, "/token"),
                            (te["tokenUrl"], backend_as.port, "/token")):
        u = urllib.parse.urlsplit(url)
        claimed = front_routes.setdefault(u.hostname, {}).setdefault(u.path, (port, path))
        assert claimed == (port, path), f"{url} is also another server's: each server has its own IdP URLs"
    return Server(oidc["resourceUrl"], oidc["issuer"], scope, oidc["audience"], backend_as, te["audience"],
                  McpServer(cleanup, backend.port), mcp_as)


@pytest.fixture(scope="module")
def shared(module_cleanup, module, idps):
    """The shared gateway's Envoy, built from its files: its routes, its
    plugin, and the clusters of its ServiceEntries, leading to a TLS front
    for its IdP hosts; behind it, each server's own parts (start_shared_server)
    on the Service the shape routes that server's resource to. The app's
    Service, and any other host, is the other app."""
    (plugin,) = SHARED_SHAPE.plugins()
    top = plugin.config["oidc"]
    front_routes, env, servers = {}, {}, {}
    for rule in (r for r in plugin.config["rules"] if r.get("oidc")):
        server = start_shared_server(module_cleanup, {**top, **rule["oidc"]}, rule["tokenExchange"],
                                     front_routes, env)
        servers[server.resource] = server
    ca = CA(*front_routes)
    front = IdpFront(module_cleanup, ca, {h: [(p, *to) for p, to in r.items()] for h, r in front_routes.items()})
    services = {r.backend[0]: idps.other_app.port for r in SHARED_SHAPE.routes()}
    for s in servers.values():
        u = urllib.parse.urlsplit(s.resource)
        services.update({r.backend[0]: s.mcp_server.port for r in SHARED_SHAPE.routes()
                         if r.matches(u.hostname, u.path)})
    ecds = Ecds("shared")
    (wp,) = SHARED_SHAPE.of("WasmPlugin")
    ecds.put(ecds_resource(wp, module.path))
    parts = SimpleNamespace(backend=idps.backend, other_app=idps.other_app,
                            clusters=istio_clusters(SHARED_SHAPE.docs, front.port, ca.ca))
    envoy = istio_envoy(module_cleanup, parts, {"shared": Entry(SHARED_SHAPE, wp)}, ecds, env=env, services=services)
    return SimpleNamespace(envoy=envoy, front=front, servers=servers)


SHARED_RESOURCES = [o["resourceUrl"] for o in SHARED_SHAPE.plugins()[0].oidcs() if o.get("resourceUrl")]


@pytest.mark.parametrize("resource", SHARED_RESOURCES)
def test_shared_gateway_each_server_names_its_own_authorization_server(shared, resource):
    """Each resource's challenge names its own document, which names its
    own issuer; the other server's token is refused there (401, with this
    server's challenge) and reaches neither the exchange nor the server."""
    s = shared.servers[resource]
    (other,) = [o for o in shared.servers.values() if o is not s]
    u = urllib.parse.urlsplit(resource)
    metadata = f"https://{u.hostname}{METADATA_PREFIX}{u.path}"
    status, headers, _ = get(shared.envoy, "shared", u.path, host=u.hostname)
    assert status == 401 and headers["www-authenticate"] == \
        f'Bearer scope="{s.scope}", resource_metadata="{metadata}"'
    status, _, body = get(shared.envoy, "shared", METADATA_PREFIX + u.path, host=u.hostname)
    doc = json.loads(body)
    assert status == 200 and (doc["resource"], doc["authorization_servers"]) == (resource, [s.issuer])

    other_token = other.mcp_as.token(*TESTER, other.resource, other.scope)
    before = [(x.backend_as.exchanges(), len(x.mcp_server.seen())) for x in shared.servers.values()]
    status, headers, _ = get(shared.envoy, "shared", u.path, token=other_token, host=u.hostname)
    assert status == 401 and f'resource_metadata="{metadata}"' in headers["www-authenticate"]
    assert [(x.backend_as.exchanges(), len(x.mcp_server.seen())) for x in shared.servers.values()] == before


@pytest.mark.parametrize("resource", SHARED_RESOURCES)
def test_shared_gateway_an_mcp_client_finds_each_servers_way_in(shared, resource):
    s = shared.servers[resource]
    (other,) = [o for o in shared.servers.values() if o is not s]
    others_exchanges = other.backend_as.exchanges()
    asked = check_client_path(shared.front, shared.envoy.ports["shared"], s, s.backend_as.exchanges())
    assert not [url for url in asked if url.startswith(other.issuer)], "never the other server's AS"
    assert other.backend_as.exchanges() == others_exchanges, "exchanged at its own backend AS only"


def test_shared_gateway_leaves_the_app_and_other_hosts_alone(shared, idps):
    """The shape's own app host and any other host: the catch-all skip, on
    any path, the MCP servers' and their metadata's included."""
    paths = ("/", "/github/mcp", f"{METADATA_PREFIX}/jira/mcp", "/mcp")
    (app,) = [h for vs in SHARED_SHAPE.of("VirtualService") for h in vs["spec"]["hosts"]
              if h not in {urllib.parse.urlsplit(r).hostname for r in SHARED_RESOURCES}]
    for host in (app, OTHER_HOST):
        check_other_host_left_alone(shared.envoy, "shared", idps.other_app, host, paths)


# ---------------------------------------------------------------------------
# Test 6: Envoy Gateway (envoy-gateway/mcp-route/), as
# internal/xds/translator/wasm.go and utils.go generate it.


def eg_shape(policy, index, module_url, module_sha256):
    """The HCM filter and the per-route enablement EG generates for
    `spec.wasm[index]`: the filter is in every HCM, disabled, and turned on
    per route with a FilterConfig; each policy entry gets its own vm_id; the
    code comes from EG's module server over `wasm_cluster`, checked by the
    .wasm file's sha256."""
    meta, wasm = policy["metadata"], policy["spec"]["wasm"][index]
    ir_name = f"envoyextensionpolicy/{meta['namespace']}/{meta['name']}/wasm/{index}"
    name = f"envoy.filters.http.wasm/{ir_name}"
    config = {
        "name": wasm.get("name", ir_name),
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(wasm.get("config", {}))},
        "vm_config": {
            "vm_id": ir_name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": module_url, "cluster": "wasm_cluster", "timeout": "10s"},
                "sha256": module_sha256,
                "retry_policy": {"num_retries": 10, "retry_back_off": {"base_interval": "1s", "max_interval": "30s"}},
            }},
        },
    }
    if wasm.get("rootID"):
        config["root_id"] = wasm["rootID"]
    if wasm.get("failOpen"):
        config["fail_open"] = True
    if wasm.get("env", {}).get("hostKeys"):
        config["vm_config"]["environment_variables"] = {"host_env_keys": wasm["env"]["hostKeys"]}
    http_filter = {"name": name, "disabled": True,
                   "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "config": config}}
    enable = {name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}}
    return http_filter, enable


def eg_patched_clusters(patch_policy, front_port, ca):
    """The clusters an EnvoyPatchPolicy adds, pointed at the test's TLS front
    and trusting the test CA instead of the system bundle."""
    out = []
    for p in patch_policy["spec"]["jsonPatches"]:
        assert p["type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster" and p["operation"]["op"] == "add"
        c = json.loads(json.dumps(p["operation"]["value"]))
        c["type"] = "STATIC"
        c.pop("dns_lookup_family", None)
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
            "address": "127.0.0.1", "port_value": front_port}
        vc = c["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
        vc["trusted_ca"] = {"filename": str(ca)}
        out.append(c)
    return out


class ModuleServer(HttpServer):
    """Serves one file over HTTP, standing in for EG's module cache server."""

    def __init__(self, path):
        super().__init__(files(path.parent))
        self.url = f"{self.origin}/{path.name}"


@pytest.fixture(scope="module")
def eg(module_cleanup, module, idps):
    """Envoy as Envoy Gateway configures it for the shape: one listener
    whose routes are the shape's HTTPRoute (and the other app's), the filter
    disabled in the connection manager and enabled on the targeted
    HTTPRoute's routes; the IdP cluster from the EnvoyPatchPolicy; the
    secret from the environment the EnvoyProxy gives the envoy container."""
    (policy,) = EG_SHAPE.of("EnvoyExtensionPolicy")
    (patch,) = EG_SHAPE.of("EnvoyPatchPolicy")
    server = module_cleanup.add(ModuleServer(module.path))
    sha = hashlib.sha256(module.path.read_bytes()).hexdigest()
    http_filter, enable = eg_shape(policy, 0, server.url, sha)
    assert http_filter["typed_config"]["config"]["vm_config"]["vm_id"] == "envoyextensionpolicy/mcp/token-exchange/wasm/0"
    targeted = {(t["kind"], t["name"]) for t in policy["spec"]["targetRefs"]}
    other = Route({"kind": "HTTPRoute", "metadata": {"name": "other-app"}}, [OTHER_HOST], "path_separated_prefix", "/",
                  ("other-app.apps.svc.cluster.local", 80), "apps")
    vhosts = virtual_hosts(EG_SHAPE.routes() + [other], lambda r: "other-app" if r is other else "mcp-server",
                           per_route=lambda r: enable if (r.source["kind"], r.source["metadata"]["name"]) in targeted
                           else None, default_timeout=None)
    port, admin = free_port(), free_port()
    clusters = [static_cluster("mcp-server", idps.mcp_server.port), static_cluster("other-app", idps.other_app.port),
                static_cluster("wasm_cluster", server.port)] + eg_patched_clusters(patch, idps.front.port, idps.ca.ca)
    envoy = EnvoyProc(module_cleanup, "envoy-eg", envoy_bootstrap(admin, [routed_listener("eg", port, [http_filter],
                                                                                          vhosts)], clusters), admin,
                      env={"TOKEN_EXCHANGE_CLIENT_SECRET": SECRET}).wait_ready([port])
    envoy.ports = {"eg": port}
    return envoy


def test_envoy_gateway_shape(eg, idps):
    assert "via cluster token-exchange-idp" in eg.proc.text()
    resource, (host, path, meta_path) = resource_of(EG_SHAPE)
    status, headers, _ = get(eg, "eg", path, host=host)
    assert status == 401 and f'resource_metadata="https://{host}{meta_path}"' in headers["www-authenticate"]
    # The metadata answers only because the targeted HTTPRoute routes it.
    status, _, body = get(eg, "eg", meta_path, host=host)
    assert status == 200 and json.loads(body)["resource"] == resource
    assert get(eg, "eg", path, token=tamper_signature(idps.token()), host=host)[0] == 401
    # A path the HTTPRoute does not route never meets the filter.
    assert get(eg, "eg", "/admin", host=host)[0] == 404


def test_envoy_gateway_an_mcp_client_finds_its_way_in(eg, idps):
    resource, _ = resource_of(EG_SHAPE)
    check_client_path(idps.front, eg.ports["eg"], idps.server(resource), idps.backend_as.exchanges())


def test_envoy_gateway_other_hosts_are_left_alone(eg, idps):
    check_other_host_left_alone(eg, "eg", idps.other_app)
