// An MCP client as an agent is one: the official TypeScript SDK's Client over
// Streamable HTTP with the SDK's ClientCredentialsProvider, a pre-registered
// confidential client (client_secret_basic). On the server's 401 the SDK
// discovers the authorization server (RFC 9728, then RFC 8414) and asks it
// for a token with the client_credentials grant; no user is involved.
//
//   MCP_URL=http://127.0.0.1:8080/mcp MCP_CLIENT_ID=agent MCP_CLIENT_SECRET=... \
//   MCP_ISSUER=http://127.0.0.1:9001 node client-credentials.mjs
//   MCP_SCOPE   scope to ask for (default: what the server's challenge or
//               metadata names, as the SDK chooses)
//   MCP_CALLS   how many times to call `whoami` (default 2)
//
// Out (stdout), JSON lines:
//   {"event": "authorized", "client_id", "access_token", "scope"}
//   {"event": "whoami", "call": 1, "result": <the tool's text, parsed as JSON if it is>}
//   {"event": "done"}
// Fails (exit 1, the error on stderr) on any error.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { callWhoami, run, say } from './client-events.mjs';

const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is required`);
  return process.env[name];
};

async function main() {
  const serverUrl = new URL(env('MCP_URL'));
  const provider = new ClientCredentialsProvider({
    clientId: env('MCP_CLIENT_ID'),
    clientSecret: env('MCP_CLIENT_SECRET'),
    // The credentials go to this authorization server only.
    expectedIssuer: env('MCP_ISSUER'),
    scope: process.env.MCP_SCOPE || undefined,
  });
  const client = new Client({ name: 'token-exchange-filter-test-agent', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(serverUrl, { authProvider: provider }));
  const tokens = provider.tokens();
  say({
    event: 'authorized',
    client_id: provider.clientInformation().client_id,
    access_token: tokens?.access_token,
    scope: tokens?.scope,
  });
  await callWhoami(client, Number(process.env.MCP_CALLS || '2'));
}

run('client-credentials', main);
