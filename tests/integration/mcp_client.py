"""An MCP client finding its way in as the MCP authorization spec says, at
the names the shipped manifests use (https://mcp.example.com/mcp,
https://idp.example.com/...).

The client is the official Python SDK: a Streamable HTTP session whose
httpx client carries the SDK's ClientCredentialsOAuthProvider, told only
the MCP URL, its client id and secret, the issuer it trusts and the scope it
wants. On the first 401 the SDK reads resource_metadata from the challenge,
fetches the RFC 9728 document, discovers the authorization server's
metadata, gets a token with client_credentials (RFC 8707 resource = the
document's `resource`) and retries.

Only name resolution is the test's: `Resolver`, an httpx transport, sends
each host to a local port (an Envoy listener, or the IdPs' TLS front, with
the SNI and certificate check of the real name) and keeps a log of what the
client asked for and got.
"""

import ssl

import anyio
import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from sdk_user import MemoryStorage


class Resolver(httpx2.AsyncBaseTransport):
    """`hosts` maps a host name to (port, tls): plain HTTP to an Envoy
    listener, or TLS (SNI and certificate for that name, trusting `ca`)."""

    def __init__(self, hosts, ca=None):
        self.hosts = hosts
        self.log = []
        verify = ssl.create_default_context(cafile=str(ca)) if ca else True
        self.inner = httpx2.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request):
        port, tls = self.hosts[request.url.host]
        extensions = {**request.extensions, "sni_hostname": request.url.host} if tls else request.extensions
        # A copy for the wire: the Host header keeps the real name, only the
        # connection moves (the client may send `request` again).
        wire = httpx2.Request(request.method, request.url.copy_with(
            scheme="https" if tls else "http", host="127.0.0.1", port=port),
            headers=request.headers, stream=request.stream, extensions=extensions)
        response = await self.inner.handle_async_request(wire)
        self.log.append((request.method, str(request.url), response.status_code))
        return response

    async def aclose(self):
        await self.inner.aclose()


def call_tool(url, resolver, client_id, client_secret, issuer, scope, tool="whoami"):
    """Opens a session at `url`, lists the tools and calls `tool`; returns
    (tool names, the tool's result, the access token the client holds)."""
    storage = MemoryStorage()

    async def run():
        auth = ClientCredentialsOAuthProvider(url, storage, client_id, client_secret, scope=scope, issuer=issuer)
        async with httpx2.AsyncClient(auth=auth, transport=resolver, timeout=httpx2.Timeout(30)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = {t.name for t in (await session.list_tools()).tools}
                    return tools, await session.call_tool(tool, {})

    tools, result = anyio.run(run)
    return tools, result, storage.tokens.access_token if storage.tokens else None

