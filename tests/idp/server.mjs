// One OAuth 2.0 authorization server for the demo and the integration tests:
// panva's oidc-provider, configured to issue RS256 JWT access tokens through
// client_credentials, with resource indicators choosing the audience.
//
// Settings come from the environment, so the tests can start several:
//   IDP_PORT       port on 127.0.0.1 to listen on
//   IDP_ISSUER     issuer (default http://127.0.0.1:<port>)
//   IDP_KEYS       file with the private signing JWKS; created with one fresh
//                  RSA-2048 key if missing. The first key signs.
//   IDP_RESOURCES  JSON {"<resource URI>": {"audience", "scope", "ttl"}}
//   IDP_CLIENTS    JSON [{"client_id", "client_secret", ...client metadata}]
//   IDP_JWKS_DELAY_MS  delay every JWKS answer by this much (slow-IdP tests)
//   IDP_STATE_DIR  keep registrations, grants, sessions, tokens and the cookie
//                  signing keys in this directory (file-adapter.mjs), so a
//                  client registered before a restart still logs in after it;
//                  without it, they live in memory
//   IDP_BEHIND_PROXY  if "1", trust X-Forwarded-Proto/Host from a TLS front
//                  (koa's `proxy`, as oidc-provider documents), so discovery
//                  names https:// endpoints on the front's host
//
// With IDP_TRUST_ISSUER set, it also speaks RFC 8693 token exchange, as the
// backend authorization server in an Okta-style two-AS setup: it accepts
// access tokens from the trusted AS as subject tokens and issues its own for
// the `audience` or `resource` asked for, keeping the subject's `sub`.
//   IDP_TRUST_ISSUER    issuer whose access tokens may be exchanged
//   IDP_TRUST_AUDIENCE  audience those tokens must carry
//   IDP_TRUST_JWKS      its JWKS URL (default <issuer>/jwks)
//   IDP_DENY_SUBJECTS   JSON list of subjects refused with invalid_grant
//   IDP_EXCHANGE_DELAY_MS  delay every exchange by this much
// GET /_stats answers {"token_exchange": <exchange requests so far>}.
//   IDP_ROTATE     if "1", add a fresh key in front of the file's keys at start:
//                  new tokens get a new kid, old ones still verify
//
// With IDP_INTERACTIVE=1 it also serves what MCP clients use: authorization
// code with PKCE (S256), open dynamic client registration (RFC 7591; public
// clients allowed), refresh tokens for clients registered with that grant
// (no offline_access needed; rotated as the library does), the library's
// development login and consent pages (any login name and password; the
// name becomes `sub`), and CORS for browser clients. A request naming no
// resource gets the single configured one (RFC 8707), so a code flow yields
// a JWT access token for that resource's audience and scopes.
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import Provider, { errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import fileAdapter from './file-adapter.mjs';

const env = (name, fallback) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) throw new Error(`${name} is required`);
    return fallback;
  }
  return v;
};

const port = Number(env('IDP_PORT'));
const issuer = env('IDP_ISSUER', `http://127.0.0.1:${port}`);
const keysFile = env('IDP_KEYS');
const resources = JSON.parse(env('IDP_RESOURCES', '{}'));
const clients = JSON.parse(env('IDP_CLIENTS', '[]'));
const interactive = process.env.IDP_INTERACTIVE === '1';
const stateDir = process.env.IDP_STATE_DIR;

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

// The keys that sign the login session's cookies: kept with the state, so a
// browser's session survives a restart too.
function cookieKeys() {
  const file = stateDir && path.join(stateDir, 'cookie-keys.json');
  if (file && fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const keys = [crypto.randomBytes(32).toString('base64url')];
  if (file) {
    fs.mkdirSync(stateDir, { recursive: true });
    fs.writeFileSync(file, JSON.stringify(keys), { mode: 0o600 });
  }
  return keys;
}

function loadKeys() {
  const keys = fs.existsSync(keysFile) ? JSON.parse(fs.readFileSync(keysFile, 'utf8')).keys : [];
  if (keys.length === 0 || process.env.IDP_ROTATE === '1') {
    keys.unshift(newKey());
    fs.writeFileSync(keysFile, JSON.stringify({ keys }));
  }
  return { keys };
}

const scopes = new Set(['openid']);
for (const r of Object.values(resources)) for (const s of (r.scope || '').split(' ')) if (s) scopes.add(s);

const provider = new Provider(issuer, {
  ...(stateDir && { adapter: fileAdapter(path.join(stateDir, 'store.json')) }),
  jwks: loadKeys(),
  scopes: [...scopes],
  clients: clients.map((c) => ({
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    ...c,
  })),
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || 300,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 300,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 86400,
  },
  ...(interactive && {
    findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
    issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Browser clients: any origin may call the token and revocation endpoints.
    clientBasedCORS: () => true,
    // Signed cookies; not `secure`, as the issuer is plain http.
    cookies: { keys: cookieKeys() },
  }),
  features: {
    devInteractions: { enabled: interactive },
    registration: { enabled: interactive },
    revocation: { enabled: interactive },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      ...(interactive && {
        defaultResource: (ctx, client, oneOf) => oneOf
          || (Object.keys(resources).length === 1 ? Object.keys(resources)[0] : undefined),
        useGrantedResource: () => true,
      }),
      async getResourceServerInfo(ctx, resourceIndicator) {
        const r = resources[resourceIndicator];
        if (!r) throw new Provider.errors.InvalidTarget();
        return {
          audience: r.audience || resourceIndicator,
          scope: r.scope || '',
          accessTokenTTL: r.ttl || 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const trustIssuer = process.env.IDP_TRUST_ISSUER;
const exchangeDelay = Number(env('IDP_EXCHANGE_DELAY_MS', '0'));
const stats = { token_exchange: 0 };

function resourceServer(target) {
  const entry = Object.entries(resources).find(([uri, r]) => uri === target || r.audience === target);
  if (!entry) return undefined;
  const [uri, r] = entry;
  return new provider.ResourceServer(uri, {
    audience: r.audience || uri,
    scope: r.scope || '',
    accessTokenTTL: r.ttl || 300,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  });
}

if (trustIssuer) {
  const trustedKeys = createRemoteJWKSet(new URL(env('IDP_TRUST_JWKS', `${trustIssuer}/jwks`)));
  const trustAudience = env('IDP_TRUST_AUDIENCE');
  const denied = new Set(JSON.parse(env('IDP_DENY_SUBJECTS', '[]')));

  // Client authentication, parameter parsing, signing and error responses are
  // the library's; this only decides whether and what to issue.
  provider.registerGrantType(EXCHANGE, async (ctx) => {
    stats.token_exchange += 1;
    if (exchangeDelay) await new Promise((resolve) => { setTimeout(resolve, exchangeDelay); });
    const p = ctx.oidc.params;
    if (!p.subject_token) throw new errors.InvalidRequest('missing subject_token');
    if (p.subject_token_type !== ACCESS_TOKEN) throw new errors.InvalidRequest('unsupported subject_token_type');
    if (p.requested_token_type && p.requested_token_type !== ACCESS_TOKEN) {
      throw new errors.InvalidRequest('unsupported requested_token_type');
    }
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(p.subject_token, trustedKeys, {
        issuer: trustIssuer, audience: trustAudience,
      }));
    } catch {
      throw new errors.InvalidGrant('subject token is invalid');
    }
    if (!subject.sub || denied.has(subject.sub)) throw new errors.InvalidGrant('subject may not use this resource');
    const rs = resourceServer(p.resource || p.audience);
    if (!rs) throw new errors.InvalidTarget();
    const requested = (p.scope || '').split(' ').filter(Boolean);
    if (requested.some((s) => !rs.scopes.has(s))) throw new errors.InvalidScope('requested scope is not allowed');
    const scope = (requested.length ? requested : [...rs.scopes]).join(' ');
    const { client } = ctx.oidc;
    const grant = new provider.Grant({ accountId: subject.sub, clientId: client.clientId });
    const token = new provider.AccessToken({
      accountId: subject.sub, client, grantId: await grant.save(), gty: 'token_exchange', scope,
    });
    token.resourceServer = rs;
    ctx.body = {
      access_token: await token.save(),
      issued_token_type: ACCESS_TOKEN,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope,
    };
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope', 'resource',
    'actor_token', 'actor_token_type']);
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/_stats') {
    ctx.body = stats;
    return;
  }
  await next();
});

// The library answers CORS on its other endpoints, but not on registration.
if (interactive) {
  provider.use(async (ctx, next) => {
    if (ctx.path !== '/reg' || !ctx.get('origin')) return next();
    ctx.set('access-control-allow-origin', ctx.get('origin'));
    ctx.vary('origin');
    if (ctx.method !== 'OPTIONS') return next();
    ctx.set('access-control-allow-methods', 'POST');
    ctx.set('access-control-allow-headers', ctx.get('access-control-request-headers') || 'content-type');
    ctx.status = 204;
    return undefined;
  });
}

const jwksDelay = Number(env('IDP_JWKS_DELAY_MS', '0'));
if (jwksDelay > 0) {
  provider.use(async (ctx, next) => {
    if (ctx.path === '/jwks') await new Promise((resolve) => { setTimeout(resolve, jwksDelay); });
    await next();
  });
}

if (process.env.IDP_BEHIND_PROXY === '1') provider.proxy = true;

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => console.log(`idp ${issuer} listening on 127.0.0.1:${port}`));
