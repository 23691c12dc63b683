"""Issue 14: a path servers may read as another one gets no laxer decision.

The filter's rule: when any common reading of a request's path (letter
case, encoded unreserved characters, `;` parameters, a trailing slash,
repeated slashes, dot segments, encoded `/` `.` `\\`) would select a
different policy or tool-gate decision than its exact text, the request
gets 400; otherwise it gets the decision all readings agree on.

Real servers behind one Envoy (2 workers), each on a listener of its own,
all with the same filter config apart from the rules:

- the official TypeScript SDK's Express app (`createMcpExpressApp` with
  `allowedHosts`, `app.post('/mcp', …)`, tests/mcp/express-server.mjs), which
  routes `/MCP` and `/mcp/` to its handler;
- the official Python SDK's Streamable HTTP app (Starlette under uvicorn,
  tests/mcp/python_server.py), which routes `/%6Dcp` to `/mcp`;
- tests/backend.py behind a stricter `rules` prefix, `/admin/`.

Both MCP servers have `whoami`, which `mcp.toolScopes` gives `mcp:admin`, and
`echo`, which needs nothing more; they record every tool run, so what ran is
proven from the server's side. Every test runs twice: on Envoy with its
defaults (no path normalization) and with Istio's (`normalize_path: true`,
`merge_slashes: false`), where Envoy rewrites some variants before the filter
sees them. A host-only skip rule for `other.example` shows an unrelated host
on the same Envoy untouched, and carries the check of what Envoy's
normalization does (README, "Path readings").
"""

import copy
import json
import sys

import pytest

from constants import ADMIN_SCOPE as ADMIN
from constants import CLIENT, MCP_AUDIENCE, MCP_SCOPE, SECRET
from harness import MCP_DIR, WASM, Backend, Cleanup, EnvoyProcess, IdP, Proc, call, envoy_config, free_port, wait_port
from stacks import clients_for, plugin_config

GATEWAY = "mcp.gateway.test"  # the Host the MCP servers accept
OTHER = "other.example"  # a host no rule or gate looks at the path of
RESOURCE = "urn:test:paths"
# Envoy's HTTP connection manager settings under test.
SETTINGS = {"plain": {}, "istio": {"normalize_path": True, "merge_slashes": False}}

# POSTs that some server may route to /mcp: 403 where every reading is the
# endpoint (the gate judged the call), else 400 (ambiguous). Envoy's
# normalize_path turns the second group into /mcp or /mcp/ before the filter
# (/a/..;/mcp on 1.40, not on 1.36).
JUDGED = ["/mcp/", "/mcp?x=1"]
NORMALIZED_TO_MCP = ["/%6Dcp", "/%6dcp", "/m%63p/", "/x/../mcp", "/./mcp", "/mcp/.", "/%2e/mcp", "/mcp\\", "/a/..;/mcp"]
AMBIGUOUS = ["/MCP", "/Mcp/", "/mcp;x=1", "/mcp/;x", "//mcp", "/mcp//", "/mcp%2F", "/mcp%2f", "/mcp%5C"]
# Paths a server may read as under /admin/, asked with a token for the lax policy.
ADMIN_VARIANTS = [
    "/admin/users", "/admin", "/admin/users/", "/Admin/users", "/ADMIN/users", "/%61dmin/users", "/%41dmin/users",
    "/admin;v=1/users", "//admin/users", "/admin//users", "/x/../admin/users", "/admin/./users", "/%2e/admin/users",
    "/admin%2Fusers", "/admin%5Cusers", "/admin\\users", "/a/..;/admin/users",
]
# What Envoy hands the upstream: (sent, with normalize_path). Without it, all as sent.
NORMALIZED = [
    ("/%6Dcp", "/mcp"),
    ("/%61%2d%5F%7E", "/a-_~"),
    ("/x/../mcp", "/mcp"),
    ("/mcp/.", "/mcp/"),
    ("/%2e%2E/mcp", "/mcp"),
    ("/mcp\\x", "/mcp/x"),
    ("/MCP", "/MCP"),
    ("/mcp//x//", "/mcp//x//"),
    ("/mcp;x/y;z", "/mcp;x/y;z"),
    # Envoy 1.40 reads `..;x` as a dot segment, 1.36 does not.
    ("/a/..;x/b", ("/b", "/a/..;x/b")),
    ("/a/%2e%2e;/b", "/a/..;/b"),
    ("/mcp%2F%2f", "/mcp%2F%2f"),
    ("/mcp%5c", "/mcp%5c"),
    ("/caf%C3%A9%25%zz", "/caf%C3%A9%25%zz"),
    ("/a|b", "/a%7Cb"),
]


def rpc(tool):
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})


class Upstreams:
    """The IdP and the three servers, shared by both Envoys."""

    def __init__(self, cleanup):
        self.idp = IdP(cleanup, "mcp-as", resources={
            RESOURCE: {"audience": MCP_AUDIENCE, "scope": f"{MCP_SCOPE} {ADMIN}"},
        }, clients=clients_for(CLIENT)).start()
        self.echo = Backend(cleanup)
        self.ports = {"express": free_port(), "python": free_port()}
        express = cleanup.add(Proc(
            "mcp-express", ["node", "express-server.mjs"], cwd=MCP_DIR,
            env={"MCP_PORT": str(self.ports["express"]), "ALLOWED_HOSTS": GATEWAY},
        ))
        python = cleanup.add(Proc("mcp-python", [
            sys.executable, str(MCP_DIR / "python_server.py"), str(self.ports["python"]), GATEWAY,
        ]))
        for server, proc in (("express", express), ("python", python)):
            wait_port(self.ports[server], proc.proc, proc.log)
        self.lax = self.idp.token(CLIENT, SECRET, RESOURCE, MCP_SCOPE)
        self.admin = self.idp.token(CLIENT, SECRET, RESOURCE, f"{MCP_SCOPE} {ADMIN}")

    def runs(self, server):
        """The tools `server` has run, in order."""
        status, _, body = call(self.ports[server], "/_runs", headers={"host": GATEWAY})
        assert status == 200, body
        return [r["tool"] for r in json.loads(body)]


class Gateway:
    """One Envoy with a listener per upstream, its path settings `setting`."""

    def __init__(self, cleanup, up, setting):
        self.setting = setting
        self.ports = {name: free_port() for name in ("express", "python", "echo")}
        unrelated = {"match": {"hosts": [OTHER]}, "skip": True}
        configs = {}
        for name, port in self.ports.items():
            config = plugin_config(up.idp, port)
            config["mcp"] = {"toolScopes": {"whoami": [ADMIN]}}
            config["rules"] = [unrelated]
            configs[name] = config
        configs["echo"]["rules"].append({"match": {"pathPrefix": "/admin/"}, "requiredScopes": [ADMIN]})
        admin = free_port()
        clusters = {f"outbound|{up.idp.port}||127.0.0.1": up.idp.port}
        doc = envoy_config([(p, configs[n]) for n, p in self.ports.items()], admin, up.echo.port, clusters)
        upstream_ports = {"express": up.ports["express"], "python": up.ports["python"], "echo": up.echo.port}
        template = doc["static_resources"]["clusters"][0]
        for listener, name in zip(doc["static_resources"]["listeners"], self.ports):
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            hcm.update(SETTINGS[setting])
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = name
            cluster = copy.deepcopy(template)
            cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = upstream_ports[name]
            doc["static_resources"]["clusters"].append(cluster)
        self.envoy = EnvoyProcess(cleanup, f"envoy-{setting}", doc, admin).wait_ready(list(self.ports.values()))

    def post(self, server, path, token, tool):
        return call(self.ports[server], path, method="POST", body=rpc(tool), headers={
            "host": GATEWAY, "authorization": f"Bearer {token}", "content-type": "application/json",
            "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18",
        })

    def forwarded(self, path):
        """The path Envoy hands the filter and the upstream for `path` (not
        starting with `//`, which the echo backend's http.server merges)."""
        status, _, body = self.get(path, host=OTHER)
        assert status == 200, body
        return json.loads(body)["path"]

    def get(self, path, token=None, host=GATEWAY, method="GET", body=None):
        headers = {"host": host}
        if token:
            headers["authorization"] = f"Bearer {token}"
        return call(self.ports["echo"], path, method=method, headers=headers, body=body)


@pytest.fixture(scope="module")
def up():
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    cleanup = Cleanup()
    try:
        yield Upstreams(cleanup)
    finally:
        cleanup.close()


@pytest.fixture(scope="module", params=list(SETTINGS))
def gw(request, up):
    cleanup = Cleanup()
    try:
        yield Gateway(cleanup, up, request.param)
    finally:
        cleanup.close()


def refused_by_the_filter(status, headers, body):
    """400 for an ambiguous path, or 403 for the gated tool: the filter's
    own JSON answer, not an upstream's."""
    if status not in (400, 403):
        return False
    error = json.loads(body).get("error")
    return (status, error) in ((400, "invalid_request"), (403, "insufficient_scope")) and "www-authenticate" in headers


def test_the_sdk_servers_themselves_run_the_gated_tool_for_variants(up):
    """Without the gateway, the variants are real: Express runs `whoami` for
    /MCP and /mcp/, the Python SDK for /%6Dcp. This is what the gateway must
    stop, and proves the servers' run records can show a run."""
    headers = {"host": GATEWAY, "content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-06-18"}
    for server, variants in (("express", ["/MCP", "/mcp/"]), ("python", ["/%6Dcp", "/%6dcp"])):
        before = up.runs(server)
        for path in variants:
            status, _, body = call(up.ports[server], path, method="POST", body=rpc("whoami"), headers=headers)
            assert status == 200 and '"you"' in body, (server, path, status, body)
        assert up.runs(server) == before + ["whoami"] * len(variants)


@pytest.mark.parametrize("server", ["express", "python"])
def test_the_endpoint_works_and_the_gated_tool_needs_its_scope(gw, up, server):
    before = up.runs(server)
    status, _, body = gw.post(server, "/mcp", up.lax, "echo")
    assert status == 200, body
    status, headers, body = gw.post(server, "/mcp", up.lax, "whoami")
    assert status == 403 and 'scope="mcp:tools:call mcp:admin"' in headers["www-authenticate"], body
    status, _, body = gw.post(server, "/mcp", up.admin, "whoami")
    assert status == 200 and '"you"' in body, body
    assert up.runs(server) == before + ["echo", "whoami"], "the ungated tool ran, the gated one only with its scope"


@pytest.mark.parametrize("server", ["express", "python"])
def test_no_variant_of_the_endpoint_runs_the_gated_tool(gw, up, server):
    before = up.runs(server)
    for path in JUDGED + NORMALIZED_TO_MCP + AMBIGUOUS:
        status, headers, body = gw.post(server, path, up.lax, "whoami")
        judged = path in JUDGED or (path in NORMALIZED_TO_MCP and gw.forwarded(path) in ("/mcp", "/mcp/"))
        if judged and status == 307 and server == "python":
            # The gate sends a judged request's headers on before its body;
            # Starlette may answer /mcp/ with its redirect to /mcp first.
            assert headers["location"].endswith("/mcp"), headers
            continue
        assert refused_by_the_filter(status, headers, body), (gw.setting, path, status, body)
        assert status == (403 if judged else 400), (gw.setting, path, body)
    assert up.runs(server) == before, f"{server} ran a tool for a variant"


def test_no_variant_of_a_stricter_prefix_is_forwarded_with_the_lax_policy(gw, up):
    status, _, body = gw.get("/public/x", up.lax)
    assert status == 200, body
    served = up.echo.requests()
    for path in ADMIN_VARIANTS:
        status, headers, body = gw.get(path, up.lax)
        assert refused_by_the_filter(status, headers, body), (gw.setting, path, status, body)
    assert up.echo.requests() == served, "a variant reached the upstream"
    # With the stricter policy's scope they go on, unless ambiguous.
    for path, expected in (("/admin/users", 200), ("/admin", 200), ("/Admin/users", 400), ("/admin%2Fusers", 400)):
        status, _, body = gw.get(path, up.admin)
        assert status == expected, (gw.setting, path, body)
        if status == 200:
            assert json.loads(body)["path"] == path, "forwarded as it came"


def test_an_unrelated_host_is_untouched(gw, up):
    """Its first rule takes any path, so the path is never read: whatever it
    holds reaches the upstream as Envoy handed it over, with no token."""
    for path in ("/a%2Fb;x//C%5C/%zz", "/MCP%2F"):
        status, _, body = gw.get(path, host=OTHER)
        assert status == 200, (gw.setting, path, body)
        assert json.loads(body)["path"] == path
    status, _, body = gw.get("/MCP", host=OTHER, method="POST", body=rpc("whoami"))
    assert status == 200, "not gated either"


def test_envoy_normalizes_paths_as_the_readme_says(gw):
    """What the filter sees (and the upstream gets) under each setting."""
    for sent, normalized in NORMALIZED:
        expected = normalized if gw.setting == "istio" else sent
        assert gw.forwarded(sent) in ((expected,) if isinstance(expected, str) else expected), (gw.setting, sent)
