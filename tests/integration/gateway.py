"""One Envoy as a shared gateway in front of several servers (issue 16).

`Gateway` is Envoy (2 workers) with one listener whose virtual hosts route
path prefixes to upstreams, and the filter as Istio delivers it: an ECDS
resource in a watched directory (istio.py), so `push` replaces the config
as an istiod push would, without a restart. The filter's callouts use
Istio's default cluster names, `outbound|<port>||127.0.0.1`, for every port
in `callouts`.
"""

import json
import re
import urllib.parse

from harness import WASM, call, free_port, wait_for
from istio import Ecds, EnvoyProc, ecds_resource, envoy_bootstrap, filter_name, routed_listener, static_cluster


class Gateway:
    """`vhosts` maps domains (`"*"` for the rest) to routes `(prefix, port,
    rewrite)`: requests under `prefix` go to 127.0.0.1:`port`, with the
    prefix replaced by `rewrite` when one is given. `env` is Envoy's
    environment; every name in it reaches the filter (`vmConfig.env` from
    the host), for `clientSecretEnv`. `port`: the listener's, if chosen
    already (resource URLs name it)."""

    def __init__(self, cleanup, name, vhosts, callouts, config, env=None, port=None):
        self.ecds = Ecds(name)
        self.plugin = {"metadata": {"namespace": "mcp", "name": name}, "spec": {
            "pluginName": "token-exchange",
            "vmConfig": {"env": [{"name": k, "valueFrom": "HOST"} for k in (env or {})]},
        }}
        self.push(config, wait=False)
        self.port, admin = port or free_port(), free_port()
        clusters = [closing_idle(static_cluster(f"outbound|{p}||127.0.0.1", p)) for p in sorted(set(callouts))]
        vh = []
        for domains, routes in vhosts.items():
            out = []
            for prefix, port, rewrite in routes:
                cluster = f"upstream-{port}"
                if cluster not in {c["name"] for c in clusters}:
                    clusters.append(static_cluster(cluster, port))
                route = {"cluster": cluster, "timeout": "0s"}
                if rewrite is not None:
                    route["prefix_rewrite"] = rewrite
                out.append({"match": {"prefix": prefix}, "route": route})
            names = [domains] if domains == "*" else [domains, f"{domains}:*"]
            vh.append({"name": domains.replace("*", "any"), "domains": names, "routes": out})
        listener = routed_listener(name, self.port, [self.ecds.http_filter(filter_name(self.plugin))], vh)
        self.envoy = EnvoyProc(cleanup, f"gateway-{name}", envoy_bootstrap(admin, [listener], clusters), admin,
                               env=env).wait_ready([self.port])
        wait_for(lambda: self.updates() == (1, 0), "the first config")

    def push(self, config, wait=True, accepted=True):
        """Moves `config` into the watched directory, as istiod's push would,
        and waits until Envoy took it (`accepted`) or refused it. (Envoy's
        config dump shows the last config it was sent, taken or not: the
        subscription's counters tell.)"""
        before = self.updates() if wait else None
        plugin = json.loads(json.dumps(self.plugin))
        plugin["spec"]["pluginConfig"] = config
        self.ecds.put(ecds_resource(plugin, WASM))
        if not wait:
            return
        wait_for(lambda: self.updates() != before, f"Envoy to take or refuse config version {self.ecds.version}")
        taken = self.updates()[0] == before[0] + 1
        assert taken == accepted, f"config version {self.ecds.version} was {'taken' if taken else 'refused'}"

    def updates(self):
        """(configs taken, configs refused) by the filter's ECDS subscription."""
        stats = self.envoy.stats("extension_config_discovery")
        return tuple(sum(v for k, v in stats.items() if k.endswith(f".update_{outcome}"))
                     for outcome in ("success", "rejected"))

    def wait_everywhere(self, path, host=None, status=200, in_a_row=20, timeout=15.0):
        """Waits until `in_a_row` requests to `path`, each on a new
        connection (so on any worker), all answer `status`: the config that
        makes them do so is in force on every worker."""
        def streak():
            return all(self.get(path, host=host)[0] == status for _ in range(in_a_row))
        wait_for(streak, f"{path} answering {status} on every worker", timeout)

    def get(self, path, token=None, host=None, headers=None):
        h = dict(headers or {})
        if host:
            h["host"] = host
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        return call(self.port, path, headers=h)

    def callouts(self, port):
        """Requests Envoy sent to 127.0.0.1:`port` through the filter's
        cluster for it: the filter's callouts to that server."""
        name = re.escape(f"cluster.outbound|{port}||127.0.0.1.upstream_rq_total")
        return sum(self.envoy.stats(urllib.parse.quote(f"^{name}$")).values())

    def stat(self, name):
        """The sum of Envoy's counters whose name contains `name`."""
        return sum(self.envoy.stats(name).values())

    def log(self):
        return self.envoy.proc.text()


# The test IdPs (Node) close a connection idle for 5 s; a callout sent on
# one as it closes is reset (a 503 for the request). As should be done in
# front of any server, Envoy closes idle connections first.
IDLE_TIMEOUT = "4s"


def closing_idle(cluster):
    cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": IDLE_TIMEOUT},
        "explicit_http_config": {"http_protocol_options": {}},
    }}
    return cluster
