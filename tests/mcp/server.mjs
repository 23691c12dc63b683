// The MCP server of the end-to-end tests: the official TypeScript SDK's
// Streamable HTTP transport with stateful sessions (so clients may open the
// GET event stream), behind Envoy and the filter.
//
//   MCP_PORT     port on 127.0.0.1; the endpoint is /mcp
//   BACKEND_URL  base URL of tests/backend.py
//
// Tools:
//   whoami             GET ${BACKEND_URL}/whoami with the Authorization header
//                      this MCP request carried; as text, only what the
//                      backend verified: {"verified_claims": {...} or null}.
//                      Never the backend's whole echo, which repeats the
//                      request's headers and so the exchanged token: the
//                      client never holds a backend token.
//   ping {notify?}     "pong"; with notify: true, also a logging notification
//                      on the session's GET stream (not on this POST's answer)
// GET /_seen answers the Authorization values of every request received, so a
// test can check the caller's own token never got here.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const port = Number(process.env.MCP_PORT);
const backendUrl = process.env.BACKEND_URL;
if (!port || !backendUrl) throw new Error('MCP_PORT and BACKEND_URL are required');

const seen = [];
const sessions = new Map(); // mcp-session-id -> transport

function newServer() {
  const mcp = new McpServer({ name: 'token-exchange-test', version: '1.0.0' }, { capabilities: { logging: {} } });
  mcp.registerTool('whoami', { description: 'What the backend sees of the caller' }, async (extra) => {
    const authorization = extra.requestInfo?.headers?.authorization;
    const res = await fetch(`${backendUrl}/whoami`, { headers: authorization ? { authorization } : {} });
    const seen = await res.json().catch(() => ({}));
    const text = JSON.stringify({ verified_claims: seen.verified_claims ?? null });
    return { content: [{ type: 'text', text }], isError: !res.ok };
  });
  mcp.registerTool(
    'ping',
    { description: 'Answers pong; notify: true also notifies on the GET stream', inputSchema: { notify: z.boolean().optional() } },
    async ({ notify }) => {
      // No related request id: the transport sends it on the standalone GET stream.
      if (notify) await mcp.server.sendLoggingMessage({ level: 'info', logger: 'ping', data: 'notified' });
      return { content: [{ type: 'text', text: 'pong' }] };
    },
  );
  return mcp;
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : undefined;
}

function answer(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/_seen') return answer(res, 200, seen);
    if (path !== '/mcp') return answer(res, 404, { error: 'not found' });
    seen.push(req.headers.authorization ?? null);
    const body = req.method === 'POST' ? await readJson(req) : undefined;
    const id = req.headers['mcp-session-id'];
    let transport = id && sessions.get(id);
    if (!transport) {
      if (id || req.method !== 'POST' || !isInitializeRequest(body)) {
        return answer(res, id ? 404 : 400, { jsonrpc: '2.0', error: { code: -32000, message: 'no such session' }, id: null });
      }
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: randomUUID,
        onsessioninitialized: (sid) => sessions.set(sid, transport),
      });
      transport.onclose = () => sessions.delete(transport.sessionId);
      await newServer().connect(transport);
    }
    await transport.handleRequest(req, res, body);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) answer(res, 500, { error: String(err) });
  }
}).listen(port, '127.0.0.1', () => console.log(`mcp server listening on 127.0.0.1:${port}`));
