"""Issue 8: the filter as Istio delivers it, on real Envoy.

The module is built into an OCI image, pushed to a local registry and pulled
back as Istio's agent pulls it (`oci.py`). istio/wasmplugin-gateway.yaml and
istio/wasmplugin-sidecar.yaml, read as shipped, are translated into the ECDS
resources istiod would send (`istio.py`) and loaded by Envoy from watched
files. The IdPs (two oidc-provider servers, Okta-style paths on one host) are
reachable only over TLS with SNI, through clusters built from
istio/idp-pattern-b.yaml (the gateway) and istio/idp-pattern-a.yaml (the
sidecar). The backend verifies every token it gets against the backend AS.
"""

import json
import time
import urllib.parse
from types import SimpleNamespace

import pytest

import constants
import oci
from harness import ROOT, WASM, WORK, Backend, IdP, call, decode_part, free_port, tamper_signature
from httpd import HttpServer, files
from istio import (
    Ecds,
    EnvoyProc,
    IdpFront,
    CA,
    clone,
    deny_resource,
    ecds_resource,
    envoy_bootstrap,
    filter_name,
    hcm_listener,
    istio_clusters,
    static_cluster,
    wasmplugin,
)
from stacks import clients_for, exchange_client, start_backend_as

ISTIO = ROOT / "istio"
GATEWAY = wasmplugin(ISTIO / "wasmplugin-gateway.yaml")
SIDECAR = wasmplugin(ISTIO / "wasmplugin-sidecar.yaml")
SECRET = "istio-client-secret"
BACKEND_ISSUER = "https://idp.example.com/oauth2/backend"
# What the backend AS issues for each audience the manifests ask for.
BACKEND_RESOURCES = {
    "https://backend.example.com/": {"audience": "backend", "scope": "backend:read"},
    "https://reports.example.com/": {"audience": "reports", "scope": "reports:read"},
}
TESTER = (constants.CLIENT, constants.SECRET)


def plugin_configs():
    """Every pluginConfig and rule exchange in the two manifests."""
    for wp in (GATEWAY, SIDECAR):
        pc = wp["spec"]["pluginConfig"]
        yield pc.get("tokenExchange"), pc
        for rule in pc.get("rules", []):
            yield rule.get("tokenExchange"), pc


def url_path(url):
    return urllib.parse.urlsplit(url).path


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
    the manifests name, behind TLS for the manifests' IdP host."""
    oidc = GATEWAY["spec"]["pluginConfig"]["oidc"]
    host = urllib.parse.urlsplit(oidc["jwksUrl"]).hostname
    ca = CA(host)
    mcp_as = IdP(module_cleanup, "mcp-as", issuer=oidc["issuer"],
                 resources={oidc["resourceUrl"]: {"audience": oidc["audience"], "scope": " ".join(oidc["requiredScopes"])},
                            "urn:test:no-scope": {"audience": oidc["audience"], "scope": ""}},
                 clients=clients_for(TESTER[0])).start()
    client_ids = {te["clientId"] for te, _ in plugin_configs() if te}
    backend_as = start_backend_as(module_cleanup, mcp_as, issuer=BACKEND_ISSUER, audience=oidc["audience"],
                                  trust_jwks=True, resources=BACKEND_RESOURCES,
                                  clients=[exchange_client(c, SECRET) for c in client_ids])
    routes = {url_path(pc["oidc"]["jwksUrl"]): (mcp_as.port, "/jwks") for _, pc in plugin_configs()}
    routes.update({url_path(te["tokenUrl"]): (backend_as.port, "/token") for te, _ in plugin_configs() if te})
    front = IdpFront(module_cleanup, ca, {host: [(p, port, up) for p, (port, up) in routes.items()]})
    backend = Backend(module_cleanup, verify_with=backend_as,
                      audience=",".join(r["audience"] for r in BACKEND_RESOURCES.values()))
    clusters = [static_cluster("backend", backend.port)]
    for pattern in ("idp-pattern-a.yaml", "idp-pattern-b.yaml"):
        clusters += istio_clusters(ISTIO / pattern, front.port, ca.ca)
    return SimpleNamespace(mcp_as=mcp_as, backend_as=backend_as, backend=backend, clusters=clusters, front=front,
                           token=lambda resource=oidc["resourceUrl"], scope=" ".join(oidc["requiredScopes"]):
                           mcp_as.token(*TESTER, resource, scope))


def istio_envoy(cleanup, idps, plugins, ecds, env=None):
    """Envoy with one listener per WasmPlugin, each filter fed by ECDS from
    `ecds` and placed first (phase AUTHN), as istiod builds the chain."""
    listeners, ports = [], {}
    for key, wp in plugins.items():
        ports[key] = free_port()
        route = [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
        listeners.append(hcm_listener(key, ports[key], [ecds.http_filter(filter_name(wp))], route))
    admin = free_port()
    envoy = EnvoyProc(cleanup, "envoy-istio", envoy_bootstrap(admin, listeners, idps.clusters), admin,
                      env=env or {"TOKEN_EXCHANGE_CLIENT_SECRET": SECRET})
    envoy.wait_ready(ports.values())
    envoy.ports = ports
    return envoy


def get(envoy, listener, path="/mcp", token=None, host="mcp.example.com"):
    headers = {"host": host}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return call(envoy.ports[listener], path, headers=headers)


def seen(body):
    """The backend's report of the request it served."""
    return json.loads(body)


@pytest.fixture(scope="module")
def mesh(module_cleanup, module, idps):
    """One Envoy carrying the gateway plugin, the sidecar plugin, and a second
    gateway plugin (test 4) that differs from the first only in its name and
    one cache setting, so only the shared-data prefix keeps them apart. The
    second is delivered as Istio 1.30+ names it."""
    ecds = Ecds("mesh")
    second = clone(GATEWAY, istio1_30=True, **{"metadata.name": "token-exchange-b",
                               "spec.pluginConfig": {**GATEWAY["spec"]["pluginConfig"],
                                                     "cache": {"maxEntries": 10000, "expirySkewSeconds": 29}}})
    plugins = {"gateway": GATEWAY, "sidecar": SIDECAR, "gateway-b": second}
    for wp in plugins.values():
        ecds.put(ecds_resource(wp, module.path))
    return istio_envoy(module_cleanup, idps, plugins, ecds)


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
        "extensions.istio.io/wasmplugin/mcp.token-exchange",
        "extensions.istio.io/trafficextension/istio-system.token-exchange-b~istio-translated-wasmplugin",
    }
    for cfg in (c["config"] for c in loaded.values()):
        assert cfg["root_id"] == "token-exchange" and "vm_id" not in cfg["vm_config"]
    log = mesh.proc.text()
    assert "token-exchange-filter configured" in log
    assert "via cluster outbound|443||idp.example.com" in log, "gateway: pattern B, the default name"
    assert "via cluster outbound|80||idp.example.com" in log, "sidecar: pattern A, named explicitly"


@pytest.mark.parametrize("listener", ["gateway", "sidecar"])
def test_core_and_exchange_over_tls_clusters(mesh, idps, listener):
    oidc = GATEWAY["spec"]["pluginConfig"]["oidc"]
    # No token: a challenge naming the metadata, which is served.
    status, headers, _ = get(mesh, listener)
    assert status == 401
    meta_path = "/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="https://mcp.example.com{meta_path}"' in headers["www-authenticate"]
    status, _, body = get(mesh, listener, meta_path)
    assert status == 200 and json.loads(body)["resource"] == oidc["resourceUrl"]
    assert json.loads(body)["authorization_servers"] == [oidc["issuer"]]

    # A good token is exchanged through the TLS cluster; the backend verifies it.
    token = idps.token()
    before = idps.backend_as.exchanges()
    status, _, body = get(mesh, listener, token=token)
    assert status == 200, body
    claims = seen(body)["verified_claims"]
    assert claims["iss"] == BACKEND_ISSUER and claims["aud"] == "backend"
    assert claims["sub"] == decode_part(token, 1)["sub"]
    assert token not in body, "the caller's token never reaches the upstream"
    assert idps.backend_as.exchanges() == before + 1
    # Served from the cache next time.
    assert get(mesh, listener, token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 1

    # Refusals never reach the upstream.
    served = idps.backend.requests()
    assert get(mesh, listener, token=tamper_signature(token))[0] == 401
    status, headers, _ = get(mesh, listener, token=idps.token("urn:test:no-scope", None))
    assert status == 403 and 'error="insufficient_scope"' in headers["www-authenticate"]
    assert idps.backend.requests() == served


def test_rules_skip_and_route_to_their_own_target(mesh, idps):
    served = idps.backend.requests()
    status, _, body = get(mesh, "gateway", "/healthz")
    # Skipped: the filter let it through, and the backend itself answered
    # (it wants a token of its own, as a real API would).
    assert idps.backend.requests() == served + 1
    assert (status, seen(body).get("detail")) == (401, "no bearer token")

    token = idps.token()
    before = idps.backend_as.exchanges()
    status, _, body = get(mesh, "gateway", "/reports/q1", token=token)
    assert status == 200, body
    assert seen(body)["verified_claims"]["aud"] == "reports"
    assert seen(body)["verified_claims"]["scope"] == "reports:read"
    status, _, body = get(mesh, "gateway", "/mcp", token=token)
    assert seen(body)["verified_claims"]["aud"] == "backend"
    # Another host does not match the rule: the default target.
    status, _, body = get(mesh, "gateway", "/reports/q1", token=token, host="other.example.com")
    assert seen(body)["verified_claims"]["aud"] == "backend"
    # Each target's token is cached under its own key.
    n = idps.backend_as.exchanges()
    assert n - before <= 2
    for path in ("/reports/q2", "/mcp"):
        assert get(mesh, "gateway", path, token=token)[0] == 200
    assert idps.backend_as.exchanges() == n
    # A path that could resolve into another route is refused.
    assert get(mesh, "gateway", "/healthz/../mcp")[0] == 400


def test_two_plugins_share_no_cache_entries(mesh, idps):
    """Test 4: same VM (Istio sets no vm_id), same exchange parameters; only
    the plugin name and a cache setting differ."""
    token = idps.token()
    before = idps.backend_as.exchanges()
    assert get(mesh, "gateway", token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 1
    status, _, body = get(mesh, "gateway-b", token=token)
    assert status == 200 and seen(body)["verified_claims"]["aud"] == "backend"
    assert idps.backend_as.exchanges() == before + 2, "the second plugin exchanged for itself"
    for listener in ("gateway", "gateway-b"):
        assert get(mesh, listener, token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 2


def test_every_shipped_wasmplugin_is_accepted(cleanup, module, idps):
    """Every WasmPlugin under istio/, the ToolHive translations included, is
    accepted by the filter as Istio delivers it: no manifest ships a config
    the filter would refuse."""
    from istio import manifests

    plugins, env = {}, {}
    for path in sorted(ISTIO.rglob("*.yaml")):
        for i, wp in enumerate(manifests(path).get("WasmPlugin", [])):
            key = f"{path.stem}-{i}"
            plugins[key] = clone(wp, **{"metadata.name": key})
            for te, _ in [(wp["spec"]["pluginConfig"].get("tokenExchange"), None)] + [
                    (r.get("tokenExchange"), None) for r in wp["spec"]["pluginConfig"].get("rules", [])]:
                for section in (te, (te or {}).get("assertionGrant")):
                    if section and section.get("clientSecretEnv"):
                        env[section["clientSecretEnv"]] = "a-secret"
    assert {"wasmplugin-gateway-0", "wasmplugin-sidecar-0", "okta-wasmplugin-0", "okta-xaa-wasmplugin-0",
            "bigquery-wasmplugin-0"} <= set(plugins)
    ecds = Ecds("all")
    for wp in plugins.values():
        ecds.put(ecds_resource(wp, module.path))
    envoy = istio_envoy(cleanup, idps, plugins, ecds, env=env)
    dump = json.loads(call(envoy.admin, "/config_dump?resource=ecds_filters")[2])
    assert {c["ecds_filter"]["name"] for c in dump["configs"]} == {filter_name(wp) for wp in plugins.values()}
    assert "invalid configuration" not in envoy.proc.text()


def wait_for(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_live_reload_bad_config_and_failed_pull(cleanup, module, idps):
    """Test 5, on its own Envoy: a new config takes effect without a restart;
    a bad one is refused, naming the field, and the old one keeps serving; a
    module that cannot be pulled is replaced by Istio's deny-all filter."""
    ecds = Ecds("reload")
    ecds.put(ecds_resource(GATEWAY, module.path))
    envoy = istio_envoy(cleanup, idps, {"gateway": GATEWAY}, ecds)
    pid = envoy.proc.proc.pid
    token = idps.token()
    assert get(envoy, "gateway", token=token)[0] == 200

    stricter = clone(GATEWAY, **{"spec.pluginConfig.oidc.requiredScopes": ["mcp:tools:call", "mcp:admin"]})
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
    assert get(envoy, "gateway", "/healthz")[0] == 403, "nothing passes, not even skipped routes"
    assert envoy.proc.proc.pid == pid and envoy.proc.proc.poll() is None, "no restart"


# ---------------------------------------------------------------------------
# Test 6: Envoy Gateway's shape for an EnvoyExtensionPolicy (envoy-gateway/),
# as internal/xds/translator/wasm.go and utils.go generate it.

EG = ROOT / "envoy-gateway"


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


def test_envoy_gateway_shape(cleanup, module, idps):
    import hashlib

    from istio import manifests

    policy = manifests(EG / "envoyextensionpolicy.yaml")["EnvoyExtensionPolicy"][0]
    patch = manifests(EG / "envoypatchpolicy.yaml")["EnvoyPatchPolicy"][0]
    server = cleanup.add(ModuleServer(module.path))
    sha = hashlib.sha256(module.path.read_bytes()).hexdigest()
    http_filter, enable = eg_shape(policy, 0, server.url, sha)
    assert http_filter["typed_config"]["config"]["vm_config"]["vm_id"] == "envoyextensionpolicy/mcp/token-exchange/wasm/0"
    routes = [
        {"match": {"prefix": "/public/"}, "route": {"cluster": "backend"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}, "typed_per_filter_config": enable},
    ]
    port, admin = free_port(), free_port()
    front = idps.front
    ca = next(c for c in idps.clusters if "transport_socket" in c)["transport_socket"]["typed_config"][
        "common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
    clusters = [static_cluster("backend", idps.backend.port), static_cluster("wasm_cluster", server.port)]
    clusters += eg_patched_clusters(patch, front.port, ca)
    envoy = EnvoyProc(cleanup, "envoy-eg", envoy_bootstrap(admin, [hcm_listener("eg", port, [http_filter], routes)],
                                                           clusters), admin,
                      env={"TOKEN_EXCHANGE_CLIENT_SECRET": SECRET}).wait_ready([port])
    envoy.ports = {"eg": port}
    log = envoy.proc.text()
    assert "via cluster token-exchange-idp" in log

    status, headers, _ = get(envoy, "eg")
    assert status == 401 and "resource_metadata=" in headers["www-authenticate"]
    token = idps.token()
    before = idps.backend_as.exchanges()
    status, _, body = get(envoy, "eg", token=token)
    assert status == 200, body
    claims = seen(body)["verified_claims"]
    assert (claims["iss"], claims["aud"], claims["sub"]) == (BACKEND_ISSUER, "backend", decode_part(token, 1)["sub"])
    assert get(envoy, "eg", token=token)[0] == 200
    assert idps.backend_as.exchanges() == before + 1, "cached"
    assert get(envoy, "eg", token=tamper_signature(token))[0] == 401
    # A route the policy does not enable the filter on: it never runs there.
    served = idps.backend.requests()
    status, headers, body = get(envoy, "eg", "/public/x", token=token)
    assert idps.backend.requests() == served + 1
    assert "www-authenticate" not in headers and token in body, "unfiltered: the caller's own token"
