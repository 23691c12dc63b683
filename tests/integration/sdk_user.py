"""The official MCP Python SDK (PyPI `mcp`) with a person behind its OAuth
provider: the authorization code flow with PKCE, dynamic registration or a
pre-registered client, tokens kept in memory, and the login and consent
pages driven by login.py. Nothing listens on the redirect URI: login() stops
there and hands the redirect back."""

import urllib.parse

import anyio
import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from login import login

REDIRECT = "http://127.0.0.1:9/callback"
GRANT_TYPES = ["authorization_code", "refresh_token"]


class MemoryStorage:
    """The SDK's TokenStorage, in memory."""

    tokens = client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class AuthorizationFailed(Exception):
    """The IdP sent the user back with an error instead of a code."""


class User:
    """A person behind the SDK's OAuth provider: every authorization URL the
    SDK opens is recorded and logged in to (and consented) as `name`.
    `client_info`: a pre-registered client (else the SDK registers one)."""

    def __init__(self, name, client_info=None):
        self.name = name
        self.storage = MemoryStorage()
        self.storage.client_info = client_info
        self.authorization_urls = []
        self.landed = []  # where the IdP sent the user back each time
        self.challenges = []  # (status, WWW-Authenticate) of every refused MCP request

    @property
    def logins(self):
        return len(self.authorization_urls)

    async def open_browser(self, url):
        self.authorization_urls.append(url)
        self.landed.append(await anyio.to_thread.run_sync(login, url, self.name))

    async def read_callback(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.landed[-1]).query)
        if "code" not in q:
            raise AuthorizationFailed(self.landed[-1])
        first = lambda k: q.get(k, [None])[0]  # noqa: E731
        return AuthorizationCodeResult(code=first("code"), state=first("state"), iss=first("iss"))

    async def on_response(self, response):
        if response.status_code in (401, 403) and response.request.url.path == "/mcp":
            self.challenges.append((response.status_code, response.headers.get("www-authenticate")))

    def provider(self, resource):
        metadata = OAuthClientMetadata(
            client_name=f"pytest {self.name}",
            redirect_uris=[REDIRECT],
            grant_types=GRANT_TYPES,
            response_types=["code"],
            token_endpoint_auth_method="none",
        )
        return OAuthClientProvider(resource, metadata, self.storage, self.open_browser, self.read_callback)

    async def session(self, stack, resource, read_timeout=300):
        """Enters an initialized ClientSession on `resource` into `stack` (an
        AsyncExitStack), logging in first if the server asks."""
        http = await stack.enter_async_context(httpx2.AsyncClient(
            auth=self.provider(resource), event_hooks={"response": [self.on_response]},
            timeout=httpx2.Timeout(30, read=read_timeout)))
        read, write = await stack.enter_async_context(streamable_http_client(resource, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session
