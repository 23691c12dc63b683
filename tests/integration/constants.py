"""Names the integration tests share: the MCP resource's audience and scopes,
the test clients, and the backend's audience, API and exchange client. One
place, so a stack and the assertions on it cannot drift apart."""

# The MCP AS (tests/idp) issues the callers' tokens for the MCP server.
MCP_AUDIENCE = "mcpserver"
MCP_SCOPE = "mcp:tools:call"
ADMIN_SCOPE = "mcp:admin"
# A resource indicator for tests that do not need the MCP URL itself.
MCP_RESOURCE = "urn:test:mcp"
# The confidential client most tests get their tokens with; every client a
# stack registers for a user has the secret f"{user}-secret".
CLIENT = "tester"
SECRET = f"{CLIENT}-secret"

# The backend AS trusts the MCP AS and exchanges its tokens (RFC 8693).
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
BACKEND_AUDIENCE = "backend"
BACKEND_API = "https://api.example.com/"
BACKEND_SCOPE = "backend:read"
# The filter's client at the backend AS, and the environment variable that
# carries its secret to the filter.
GW_CLIENT = "gw"
GW_SECRET = "gw-secret"
GW_SECRET_ENV = "GW_SECRET"
# The variable the shipped configs (envoy-local, istio/) read the secret from.
SHIPPED_SECRET_ENV = "TOKEN_EXCHANGE_CLIENT_SECRET"
