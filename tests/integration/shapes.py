"""The deployment shapes, read as an operator applies them.

A shape is a directory under istio/ or envoy-gateway/ whose YAML files,
taken in name order (the order `kubectl apply -f <dir>` takes them), are one
deployment: the Secret and its wiring, the IdP's clusters, the plugin and the
routes. This module reads them and follows their references the way Istio,
Envoy Gateway and Kubernetes do: which proxy a plugin lands on, which
environment that proxy gets from which Secret, which routes reach it.
test_shapes.py checks those references; test_istio.py and test_providers.py
build Envoy from the same reading.
"""

import fnmatch
import urllib.parse
from dataclasses import dataclass, field

import yaml

from harness import ROOT

PLATFORMS = ("istio", "envoy-gateway")
METADATA_PREFIX = "/.well-known/oauth-protected-resource"
# Envoy Gateway runs Envoy in the controller's namespace (EnvoyGateway
# provider.kubernetes.deploy.type ControllerNamespace, the default).
EG_ENVOY_NAMESPACE = "envoy-gateway-system"
# Gateways that an installer creates and a shape only patches: istioctl's
# default profile, and Istio's gateway Helm chart installed as
# `helm install istio-ingress istio/gateway -n istio-ingress` (Deployment
# named after the release; labels app: <release>, istio: <release without
# "istio-">, manifests/charts/gateway/templates/_helpers.tpl), and the same
# chart as the shared gateway's own release, istio-shared.
INSTALLED_GATEWAYS = {
    ("istio-system", "istio-ingressgateway"): {"app": "istio-ingressgateway", "istio": "ingressgateway"},
    ("istio-ingress", "istio-ingress"): {"app": "istio-ingress", "istio": "ingress"},
    ("istio-shared", "istio-shared"): {"app": "istio-shared", "istio": "shared"},
}
# Namespaces the installers create; every other one a shape uses, the
# README's path for it creates.
INSTALLER_NAMESPACES = {"istio-system", "istio-ingress", "envoy-gateway-system"}


def group(doc):
    api = doc["apiVersion"]
    return api.rsplit("/", 1)[0] if "/" in api else ""


def key(doc):
    """What names a resource in a cluster: group, kind, namespace, name."""
    m = doc["metadata"]
    return group(doc), doc["kind"], m.get("namespace", ""), m["name"]


class Shape:
    def __init__(self, path):
        self.dir = path
        self.platform = path.parent.name
        self.name = f"{self.platform}/{path.name}"
        self.files = sorted(path.glob("*.yaml"))
        self.docs = [d for f in self.files for d in yaml.safe_load_all(f.read_text()) if d]

    def __repr__(self):
        return self.name

    def of(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name, namespace):
        for d in self.of(kind):
            if d["metadata"]["name"] == name and d["metadata"].get("namespace") == namespace:
                return d
        return None

    def plugins(self):
        out = [Plugin(self, wp, wp["spec"].get("pluginConfig", {}),
                      [e["name"] for e in wp["spec"].get("vmConfig", {}).get("env", [])
                       if e.get("valueFrom") == "HOST"])
               for wp in self.of("WasmPlugin")]
        for p in self.of("EnvoyExtensionPolicy"):
            for w in p["spec"].get("wasm", []):
                out.append(Plugin(self, p, w.get("config", {}), w.get("env", {}).get("hostKeys", [])))
        return out

    def routes(self):
        """Every (host, path match) a VirtualService or HTTPRoute of the shape
        routes, with its destination and the path it is rewritten to, if any."""
        out = []
        for vs in self.of("VirtualService"):
            ns = vs["metadata"]["namespace"]
            for http in vs["spec"].get("http", []):
                (dest,) = [r["destination"] for r in http["route"]]
                backend = (dest["host"], dest["port"]["number"])
                for m in http.get("match") or [{"uri": {"prefix": "/"}}]:
                    kind, value = next(iter(m["uri"].items()))
                    out.append(Route(vs, vs["spec"]["hosts"], kind, value, backend, ns,
                                     rewrite=http.get("rewrite", {}).get("uri")))
        for hr in self.of("HTTPRoute"):
            ns = hr["metadata"]["namespace"]
            for rule in hr["spec"].get("rules", []):
                (ref,) = rule["backendRefs"]
                backend = (f"{ref['name']}.{ref.get('namespace', ns)}.svc.cluster.local", ref["port"])
                for m in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
                    path = m.get("path", {"type": "PathPrefix", "value": "/"})
                    kind = {"PathPrefix": "path_separated_prefix", "Exact": "exact"}[path["type"]]
                    out.append(Route(hr, hr["spec"].get("hostnames", ["*"]), kind, path["value"], backend, ns,
                                     rule.get("timeouts", {}).get("request")))
        return out


@dataclass
class Route:
    source: dict
    hosts: list
    kind: str  # prefix, path_separated_prefix or exact
    value: str
    backend: tuple  # (service FQDN, port)
    namespace: str
    timeout: str = None
    rewrite: str = None  # the matched path (or prefix) is replaced by this upstream

    def matches_host(self, host):
        return any(fnmatch.fnmatch(host, h) for h in self.hosts)

    def matches(self, host, path):
        if not self.matches_host(host):
            return False
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix" or self.value == "/":
            return path.startswith(self.value)
        prefix = self.value.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")


@dataclass
class Plugin:
    shape: Shape
    doc: dict  # the WasmPlugin or EnvoyExtensionPolicy
    config: dict
    host_env: list = field(default_factory=list)

    @property
    def namespace(self):
        return self.doc["metadata"]["namespace"]

    def exchanges(self):
        """The top-level tokenExchange and every rule's."""
        out = [self.config.get("tokenExchange")]
        out += [r.get("tokenExchange") for r in self.config.get("rules", [])]
        return [t for t in out if t]

    def secret_envs(self):
        """Every variable a client secret comes from: each exchange's, and
        its assertionGrant's (id-jag)."""
        sections = self.exchanges() + [t["assertionGrant"] for t in self.exchanges() if t.get("assertionGrant")]
        return sorted({t["clientSecretEnv"] for t in sections if t.get("clientSecretEnv")})

    def oidcs(self):
        """Every oidc section a request can meet: the top level, and each
        rule's `oidc` merged over it key by key (one protected resource per
        rule on a shared gateway)."""
        top = self.config.get("oidc", {})
        rules = [{**top, **r["oidc"]} for r in self.config.get("rules", []) if r.get("oidc")]
        return ([top] if top.get("issuer") else []) + rules

    def callouts(self):
        """(URL, cluster) of every callout: the cluster named, or the
        filter's default for the URL, Istio's outbound|<port>||<host>."""
        pairs = [(o.get("jwksUrl"), o.get("jwksCluster")) for o in self.oidcs()]
        pairs += [(t.get("tokenUrl"), t.get("tokenCluster")) for t in self.exchanges()]
        pairs += [(g.get("tokenUrl"), g.get("tokenCluster")) for g in
                  (t.get("assertionGrant") for t in self.exchanges()) if g]
        out = []
        for url, cluster in pairs:
            if url:
                u = urllib.parse.urlsplit(url)
                out.append((url, cluster or f"outbound|{u.port or (443 if u.scheme == 'https' else 80)}||{u.hostname}"))
        return sorted(set(out))

    def resources(self):
        """(host, path, metadata path) of every resourceUrl; the path is "/"
        when the resource is the whole host."""
        out = []
        for url in dict.fromkeys(o["resourceUrl"] for o in self.oidcs() if o.get("resourceUrl")):
            u = urllib.parse.urlsplit(url)
            path = u.path.rstrip("/")
            out.append((u.hostname, path or "/", METADATA_PREFIX + path))
        return out

    def resource(self):
        """The one resource of a plugin that protects one."""
        (r,) = self.resources()
        return r

    def proxies(self):
        """The proxies this plugin lands on, as Proxy records."""
        if self.doc["kind"] == "EnvoyExtensionPolicy":
            return self._eg_proxies()
        spec = self.doc["spec"]
        if spec.get("targetRefs"):
            return [self._gateway_api_proxy(ref) for ref in spec["targetRefs"]]
        return self._selected_workloads(spec.get("selector", {}).get("matchLabels", {}))

    def _selected_workloads(self, selector):
        out = []
        for d in self.shape.of("Deployment"):
            m = d["metadata"]
            installed = INSTALLED_GATEWAYS.get((m["namespace"], m["name"]))
            labels = installed or d["spec"]["template"].get("metadata", {}).get("labels", {})
            if m["namespace"] == self.namespace and selector.items() <= labels.items():
                out.append(Proxy(m["namespace"], "gateway" if installed else "sidecar", container_env(d, "istio-proxy"),
                                 workload=d, services=services_for(self.shape, m["namespace"], labels)))
        return out

    def _gateway_api_proxy(self, ref):
        gw = self.shape.get("Gateway", ref["name"], self.namespace)
        if gw is None or ref.get("kind") != "Gateway":
            return Proxy(self.namespace, "missing", {}, note=f"no Gateway {ref['name']} in {self.namespace}")
        params = gw["spec"].get("infrastructure", {}).get("parametersRef")
        env = {}
        if params and params["kind"] == "ConfigMap":
            cm = self.shape.get("ConfigMap", params["name"], self.namespace) or {"data": {}}
            overlay = yaml.safe_load(cm["data"].get("deployment", "{}"))
            env = container_env(overlay, "istio-proxy")
        return Proxy(self.namespace, "gateway", env, gateway=gw)

    def _eg_proxies(self):
        out = []
        for ref in self.doc["spec"]["targetRefs"]:
            route = self.shape.get(ref["kind"], ref["name"], self.namespace)
            for parent in (route or {}).get("spec", {}).get("parentRefs", []):
                gw = self.shape.get("Gateway", parent["name"], parent.get("namespace", self.namespace))
                if gw is None:
                    out.append(Proxy(EG_ENVOY_NAMESPACE, "missing", {}, note=f"no Gateway {parent['name']}"))
                    continue
                params = gw["spec"].get("infrastructure", {}).get("parametersRef")
                proxy = self.shape.get("EnvoyProxy", params["name"], gw["metadata"]["namespace"]) if params else None
                env = {}
                if proxy:
                    dep = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]
                    env = {e["name"]: e for e in dep.get("container", {}).get("env", [])}
                out.append(Proxy(EG_ENVOY_NAMESPACE, "gateway", env, gateway=gw))
        return out


@dataclass
class Proxy:
    namespace: str
    kind: str  # gateway, sidecar or missing
    env: dict  # name -> the container's EnvVar
    workload: dict = None
    gateway: dict = None
    services: list = field(default_factory=list)  # FQDNs of Services selecting a sidecar's pods
    note: str = ""


def container_env(deployment, container):
    for c in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if c["name"] == container:
            return {e["name"]: e for e in c.get("env", [])}
    return {}


def services_for(shape, namespace, labels):
    return [f"{s['metadata']['name']}.{namespace}.svc.cluster.local" for s in shape.of("Service")
            if s["metadata"]["namespace"] == namespace and s["spec"].get("selector", {}).items() <= labels.items()]


def secret_keys(shape, name, namespace):
    """The keys of Secret `name` in `namespace` if the shape ships it, else None."""
    s = shape.get("Secret", name, namespace)
    if s is None:
        return None
    return set(s.get("stringData", {})) | set(s.get("data", {}))


def shapes():
    out = []
    for platform in PLATFORMS:
        for d in sorted((ROOT / platform).iterdir()):
            if d.is_dir() and any(d.glob("*.yaml")):
                out.append(Shape(d))
    return out


SHAPES = shapes()


def shape(name):
    (s,) = [s for s in SHAPES if s.name == name]
    return s
