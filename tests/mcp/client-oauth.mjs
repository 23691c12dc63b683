// An MCP client as an interactive app is one: the official TypeScript SDK's
// Client over Streamable HTTP, authorizing with the authorization code flow
// (PKCE) that the SDK drives. The user's part is the test's: this script
// prints the authorization URL and reads back the URL the authorization
// server redirected to.
//
//   MCP_URL=http://127.0.0.1:8080/mcp node client-oauth.mjs
//   MCP_URL         one MCP URL, or several separated by spaces: each is
//                   connected in turn with a provider of its own (its own
//                   discovery, registration and tokens), as one app logged
//                   in to several servers is
//   MCP_REDIRECT_URL  the registered redirect URI (default
//                     http://127.0.0.1:33418/callback; nothing listens there)
//   MCP_CALLS         how many times to call `whoami` (default 2)
//
// It talks in JSON lines, each naming the MCP URL it is about ("server"). Out (stdout):
//   {"event": "authorize", "server", "url": "<authorization URL>"}
//   {"event": "authorized", "server", "client_id", "access_token", "refresh_token": bool, "scope"}
//   {"event": "whoami", "server", "call": 1, "result": <the tool's text, parsed as JSON if it is>}
//   {"event": "done", "server"}
// In (stdin), after each "authorize": one line, the redirect URL with code and state.
// Fails (exit 1, the error on stderr) on any error, a state mismatch included.
import crypto from 'node:crypto';
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { callWhoami, run, say } from './client-events.mjs';

const serverUrls = process.env.MCP_URL.split(/\s+/).filter(Boolean).map((u) => new URL(u));
const redirectUrl = process.env.MCP_REDIRECT_URL || 'http://127.0.0.1:33418/callback';
const calls = Number(process.env.MCP_CALLS || '2');

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// The SDK's OAuthClientProvider: everything kept in memory, for one run
// against one server.
class InMemoryProvider {
  constructor(server) {
    this.server = server;
    this.saved = {};
    this.expectedState = crypto.randomBytes(16).toString('base64url');
  }

  get redirectUrl() { return redirectUrl; }

  get clientMetadata() {
    return {
      client_name: 'token-exchange-filter test client',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() { return this.expectedState; }

  clientInformation() { return this.saved.client; }

  saveClientInformation(info) { this.saved.client = info; }

  tokens() { return this.saved.tokens; }

  saveTokens(tokens) { this.saved.tokens = tokens; }

  saveCodeVerifier(verifier) { this.saved.verifier = verifier; }

  codeVerifier() { return this.saved.verifier; }

  discoveryState() { return this.saved.discovery; }

  saveDiscoveryState(state) { this.saved.discovery = state; }

  redirectToAuthorization(url) {
    say({ event: 'authorize', server: this.server, url: url.href });
  }
}

async function codeFromUser(provider) {
  const { value, done } = await lines.next();
  if (done) throw new Error('stdin closed before the redirect URL arrived');
  const back = new URL(value.trim()).searchParams;
  if (back.get('error')) {
    throw new Error(`authorization failed: ${back.get('error')}: ${back.get('error_description')}`);
  }
  if (back.get('state') !== provider.expectedState) throw new Error('state mismatch in the redirect');
  return back.get('code');
}

async function session(serverUrl) {
  const provider = new InMemoryProvider(serverUrl.href);
  const client = new Client({ name: 'token-exchange-filter-test-oauth', version: '1.0.0' });
  let transport = new StreamableHTTPClientTransport(serverUrl, { authProvider: provider });
  try {
    await client.connect(transport);
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
    // The SDK got the 401, discovered, registered and sent the user off.
    await transport.finishAuth(await codeFromUser(provider));
    transport = new StreamableHTTPClientTransport(serverUrl, { authProvider: provider });
    await client.connect(transport);
  }
  const { tokens, client: info } = provider.saved;
  say({
    event: 'authorized',
    server: serverUrl.href,
    client_id: info?.client_id,
    access_token: tokens?.access_token,
    refresh_token: Boolean(tokens?.refresh_token),
    scope: tokens?.scope,
  });
  await callWhoami(client, calls, { server: serverUrl.href });
}

async function main() {
  for (const serverUrl of serverUrls) await session(serverUrl);
}

run('client-oauth', main);
