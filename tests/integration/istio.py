"""The filter delivered to real Envoy the way Istio and Envoy Gateway deliver it.

- `ecds_resource` translates a WasmPlugin manifest (istio/<shape>/06-wasmplugin.yaml,
  read as shipped) into the ECDS resource istiod sends, with the module
  already pulled, as Istio's agent rewrites it: filter name
  `extensions.istio.io/wasmplugin/<ns>.<name>`, `config.name` `<ns>.<name>`,
  `root_id` = pluginName, no `vm_id` (Istio 1.30+ names it
  `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin`), `configuration` a StringValue holding
  the JSON of pluginConfig with every number a double (a protobuf Struct has
  no integers), `vmConfig.env` as `key_values`/`host_env_keys`, and
  `failStrategy` as `failure_policy`. `deny_resource` is what the agent
  sends instead when a FAIL_CLOSE module cannot be pulled.
- Envoy reads ECDS from files (`path_config_source` with a
  `watched_directory`), so a test changes a plugin's config by moving a new
  file into place, as a new istiod push would.
- `istio_clusters` turns a ServiceEntry + DestinationRule (istio/<shape>/05-idp.yaml)
  into the clusters istiod would build: `outbound|<port>||<host>`, with an
  `UpstreamTlsContext` and `sni` where the DestinationRule asks for TLS. Only
  the endpoint differs: the test's TLS front on 127.0.0.1 instead of DNS.
- `virtual_hosts` builds Envoy's routes from a shape's VirtualServices and
  HTTPRoutes (shapes.Route) as Istio and Envoy Gateway translate them:
  a VirtualService `prefix` stays a `prefix` (and `rewrite.uri` a
  `prefix_rewrite`), a Gateway API `PathPrefix` becomes a
  `path_separated_prefix`; `shape_listeners` puts them on a
  gateway listener with the filter, or, for a sidecar, on an ingress
  listener that forwards to the sidecar's inbound listener with the filter.
- `IdpFront` is an Envoy terminating TLS (a test CA, a certificate for the
  IdP's host, SNI required) in front of the oidc-provider servers, at the
  URL paths the manifests name.
"""

import copy
import json
import os
import subprocess

import yaml

from harness import WORK, EnvoyProcess, call, free_port

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TEC_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
FAIL_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


def as_doubles(value):
    """What a protobuf Struct makes of JSON: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [as_doubles(v) for v in value]
    return {k: as_doubles(v) for k, v in value.items()}


def plugin_name(wp):
    """`config.name`: `<ns>.<name>`; Istio 1.30+ translates a WasmPlugin into a
    TrafficExtension and adds a suffix (`istio1_30: true` in the manifest
    dict marks a test's copy to be delivered that way)."""
    m = wp["metadata"]
    suffix = "~istio-translated-wasmplugin" if wp.get("istio1_30") else ""
    return f"{m['namespace']}.{m['name']}{suffix}"


def filter_name(wp):
    kind = "trafficextension" if wp.get("istio1_30") else "wasmplugin"
    return f"extensions.istio.io/{kind}/{plugin_name(wp)}"


def ecds_resource(wp, module_path):
    """The ECDS resource for WasmPlugin `wp`, its module pulled to `module_path`."""
    spec, meta = wp["spec"], wp["metadata"]
    env = {"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": meta.get("resourceVersion", "1")}}
    for e in spec.get("vmConfig", {}).get("env", []):
        if e.get("valueFrom", "INLINE") == "HOST":
            env.setdefault("host_env_keys", []).append(e["name"])
        else:
            env["key_values"][e["name"]] = e.get("value", "")
    config = {
        "name": plugin_name(wp),
        "root_id": spec.get("pluginName", ""),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(module_path)}},
            "environment_variables": env,
        },
        "failure_policy": FAIL_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if spec.get("pluginConfig"):
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(as_doubles(spec["pluginConfig"]), separators=(",", ":")),
        }
    return {"@type": TEC_TYPE, "name": filter_name(wp), "typed_config": {"@type": WASM_TYPE, "config": config}}


def deny_resource(wp):
    """Istio's agent, when a FAIL_CLOSE module cannot be fetched: the same
    filter name, now an RBAC filter that denies everything (403)."""
    return {"@type": TEC_TYPE, "name": filter_name(wp),
            "typed_config": {"@type": RBAC_TYPE, "rules": {}, "rules_stat_prefix": "wasm-default-deny"}}


class Ecds:
    """A watched directory of ECDS files, one per filter name."""

    def __init__(self, name):
        self.dir = WORK / f"ecds-{name}-{os.getpid()}-{free_port()}"
        self.dir.mkdir(parents=True)
        self.version = 0

    def path(self, filter_name_):
        return self.dir / (filter_name_.replace("/", "_") + ".yaml")

    def put(self, resource):
        """Moves a new version into place: Envoy sees the move and reloads."""
        self.version += 1
        target = self.path(resource["name"])
        tmp = self.dir / f".{target.name}.tmp"
        tmp.write_text(yaml.safe_dump({"version_info": str(self.version), "resources": [resource]}))
        os.replace(tmp, target)

    def http_filter(self, name):
        return {
            "name": name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": str(self.path(name)), "watched_directory": {"path": str(self.dir)}},
                    "resource_api_version": "V3",
                },
                "type_urls": [WASM_TYPE, RBAC_TYPE],
            },
        }


def tls_context(sni, ca):
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": str(ca)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": sni}}],
            }},
        },
    }


def static_cluster(name, port, transport_socket=None):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if transport_socket:
        c["transport_socket"] = transport_socket
    return c


def istio_clusters(manifests, front_port, ca):
    """The outbound clusters istiod builds from the ServiceEntries and
    DestinationRules among `manifests` (a shape's documents), each pointing
    at `front_port`."""
    docs = {}
    for d in manifests:
        docs.setdefault(d["kind"], []).append(d)
    rules = {d["spec"]["host"]: d["spec"].get("trafficPolicy", {}) for d in docs.get("DestinationRule", [])}
    out = []
    for se in docs.get("ServiceEntry", []):
        for host in se["spec"]["hosts"]:
            policy = rules.get(host, {})
            for port in se["spec"]["ports"]:
                tls = policy.get("tls")
                for pl in policy.get("portLevelSettings", []):
                    if pl["port"]["number"] == port["number"]:
                        tls = pl.get("tls", tls)
                socket = None
                if tls and tls["mode"] == "SIMPLE":
                    socket = tls_context(tls.get("sni", host), ca)
                out.append(static_cluster(f"outbound|{port['number']}||{host}", front_port, socket))
    return out


class CA:
    """A CA and one server certificate for all of `hosts`, made with openssl."""

    def __init__(self, *hosts):
        self.dir = WORK / f"ca-{os.getpid()}-{free_port()}"
        self.dir.mkdir(parents=True)
        self.ca, self.cert, self.key = self.dir / "ca.crt", self.dir / "server.crt", self.dir / "server.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=self.dir)  # noqa: E731
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=token-exchange test CA")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={hosts[0]}")
        (self.dir / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts) + "\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


def envoy_bootstrap(admin_port, listeners, clusters):
    return {
        # As a sidecar's: ECDS subscriptions need a node identity.
        "node": {"id": "sidecar~127.0.0.1~test.mcp~mcp.svc.cluster.local", "cluster": "test.mcp"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def hcm_listener(name, port, http_filters, routes, per_route=None, tls=None):
    vhost = {"name": name, "domains": ["*"], "routes": routes}
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": [vhost]},
        "http_filters": http_filters + [ROUTER],
    }}]}
    if tls:
        chain.update(tls)
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


class EnvoyProc(EnvoyProcess):
    """`EnvoyProcess` with a `stats` reader."""

    def stats(self, contains):
        """Counters whose name contains `contains`."""
        body = call(self.admin, f"/stats?filter={contains}")[2]
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out


class IdpFront:
    """TLS in front of plain-HTTP IdPs. `hosts` maps each host name to its
    routes, `(path, port, upstream_path)`: one URL path to one IdP endpoint.
    Only requests with one of those SNIs and the matching :authority get through."""

    def __init__(self, cleanup, ca, hosts):
        self.port, admin = free_port(), free_port()
        self.hosts, self.ca = list(hosts), ca.ca
        clusters, vhosts = [], []
        for host, routes in hosts.items():
            vroutes = []
            for path, port, upstream_path in routes:
                name = f"idp{len(clusters)}"
                clusters.append(static_cluster(name, port))
                vroutes.append({"match": {"path": path}, "route": {"cluster": name, "prefix_rewrite": upstream_path}})
            vhosts.append({"name": host, "domains": [host, f"{host}:443"], "routes": vroutes})
        tls = {
            "filter_chain_match": {"server_names": list(hosts)},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {"tls_certificates": [{
                    "certificate_chain": {"filename": str(ca.cert)},
                    "private_key": {"filename": str(ca.key)}}]},
            }},
        }
        listener = hcm_listener("idp-front", self.port, [], [], tls=tls)
        listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = vhosts
        # Reads the SNI, so the filter chain above only takes these hosts.
        listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
        self.envoy = EnvoyProcess(cleanup, "idp-front", envoy_bootstrap(admin, [listener], clusters), admin,
                                  concurrency=1).wait_ready([self.port])


def clone(doc, **changes):
    """A deep copy of a manifest with dotted-path changes, e.g.
    `clone(wp, **{"metadata.name": "b"})`."""
    doc = copy.deepcopy(doc)
    for path, value in changes.items():
        cur = doc
        *head, last = path.split(".")
        for p in head:
            cur = cur[p]
        cur[last] = value
    return doc


def virtual_hosts(routes, cluster_of, per_route=None, default_timeout="0s"):
    """Envoy virtual hosts for `routes` (shapes.Route), in their order, one
    per host list. `cluster_of(route)` names the upstream cluster;
    `per_route(route)` gives its typed_per_filter_config, if any. Routes
    without their own timeout get `default_timeout` (Istio's: none; None
    leaves Envoy's 15 s, as Envoy Gateway does)."""
    vhosts = {}
    for r in routes:
        domains = [d for h in r.hosts for d in ([h] if h == "*" else [h, f"{h}:*"])]
        vh = vhosts.setdefault(tuple(r.hosts), {"name": r.hosts[0], "domains": domains, "routes": []})
        if r.kind == "path_separated_prefix" and r.value != "/":
            match = {"path_separated_prefix": r.value.rstrip("/")}
        else:
            match = {"path": r.value} if r.kind == "exact" else {"prefix": r.value}
        action = {"cluster": cluster_of(r)}
        if r.rewrite:
            # Istio's rewrite.uri: the matched prefix, or the exact path, replaced.
            action["prefix_rewrite"] = r.rewrite
        if r.timeout or default_timeout:
            action["timeout"] = r.timeout or default_timeout
        entry = {"match": match, "route": action}
        if per_route and per_route(r):
            entry["typed_per_filter_config"] = per_route(r)
        vh["routes"].append(entry)
    return list(vhosts.values())


def routed_listener(name, port, http_filters, vhosts):
    listener = hcm_listener(name, port, http_filters, [])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = vhosts
    return listener


def shape_listeners(key, routes, http_filter, sidecar, upstream):
    """Listeners for one WasmPlugin and the routes that lead to it.
    Gateway: one listener with the filter and `routes`. Sidecar: an ingress
    listener with `routes` and no filter, whose every destination is the
    sidecar's inbound listener, which runs the filter and forwards to
    `upstream`. Returns (listeners, clusters, the port clients use).
    `upstream(route)` names the cluster a route's destination stands for."""
    port = free_port()
    if not sidecar:
        return [routed_listener(key, port, [http_filter], virtual_hosts(routes, upstream))], [], port
    inbound, cluster = free_port(), f"inbound-{key}"
    inbound_routes = [{"match": {"prefix": "/"}, "route": {"cluster": upstream(None), "timeout": "0s"}}]
    listeners = [
        routed_listener(f"{key}-ingress", port, [], virtual_hosts(routes, lambda r: cluster)),
        hcm_listener(f"{key}-inbound", inbound, [http_filter], inbound_routes),
    ]
    return listeners, [static_cluster(cluster, inbound)], port
