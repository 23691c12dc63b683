"""Issue 17: the deployment shapes fit together as an operator applies them.

Each directory under istio/ and envoy-gateway/ is one shape, applied whole
(`kubectl apply -f <dir>`). These checks follow the references between its
files the way Istio, Envoy Gateway and Kubernetes resolve them (shapes.py):
one image name everywhere; every client secret wired from a Secret the shape
ships, in the namespace of the proxy that reads it, with the key it names;
policies in their targets' namespaces; IdP clusters where the proxy sees
them; no name shared between shapes; the metadata path routed wherever the
MCP endpoint is, to where the filter runs; gateway plugins that leave other
hosts alone; and the README's numbered path for each shape. They read no
cluster and start no process: test_istio.py and test_providers.py run the
same files on real Envoy.
"""

import re

import pytest

from harness import ROOT
from shapes import INSTALLER_NAMESPACES, SHAPES, key, secret_keys

IMAGE_REF = re.compile(r"registry\.example\.com/(?:[a-z0-9._-]+/)*token-exchange-filter(?::[A-Za-z0-9._-]+)?")
EXPECTED_SHAPES = {
    "istio/ingress-gateway", "istio/helm-gateway", "istio/gateway-api", "istio/sidecar",
    "istio/toolhive-okta", "istio/toolhive-okta-xaa", "istio/toolhive-bigquery", "envoy-gateway/mcp-route",
    "istio/shared-gateway",
}
README = (ROOT / "README.md").read_text()
by_shape = pytest.mark.parametrize("shape", SHAPES, ids=str)


def crate_version():
    text = (ROOT / "Cargo.toml").read_text()
    return re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"', text, re.S).group(1)


def test_every_shape_is_found():
    assert EXPECTED_SHAPES <= {s.name for s in SHAPES}


@by_shape
def test_every_document_names_its_namespace(shape):
    """Applied with -f, a document without a namespace lands in whatever
    namespace the operator's context has."""
    for d in shape.docs:
        assert d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']} names no namespace"


def test_one_image_name_everywhere():
    """Defect 1: the Dockerfile and build-image.sh pushed a name that no
    WasmPlugin or EnvoyExtensionPolicy pulled."""
    want = f"registry.example.com/token-exchange-filter:{crate_version()}"
    pulled = set()
    for s in SHAPES:
        pulled |= {wp["spec"]["url"].removeprefix("oci://") for wp in s.of("WasmPlugin")}
        pulled |= {w["code"]["image"]["url"] for p in s.of("EnvoyExtensionPolicy") for w in p["spec"]["wasm"]}
    assert pulled == {want}
    texts = {p: p.read_text() for p in [ROOT / "istio" / "Dockerfile", ROOT / "istio" / "build-image.sh",
                                        ROOT / "README.md"] + [f for s in SHAPES for f in s.files]}
    for path, text in texts.items():
        for ref in IMAGE_REF.findall(text):
            assert ref in (want, want.rsplit(":", 1)[0]), f"{path.relative_to(ROOT)} names {ref}, not {want}"
    for path in (ROOT / "istio" / "Dockerfile", ROOT / "istio" / "build-image.sh"):
        assert want in texts[path], f"{path.relative_to(ROOT)} never names the image the manifests pull"


@by_shape
def test_every_plugin_lands_on_a_proxy_of_the_shape(shape):
    """Defect 5: a selector for istioctl's gateway on a Helm-installed one
    (istio: ingress), or targetRefs from another namespace, attach to nothing."""
    assert shape.plugins()
    for plugin in shape.plugins():
        proxies = plugin.proxies()
        assert proxies, f"{plugin.doc['metadata']['name']} lands on no workload the shape ships or patches"
        for proxy in proxies:
            assert proxy.kind != "missing", proxy.note


@by_shape
def test_every_client_secret_env_is_wired_to_a_shipped_secret(shape):
    """Defects 4 and 5: the variable the config names comes from the proxy's
    environment, which takes it from a Secret this shape ships, in the
    proxy's namespace, under the key the reference names."""
    for plugin in shape.plugins():
        for var in plugin.secret_envs():
            assert var in plugin.host_env, f"{var} is not passed from the proxy (vmConfig.env HOST / env.hostKeys)"
            for proxy in plugin.proxies():
                env = proxy.env.get(var)
                assert env, f"the proxy in {proxy.namespace} has no environment variable {var}"
                ref = env["valueFrom"]["secretKeyRef"]
                keys = secret_keys(shape, ref["name"], proxy.namespace)
                assert keys is not None, f"{var} reads Secret {ref['name']}, which {shape} does not ship in " \
                                         f"{proxy.namespace}, the proxy's namespace"
                assert ref["key"] in keys, f"Secret {proxy.namespace}/{ref['name']} has no key {ref['key']}"


def istio_cluster_ok(shape, namespace, cluster, tls):
    """Whether a ServiceEntry (and, for TLS, a DestinationRule) in
    `namespace` makes Istio cluster `outbound|<port>||<host>` for proxies there."""
    port, host = int(cluster.split("|")[1]), cluster.split("|")[3]
    entries = [se for se in shape.of("ServiceEntry") if se["metadata"]["namespace"] == namespace
               and host in se["spec"]["hosts"] and any(p["number"] == port for p in se["spec"]["ports"])]
    if not entries:
        return False
    if not tls:
        return True
    for dr in shape.of("DestinationRule"):
        if dr["metadata"]["namespace"] == namespace and dr["spec"]["host"] == host:
            policy = dr["spec"].get("trafficPolicy", {})
            levels = [p.get("tls") for p in policy.get("portLevelSettings", []) if p["port"]["number"] == port]
            if (levels[0] if levels else policy.get("tls") or {}).get("mode") == "SIMPLE":
                return True
    return False


def eg_cluster_ok(shape, gateway, cluster, tls):
    ns, name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]
    for epp in shape.of("EnvoyPatchPolicy"):
        ref = epp["spec"]["targetRef"]
        if epp["metadata"]["namespace"] != ns or (ref["kind"], ref["name"]) != ("Gateway", name):
            continue
        for patch in epp["spec"]["jsonPatches"]:
            value = patch["operation"].get("value", {})
            if patch["type"].endswith("Cluster") and value.get("name") == cluster:
                return not tls or "transport_socket" in value
    return False


@by_shape
def test_every_callout_has_a_cluster_where_the_proxy_runs(shape):
    """Defect 5 and 6: a ServiceEntry with exportTo "." in another namespace,
    or an EnvoyPatchPolicy on another Gateway, leaves the callouts no cluster
    (503)."""
    for plugin in shape.plugins():
        for proxy in plugin.proxies():
            for url, cluster in plugin.callouts():
                tls = url.startswith("https://")
                if shape.platform == "istio":
                    ok = istio_cluster_ok(shape, proxy.namespace, cluster, tls)
                else:
                    ok = eg_cluster_ok(shape, proxy.gateway, cluster, tls)
                assert ok, f"{url}: no cluster {cluster}{' with TLS' if tls else ''} for the proxy in {proxy.namespace}"


@by_shape
def test_policies_target_what_is_in_their_namespace(shape):
    """Istio and Envoy Gateway attach a targetRef policy only to a target in
    the policy's own namespace; routes attach only where a listener admits them."""
    for d in shape.docs:
        spec, ns = d.get("spec", {}), d["metadata"]["namespace"]
        for ref in spec.get("targetRefs", []) + ([spec["targetRef"]] if "targetRef" in spec else []):
            assert shape.get(ref["kind"], ref["name"], ns), \
                f"{d['kind']} {ns}/{d['metadata']['name']} targets {ref['kind']} {ref['name']}, not in {ns}"
    for route in shape.of("HTTPRoute"):
        ns = route["metadata"]["namespace"]
        for parent in route["spec"]["parentRefs"]:
            gw = shape.get("Gateway", parent["name"], parent.get("namespace", ns))
            assert gw, f"HTTPRoute {route['metadata']['name']}: no Gateway {parent['name']}"
            for listener in gw["spec"]["listeners"]:
                allowed = listener.get("allowedRoutes", {}).get("namespaces", {"from": "Same"})
                if allowed["from"] == "Same":
                    assert gw["metadata"]["namespace"] == ns
                elif allowed["from"] == "Selector":
                    assert allowed["selector"]["matchLabels"] == {"kubernetes.io/metadata.name": ns}


@by_shape
def test_routes_serve_only_hosts_their_gateway_takes(shape):
    """A VirtualService host that its Gateway's servers do not list is never
    routed there; an HTTPRoute hostname outside its listener's neither."""
    for vs in shape.of("VirtualService"):
        ns = vs["metadata"]["namespace"]
        for ref in vs["spec"]["gateways"]:
            gw_ns, _, name = ref.rpartition("/")
            gw = shape.get("Gateway", name, gw_ns or ns)
            assert gw, f"VirtualService {vs['metadata']['name']}: no Gateway {ref}"
            served = {h.split("/")[-1] for srv in gw["spec"]["servers"] for h in srv["hosts"]}
            assert set(vs["spec"]["hosts"]) <= served, f"{vs['spec']['hosts']} not all in {served}"
    for route in shape.of("HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            gw = shape.get("Gateway", parent["name"], parent.get("namespace", route["metadata"]["namespace"]))
            for listener in gw["spec"]["listeners"]:
                if "hostname" in listener:
                    assert set(route["spec"]["hostnames"]) <= {listener["hostname"]}


def test_no_resource_is_defined_by_two_shapes():
    """Defect 4: two translations defined ServiceEntry and DestinationRule
    mcp/okta, so deleting one broke the other."""
    owner = {}
    for s in SHAPES:
        for d in s.docs:
            k = key(d)
            assert owner.setdefault(k, s) is s, f"{k} is defined by both {owner[k]} and {s}"


def test_a_host_declared_in_two_shapes_is_declared_alike():
    """Two ServiceEntries (or DestinationRules) for one host in one
    namespace: Istio uses one of them, so they must say the same."""
    seen = {}
    for s in SHAPES:
        for kind, hosts_of in (("ServiceEntry", lambda sp: sp["hosts"]), ("DestinationRule", lambda sp: [sp["host"]])):
            for d in s.of(kind):
                spec = {k: v for k, v in d["spec"].items()}
                for host in hosts_of(d["spec"]):
                    prev = seen.setdefault((kind, d["metadata"]["namespace"], host), (s, spec))
                    assert prev[1] == spec, f"{kind} for {host}: {prev[0]} and {s} disagree"


@by_shape
def test_every_mcp_route_also_routes_the_metadata_path(shape):
    """Defect 2: with only /mcp routed, the metadata path never reaches a
    sidecar's filter, nor an Envoy Gateway filter enabled per route."""
    routes = shape.routes()
    for plugin, (host, mcp_path, meta_path) in ((p, r) for p in shape.plugins() for r in p.resources()):
        # A resource without a path is the whole host: every route there serves it.
        served = [r for r in routes if r.matches(host, mcp_path) or (mcp_path == "/" and r.matches_host(host))]
        assert served, f"nothing routes {host}{mcp_path}"
        for r in served:
            meta = [m for m in routes if m.source is r.source and m.matches(host, meta_path)]
            assert meta, f"{r.source['kind']} {r.source['metadata']['name']} routes {mcp_path} but not {meta_path}"
            assert meta[0].backend == r.backend
        proxies = plugin.proxies()
        for m in (m for m in routes if m.matches(host, meta_path)):
            if plugin.doc["kind"] == "EnvoyExtensionPolicy":
                targeted = {t["name"] for t in plugin.doc["spec"]["targetRefs"] if t["kind"] == m.source["kind"]}
                assert m.source["metadata"]["name"] in targeted, f"{meta_path} is routed where the filter is off"
            for proxy in (p for p in proxies if p.kind == "sidecar"):
                assert m.backend[0] in proxy.services, f"{meta_path} is routed to {m.backend[0]}, not the sidecar's"


@by_shape
def test_gateway_plugins_leave_other_hosts_alone(shape):
    """Defect 3: a WasmPlugin picks proxies, not hosts; on a gateway, without
    host rules and a catch-all skip, every other app behind it answers 401.
    Under Envoy Gateway the policy targets the MCP HTTPRoute, not the Gateway."""
    for plugin in shape.plugins():
        if plugin.doc["kind"] == "EnvoyExtensionPolicy":
            assert {t["kind"] for t in plugin.doc["spec"]["targetRefs"]} == {"HTTPRoute"}
            continue
        if not any(p.kind == "gateway" for p in plugin.proxies()):
            continue
        rules = plugin.config.get("rules", [])
        assert rules and rules[-1] == {"match": {}, "skip": True}, "the rules must end with a catch-all skip"
        for r in rules[:-1]:
            assert r["match"].get("hosts"), f"rule {r} applies to every host"
        for host, _, _ in plugin.resources():
            served = [r for r in rules[:-1] if host in r["match"]["hosts"] and not r.get("skip")]
            assert served, f"no rule applies the policy to {host}"
            for r in served:
                if "oidc" not in r and "pathPrefix" not in r["match"]:
                    assert r.get("requiredScopes") == plugin.config["oidc"].get("requiredScopes"), \
                        "a rule standing for the top-level policy keeps its scopes"


def test_envoy_gateway_policy_sets_no_pull_policy_beside_a_digest():
    """Defect 7: with image.sha256 set, pullPolicy does nothing (the CRD says so)."""
    for s in SHAPES:
        for p in s.of("EnvoyExtensionPolicy"):
            for w in p["spec"]["wasm"]:
                if w["code"].get("image", {}).get("sha256"):
                    assert "pullPolicy" not in w["code"]


def test_merge_type_states_its_minimum_version():
    for s in SHAPES:
        for f in s.files:
            if "mergeType:" in f.read_text():
                assert "Envoy Gateway 1.8" in f.read_text(), f"{f.relative_to(ROOT)}: say mergeType needs EG 1.8+"


def test_envoy_patch_policy_says_to_enable_it_and_restart_the_controller():
    """Defect 6: until the controller restarts, the IdP cluster is missing."""
    for s in SHAPES:
        for f in s.files:
            text = f.read_text()
            if "kind: EnvoyPatchPolicy" in text:
                assert "enableEnvoyPatchPolicy: true" in text
                assert "kubectl rollout restart deployment envoy-gateway -n envoy-gateway-system" in text


def test_toolhive_translations_say_what_they_advertise():
    """Defect 9: ToolHive advertises scopes_supported ["openid"] by default;
    the translations say so where they are read, and set scopesSupported."""
    for s in (s for s in SHAPES if "toolhive" in s.name):
        (plugin,) = s.plugins()
        assert plugin.config["oidc"].get("scopesSupported"), f"{s}: no scopesSupported"
        text = "".join(f.read_text() for f in s.files)
        assert 'scopes_supported: ["openid"]' in text, f"{s}: say what ToolHive advertises"


# ---------------------------------------------------------------------------
# The README: one numbered path per shape (defect 8).

STEPS = [
    ("namespace", r"namespace"),
    ("the .wasm", r"cargo build --release --target wasm32-wasip1"),
    ("the image", r"apt-get install[^\n]*umoci[^\n]*skopeo|umoci[^\n]*skopeo"),
    ("the Secret", r"04-"),
    ("the IdP", r"05-"),
    ("the plugin", r"06-"),
    ("the routes", r"07-"),
    ("check it", r"curl"),
]


def readme_path(shape):
    """The numbered steps under the README heading that names the shape's directory."""
    heading = re.search(rf"^#+ .*`{re.escape(shape.name)}/`.*$", README, re.M)
    assert heading, f"no README section for {shape.name}/"
    body = README[heading.end():]
    end = re.search(r"^#{1,4} ", body, re.M)
    body = body[:end.start()] if end else body
    steps = re.split(r"^(\d+)\. ", body, flags=re.M)
    numbers = [int(n) for n in steps[1::2]]
    assert numbers == list(range(1, len(numbers) + 1)), f"{shape.name}: steps numbered {numbers}"
    return steps[2::2]


@by_shape
def test_readme_has_a_numbered_path_for_every_shape(shape):
    steps = readme_path(shape)
    assert len(steps) == len(STEPS), f"{shape.name}: {len(steps)} steps"
    for (what, pattern), text in zip(STEPS, steps):
        assert re.search(pattern, text), f"{shape.name}: step '{what}' does not say {pattern!r}"
    assert "imagePullSecret" in steps[2] or "pullSecretRef" in steps[2], "no pull secret for a private registry"
    namespaces = {d["metadata"]["namespace"] for d in shape.docs} - INSTALLER_NAMESPACES
    for ns in namespaces:
        assert f"kubectl create namespace {ns}" in steps[0], f"{shape.name}: step 1 does not create {ns}"
    if any(p.kind == "sidecar" for plugin in shape.plugins() for p in plugin.proxies()):
        for ns in {p.namespace for plugin in shape.plugins() for p in plugin.proxies()}:
            assert f"kubectl label namespace {ns} istio-injection=enabled" in steps[0]
    if shape.platform == "envoy-gateway":
        assert "enableEnvoyPatchPolicy: true" in steps[0] + steps[4]
        assert "kubectl rollout restart deployment envoy-gateway -n envoy-gateway-system" in steps[0] + steps[4]
        assert re.search(r"Envoy Gateway (v)?1\.8", steps[0])
    for _, _, meta_path in (r for plugin in shape.plugins() for r in plugin.resources()):
        assert meta_path in steps[7], f"{shape.name}: check the metadata at {meta_path}"
