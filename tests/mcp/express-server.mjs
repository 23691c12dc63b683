// An MCP server as most TypeScript ones are written: the official SDK's
// Express app (`createMcpExpressApp`, Host checked against `allowedHosts`)
// with `app.post('/mcp', …)`, stateless, answering JSON. Express routes
// case-insensitively and ignores a trailing slash, so `/MCP` and `/mcp/`
// reach the same handler as `/mcp`.
//
//   MCP_PORT       port on 127.0.0.1
//   ALLOWED_HOSTS  comma-separated Host names the app accepts
//
// Tools: `whoami` (the filter gives it scopes of its own) and `echo`. Every
// run is recorded; GET /_runs answers them, so a test can prove from the
// server's side which tools ran.
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

const port = Number(process.env.MCP_PORT);
const allowedHosts = (process.env.ALLOWED_HOSTS ?? '').split(',').filter(Boolean);
if (!port || !allowedHosts.length) throw new Error('MCP_PORT and ALLOWED_HOSTS are required');

const runs = [];

function newServer() {
  const mcp = new McpServer({ name: 'express-test', version: '1.0.0' });
  mcp.registerTool('whoami', { description: 'Who called' }, async (extra) => {
    runs.push({ tool: 'whoami', path: extra.requestInfo?.url?.pathname ?? null });
    return { content: [{ type: 'text', text: 'you' }] };
  });
  mcp.registerTool('echo', { description: 'Echoes', inputSchema: { text: z.string().optional() } }, async ({ text }) => {
    runs.push({ tool: 'echo' });
    return { content: [{ type: 'text', text: text ?? '' }] };
  });
  return mcp;
}

const app = createMcpExpressApp({ host: '127.0.0.1', allowedHosts });
app.get('/_runs', (_req, res) => res.json(runs));
app.post('/mcp', async (req, res) => {
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => transport.close());
  await newServer().connect(transport);
  await transport.handleRequest(req, res, req.body);
});
app.listen(port, '127.0.0.1');
