import pytest

from harness import MCP_AUDIENCE, MCP_SCOPE, WASM, Backend, Cleanup, Envoy, IdP, free_port

CLIENT, SECRET = "tester", "tester-secret"


@pytest.fixture
def cleanup():
    c = Cleanup()
    yield c
    c.close()


@pytest.fixture(scope="module")
def module_cleanup():
    c = Cleanup()
    yield c
    c.close()


def mcp_resources(envoy_port):
    resource = f"http://127.0.0.1:{envoy_port}/mcp"
    return resource, {
        resource: {"audience": MCP_AUDIENCE, "scope": f"{MCP_SCOPE} openid"},
        # Same audience, 2-second tokens: for expiry.
        "urn:test:short": {"audience": MCP_AUDIENCE, "scope": MCP_SCOPE, "ttl": 2},
        # Another audience entirely.
        "urn:test:other": {"audience": "some-other-api", "scope": MCP_SCOPE},
    }


def plugin_config(idp, envoy_port, **overrides):
    oidc = {
        "issuer": idp.issuer,
        "audience": MCP_AUDIENCE,
        "jwksUrl": f"{idp.issuer}/jwks",
        "requiredScopes": [MCP_SCOPE],
        "resourceUrl": f"http://127.0.0.1:{envoy_port}/mcp",
        "clockSkewSeconds": 1,
    }
    oidc.update(overrides)
    return {"oidc": oidc}


class Stack:
    """MCP authorization server, echo backend, and Envoy with the filter."""

    def __init__(self, cleanup, idp=None, jwks_delay_ms=0, **overrides):
        """With `idp`, use that (possibly stopped) authorization server."""
        self.envoy_port = free_port()
        self.resource, resources = mcp_resources(self.envoy_port)
        if idp is None:
            idp = IdP(cleanup, "mcp-as", resources=resources, clients=[{"client_id": CLIENT, "client_secret": SECRET}],
                      jwks_delay_ms=jwks_delay_ms)
            idp.start()
        self.idp = idp
        self.backend = Backend(cleanup)
        # jwksCluster is left to its Istio default, which names this cluster.
        clusters = {f"outbound|{self.idp.port}||127.0.0.1": self.idp.port}
        self.envoy = Envoy(
            cleanup,
            self.backend.port,
            plugin_config(self.idp, self.envoy_port, **overrides),
            clusters,
            port=self.envoy_port,
        ).wait_ready()

    def token(self, resource=None, scope=MCP_SCOPE):
        return self.idp.token(CLIENT, SECRET, resource or self.resource, scope)


@pytest.fixture(scope="module")
def stack(module_cleanup):
    """One stack shared by a module's tests that do not change it."""
    assert WASM.exists(), "build the filter first: tests/bootstrap.sh"
    return Stack(module_cleanup)
