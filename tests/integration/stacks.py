"""The stacks the integration tests run, built in one place.

A `Stack` is the MCP authorization server (the MCP AS, tests/idp: it issues
the callers' tokens), an upstream, and Envoy with the filter: one listener
per name in `listeners`, the callouts on Istio's default cluster names
(`outbound|<port>||127.0.0.1`). With `exchange`, it also runs the backend AS,
a second oidc-provider that trusts the MCP AS and exchanges its tokens
(RFC 8693), and the upstream is tests/backend.py verifying every token it
gets against the backend AS. With `mcp_server`, the MCP server
(tests/mcp/server.mjs) sits between Envoy and that backend.

A test that needs more subclasses `Stack` and overrides `configure(name)`
(the plugin config of each listener), or passes `envoy=False` and calls
`start_envoy()` once its own servers are up.
"""

import copy
import json

from constants import (
    BACKEND_API,
    BACKEND_AUDIENCE,
    BACKEND_SCOPE,
    CLIENT,
    EXCHANGE_GRANT,
    GW_CLIENT,
    GW_SECRET,
    GW_SECRET_ENV,
    MCP_AUDIENCE,
    MCP_SCOPE,
)
from harness import WASM, Backend, Envoy, IdP, McpServer, free_port


def clients_for(*users, **fields):
    """MCP AS client records: each user a confidential client whose secret is
    f"{user}-secret"."""
    return [{"client_id": u, "client_secret": f"{u}-secret", **fields} for u in users]


def exchange_client(client_id=GW_CLIENT, secret=GW_SECRET, **fields):
    """A backend AS client allowed the token-exchange grant; `secret` None for
    one that authenticates otherwise (private_key_jwt)."""
    record = {"client_id": client_id, "grant_types": [EXCHANGE_GRANT], **fields}
    if secret is not None:
        record["client_secret"] = secret
    return record


def mcp_resources(resource, scope=f"{MCP_SCOPE} openid", ttl=None):
    """The MCP AS's resources: `resource` (the MCP URL) with `scope`, and two
    for the validation tests."""
    main = {"audience": MCP_AUDIENCE, "scope": scope}
    if ttl:
        main["ttl"] = ttl
    return {
        resource: main,
        # Same audience, 2-second tokens: for expiry.
        "urn:test:short": {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE, "ttl": 2},
        # Another audience entirely.
        "urn:test:other": {"audience": "some-other-api", "scope": MCP_SCOPE},
    }


def sole_resource(scope=MCP_SCOPE):
    """`resources` for a stack whose MCP AS has only the MCP URL, so that an
    authorization code flow naming no resource gets it."""
    return lambda resource: {resource: {"audience": MCP_AUDIENCE, "scope": scope}}


def merged(base, overrides, remove=None):
    """`base` with `overrides` on top; an override that is `remove` removes
    the entry."""
    out = dict(base)
    for k, v in overrides.items():
        if v is remove:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def plugin_config(idp, envoy_port, **overrides):
    """The filter's config validating `idp`'s tokens for the MCP URL on
    `envoy_port`; `overrides` replace oidc entries (None removes one)."""
    oidc = {
        "issuer": idp.issuer,
        "audience": MCP_AUDIENCE,
        "jwksUrl": f"{idp.issuer}/jwks",
        "requiredScopes": [MCP_SCOPE],
        "resourceUrl": f"http://127.0.0.1:{envoy_port}/mcp",
        "clockSkewSeconds": 1,
    }
    return {"oidc": merged(oidc, overrides)}


def start_backend_as(cleanup, mcp_as, name="backend-as", *, issuer=None, audience=MCP_AUDIENCE, resources=None,
                     clients=None, trust_jwks=False, deny=(), delay_ms=0, actors=(), introspect=None):
    """The backend AS, started: it exchanges tokens `mcp_as` issued for
    `audience` (comma-separated: any of them). By default it issues BACKEND_SCOPE tokens for
    BACKEND_AUDIENCE (resource BACKEND_API) to one client, gw. `trust_jwks`:
    fetch the MCP AS's keys from its port (when its issuer is not its
    address); `deny`: subjects refused with invalid_grant; `delay_ms`: every
    exchange answers that much later; `actors`: clients whose own token
    every exchange must carry as its actor_token; `introspect`: {"client_id",
    "client_secret"} it checks opaque subject tokens with, at `mcp_as`'s
    introspection endpoint."""
    env = {"IDP_TRUST_ISSUER": mcp_as.issuer, "IDP_TRUST_AUDIENCE": audience}
    if actors:
        env["IDP_ACTORS"] = json.dumps(list(actors))
    if trust_jwks:
        env["IDP_TRUST_JWKS"] = f"http://127.0.0.1:{mcp_as.port}/jwks"
    if deny:
        env["IDP_DENY_SUBJECTS"] = json.dumps(list(deny))
    if delay_ms:
        env["IDP_EXCHANGE_DELAY_MS"] = str(delay_ms)
    if introspect:
        env["IDP_TRUST_INTROSPECTION"] = json.dumps({"url": f"{mcp_as.issuer}/token/introspection", **introspect})
    return IdP(cleanup, name, issuer=issuer,
               resources=resources or {BACKEND_API: {"audience": BACKEND_AUDIENCE, "scope": BACKEND_SCOPE}},
               clients=clients or [exchange_client()], extra_env=env).start()


class Stack:
    """See the module's doc. Options:

    listeners   listener names; the first one's port serves the MCP URL
                (`resource`), which the MCP AS issues tokens for.
    mcp_as      an IdP to use (it may be stopped) instead of starting one;
                otherwise `prefix`, `issuer`, `keys`, `clients`,
                `resources` (a dict, or a function of the MCP URL),
                `jwks_delay_ms`, `interactive` (code flow, registration,
                login pages) and `idp_env` (more of its environment, e.g.
                IDP_OPAQUE) shape the one started.
    exchange    also the backend AS (`backend_as`: start_backend_as options)
                and tokenExchange in every listener's config.
    verify      whether the backend verifies tokens against the backend AS
                (default: with `exchange`); `marker`: its load-test header.
    upstream    a port to route to instead of a backend the stack starts.
    oidc, token_exchange, sections
                entries replacing the defaults of every listener's oidc and
                tokenExchange sections (None removes one), and further
                top-level sections (cors, mcp, cache, ...).
    clusters    more ports to give an outbound cluster; `env`, Envoy's
                environment on top of the exchange secret; `log_level`.
    envoy       False: Envoy is started by a later `start_envoy()`.
    """

    def __init__(self, cleanup, *, listeners=("main",), mcp_as=None, prefix="", issuer=None, keys=None,
                 clients=None, resources=None, jwks_delay_ms=0, interactive=False, idp_env=None,
                 exchange=False, backend_as=None, verify=None, marker=None, mcp_server=False, upstream=None,
                 oidc=None, token_exchange=None, sections=None, clusters=(), env=None, log_level="info",
                 envoy=True):
        assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
        self.cleanup = cleanup
        self.ports = {name: free_port() for name in listeners}
        self.envoy_port = next(iter(self.ports.values()))
        self.resource = f"http://127.0.0.1:{self.envoy_port}/mcp"
        if mcp_as is None:
            resources = mcp_resources(self.resource) if resources is None else resources
            mcp_as = IdP(cleanup, f"{prefix}mcp-as", issuer=issuer, keys=keys,
                         resources=resources(self.resource) if callable(resources) else resources,
                         clients=clients or clients_for(CLIENT), jwks_delay_ms=jwks_delay_ms,
                         extra_env={**({"IDP_INTERACTIVE": "1"} if interactive else {}), **(idp_env or {})}).start()
        self.mcp_as = mcp_as
        self.backend_as = start_backend_as(cleanup, mcp_as, f"{prefix}backend-as", **(backend_as or {})) \
            if exchange else None
        self.backend = self.mcp = None
        if upstream is None:
            verifying = exchange if verify is None else verify
            self.backend = Backend(cleanup, verify_with=self.backend_as if verifying else None,
                                   audience=BACKEND_AUDIENCE, marker=marker)
            upstream = self.backend.port
            if mcp_server:
                self.mcp = McpServer(cleanup, self.backend.port)
                upstream = self.mcp.port
        self.upstream_port = upstream
        self.oidc, self.token_exchange, self.sections = oidc or {}, token_exchange or {}, sections or {}
        self.clusters = {}
        for port in [mcp_as.port] + ([self.backend_as.port] if exchange else []) + list(clusters):
            self.add_cluster(port)
        self.env = {GW_SECRET_ENV: GW_SECRET} if exchange else {}
        self.env.update(env or {})
        self.log_level = log_level
        self.envoy = None
        if envoy:
            self.start_envoy()

    def add_cluster(self, port):
        """Envoy gets the cluster Istio would name for 127.0.0.1:`port`."""
        self.clusters[f"outbound|{port}||127.0.0.1"] = port

    def config(self, oidc=None, exchange=None):
        """A listener's plugin config: the stack's, with `oidc` and `exchange`
        entries on top; `exchange=False`: validation only."""
        cfg = plugin_config(self.mcp_as, self.envoy_port, **{**self.oidc, **(oidc or {})})
        if self.backend_as is not None and exchange is not False:
            defaults = {"tokenUrl": f"{self.backend_as.issuer}/token", "clientId": GW_CLIENT,
                        "clientSecretEnv": GW_SECRET_ENV, "audience": BACKEND_AUDIENCE, "scopes": [BACKEND_SCOPE]}
            cfg["tokenExchange"] = merged(defaults, {**self.token_exchange, **(exchange or {})})
        cfg.update(copy.deepcopy(self.sections))
        return cfg

    def configure(self, name):
        """The plugin config of listener `name`; subclasses vary it."""
        return self.config()

    def start_envoy(self):
        configs = [(port, self.configure(name)) for name, port in self.ports.items()]
        self.envoy = Envoy(self.cleanup, self.upstream_port, configs[0][1], self.clusters, port=configs[0][0],
                           extra_listeners=configs[1:], env=self.env, log_level=self.log_level).wait_ready()
        return self

    def token(self, user=CLIENT, scope=MCP_SCOPE, resource=None):
        """An access token from the MCP AS for client `user` (secret f"{user}-secret")."""
        return self.mcp_as.token(user, f"{user}-secret", resource or self.resource, scope)

    def get(self, listener=None, token=None, path="/mcp", headers=None, method="GET"):
        """One request to a listener (the first by default)."""
        port = self.ports[listener] if listener else self.envoy_port
        return self.envoy.get(path, token=token, headers=headers, method=method, port=port)
