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
//   IDP_TRUST_AUDIENCE  audience those tokens must carry (comma-separated: any of them)
//   IDP_TRUST_JWKS      its JWKS URL (default <issuer>/jwks)
//   IDP_DENY_SUBJECTS   JSON list of subjects refused with invalid_grant
//   IDP_EXCHANGE_DELAY_MS  delay every exchange by this much
//   IDP_ACTORS     JSON list of client ids: every exchange must then carry an
//                  actor_token (RFC 8693 §2.1), an access token this server
//                  issued by client credentials to one of them, with the
//                  `agent` scope; the issued token names it in `act.sub` (§4.1)
//   IDP_TRUST_INTROSPECTION  JSON {"url", "client_id", "client_secret"}: a
//                  subject token that is not a JWT is checked at the trusted
//                  AS's RFC 7662 endpoint instead (active, iss, aud)
// GET /_stats answers {"token_exchange": <exchange requests so far>,
// "token_exchange_by_target": {<resource or audience asked for>: <count>},
// "grants": {"<grant_type>": <successful grants>},
// "introspection": <introspection requests so far>,
// "introspection_by_client": {"<client that authenticated>": <count>}}.
//
// With IDP_OPAQUE=1 it issues access tokens in oidc-provider's default,
// opaque format (a resource may still ask for "format": "jwt") and enables
// the library's introspection (RFC 7662, POST /token/introspection, for any
// authenticated client) and revocation (RFC 7009) endpoints.
//   IDP_INTROSPECTION_DELAY_MS  delay every introspection by this much
//
// Cross App Access (draft-ietf-oauth-identity-assertion-authz-grant), as two
// stand-ins:
//   IDP_ID_JAG     JSON {"subjectAudience": "<aud of access tokens it takes>",
//                  "audiences": {"<resource AS issuer>": {"<client>": "<its
//                  client_id there>"}}}: the enterprise IdP. A token exchange
//                  with requested_token_type id-jag, by an authenticated
//                  client, of a token this server signed (an access token for
//                  subjectAudience, or an "ID token": any JWT it signed whose
//                  aud is that client) gives an ID-JAG: typ oauth-id-jag+jwt,
//                  iss, sub, aud (the resource AS), client_id (mapped), jti,
//                  iat, exp, and the resource and scope asked for.
//   IDP_ID_JAG_TRUST  JSON {"issuer", "jwks"}: the resource AS. A JWT bearer
//                  grant (RFC 7523) of an ID-JAG from that issuer is checked
//                  (signature against its JWKS, typ, aud = this issuer and
//                  only it, client_id = the authenticated client, exp and
//                  iat, jti never seen before) before an access token for its
//                  resource is issued, to its sub, with the scopes both the
//                  grant and the resource allow.
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
import {
  createLocalJWKSet, createRemoteJWKSet, importJWK, jwtVerify, SignJWT,
} from 'jose';
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
const opaque = process.env.IDP_OPAQUE === '1';
const stateDir = process.env.IDP_STATE_DIR;

// The key comes out PEM-encoded and is read back before its JWK export. On
// Node 20, exporting the KeyObject that generateKeyPairSync returns can
// deadlock the process for good: the export holds the key's mutex, an
// allocation inside it runs a GC, and the GC destroys the finished keygen
// job, which takes the same mutex (seen as an IdP that never listens; a
// loop of 1024-bit keys hangs within a few hundred). A key read from PEM
// shares no mutex with the job.
function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const jwk = crypto.createPrivateKey(privateKey).export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
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

const signingKeys = loadKeys();
// A token exchange's actor (IDP_ACTORS), by request, for extraTokenClaims.
const acting = new WeakMap();

const provider = new Provider(issuer, {
  ...(stateDir && { adapter: fileAdapter(path.join(stateDir, 'store.json')) }),
  jwks: signingKeys,
  extraTokenClaims: (ctx, token) => (token.gty === 'token_exchange' && acting.has(ctx)
    ? { act: acting.get(ctx) } : undefined),
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
    revocation: { enabled: interactive || opaque },
    introspection: {
      enabled: opaque,
      // Any client that authenticated may ask about any token.
      allowedPolicy: (ctx, client) => client.clientAuthMethod !== 'none',
    },
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
        const format = r.format || (opaque ? 'opaque' : 'jwt');
        return {
          audience: r.audience || resourceIndicator,
          scope: r.scope || '',
          accessTokenTTL: r.ttl || 300,
          accessTokenFormat: format,
          ...(format === 'jwt' && { jwt: { sign: { alg: 'RS256' } } }),
        };
      },
    },
  },
});

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
const ID_JAG = 'urn:ietf:params:oauth:token-type:id-jag';
const trustIssuer = process.env.IDP_TRUST_ISSUER;
const exchangeDelay = Number(env('IDP_EXCHANGE_DELAY_MS', '0'));
const actors = process.env.IDP_ACTORS && new Set(JSON.parse(process.env.IDP_ACTORS));
const idJag = process.env.IDP_ID_JAG && JSON.parse(process.env.IDP_ID_JAG);
const idJagTrust = process.env.IDP_ID_JAG_TRUST && JSON.parse(process.env.IDP_ID_JAG_TRUST);
const trustIntrospection = process.env.IDP_TRUST_INTROSPECTION && JSON.parse(process.env.IDP_TRUST_INTROSPECTION);
const stats = {
  token_exchange: 0, token_exchange_by_target: {}, grants: {}, introspection: 0, introspection_by_client: {},
};
provider.on('grant.success', (ctx) => {
  const g = ctx.oidc.params.grant_type;
  stats.grants[g] = (stats.grants[g] || 0) + 1;
});

// Its own public keys: the enterprise IdP checks the subject tokens it signed.
const ownKeys = createLocalJWKSet({
  keys: signingKeys.keys.map(({
    kty, n, e, kid, alg,
  }) => ({
    kty, n, e, kid, alg,
  })),
});

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

// An access token for `rs`, to `sub`, with the requested scopes (all of the
// resource's if none), which must be within `allowed` (default: the resource's).
async function accessToken(ctx, sub, rs, requested, gty, allowed = rs.scopes) {
  const want = (requested || '').split(' ').filter(Boolean);
  if (want.some((s) => !rs.scopes.has(s) || !allowed.has(s))) {
    throw new errors.InvalidScope('requested scope is not allowed');
  }
  const scope = (want.length ? want : [...rs.scopes].filter((s) => allowed.has(s))).join(' ');
  const { client } = ctx.oidc;
  const grant = new provider.Grant({ accountId: sub, clientId: client.clientId });
  const token = new provider.AccessToken({
    accountId: sub, client, grantId: await grant.save(), gty, scope,
  });
  token.resourceServer = rs;
  return {
    access_token: await token.save(), token_type: 'Bearer', expires_in: token.expiration, scope,
  };
}

// IDP_ACTORS: the actor token must be one of this server's client credentials
// tokens, of an allowed client, with the `agent` scope.
async function actor(ctx) {
  const p = ctx.oidc.params;
  if (!p.actor_token || p.actor_token_type !== ACCESS_TOKEN) {
    throw new errors.InvalidRequest('an actor_token (access_token) is required');
  }
  const token = await provider.ClientCredentials.find(p.actor_token);
  if (!token || token.isExpired || !actors.has(token.clientId) || !token.scopes.has('agent')) {
    throw new errors.InvalidGrant('actor_token is invalid');
  }
  acting.set(ctx, { sub: token.clientId });
}

// IDP_TRUST_INTROSPECTION: an opaque subject token, as the trusted AS
// describes it; throws unless it is active, from that AS, for our audience.
async function introspected(token) {
  const t = trustIntrospection;
  const basic = Buffer.from(`${t.client_id}:${t.client_secret}`).toString('base64');
  const resp = await fetch(t.url, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
  });
  const a = await resp.json();
  const audiences = env('IDP_TRUST_AUDIENCE').split(',');
  if (a.active !== true || a.iss !== trustIssuer || ![a.aud].flat().some((x) => audiences.includes(x))) {
    throw new Error('inactive, or not for us');
  }
  return { ...a, sub: a.sub || a.client_id };
}

async function exchange(ctx, trustedKeys) {
  const p = ctx.oidc.params;
  if (p.subject_token_type !== ACCESS_TOKEN) throw new errors.InvalidRequest('unsupported subject_token_type');
  if (p.requested_token_type && p.requested_token_type !== ACCESS_TOKEN) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  let subject;
  try {
    ({ payload: subject } = trustIntrospection && p.subject_token.split('.').length !== 3
      ? { payload: await introspected(p.subject_token) }
      : await jwtVerify(p.subject_token, trustedKeys, {
        issuer: trustIssuer, audience: env('IDP_TRUST_AUDIENCE').split(','),
      }));
  } catch {
    throw new errors.InvalidGrant('subject token is invalid');
  }
  const denied = new Set(JSON.parse(env('IDP_DENY_SUBJECTS', '[]')));
  if (!subject.sub || denied.has(subject.sub)) throw new errors.InvalidGrant('subject may not use this resource');
  const rs = resourceServer(p.resource || p.audience);
  if (!rs) throw new errors.InvalidTarget();
  if (actors) await actor(ctx);
  return { ...await accessToken(ctx, subject.sub, rs, p.scope, 'token_exchange'), issued_token_type: ACCESS_TOKEN };
}

// IDP_ID_JAG: an ID-JAG for the resource AS named by `audience`.
async function issueIdJag(ctx) {
  const p = ctx.oidc.params;
  const { clientId } = ctx.oidc.client;
  const audience = p.subject_token_type === ID_TOKEN ? clientId : idJag.subjectAudience;
  if (![ACCESS_TOKEN, ID_TOKEN].includes(p.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(p.subject_token, ownKeys, { issuer, audience }));
  } catch {
    throw new errors.InvalidGrant('subject token is invalid');
  }
  const there = idJag.audiences[p.audience]?.[clientId];
  if (!there) throw new errors.InvalidTarget('no trust relationship with that audience for this client');
  const [key] = signingKeys.keys;
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: subject.sub, client_id: there, jti: crypto.randomUUID(), iat: now, exp: now + 300,
    ...(p.resource && { resource: p.resource }), ...(p.scope && { scope: p.scope }),
  };
  const grant = await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', typ: 'oauth-id-jag+jwt', kid: key.kid })
    .setIssuer(issuer).setAudience(p.audience).sign(await importJWK(key, 'RS256'));
  return {
    access_token: grant, issued_token_type: ID_JAG, token_type: 'N_A', expires_in: 300, scope: p.scope,
  };
}

if (trustIssuer || idJag) {
  const trustedKeys = trustIssuer && createRemoteJWKSet(new URL(env('IDP_TRUST_JWKS', `${trustIssuer}/jwks`)));
  // Client authentication, parameter parsing, signing and error responses are
  // the library's; this only decides whether and what to issue.
  provider.registerGrantType(EXCHANGE, async (ctx) => {
    stats.token_exchange += 1;
    const target = ctx.oidc.params.resource || ctx.oidc.params.audience || '';
    stats.token_exchange_by_target[target] = (stats.token_exchange_by_target[target] || 0) + 1;
    if (exchangeDelay) await new Promise((resolve) => { setTimeout(resolve, exchangeDelay); });
    if (!ctx.oidc.params.subject_token) throw new errors.InvalidRequest('missing subject_token');
    const idJagAsked = ctx.oidc.params.requested_token_type === ID_JAG;
    if (idJagAsked ? !idJag : !trustIssuer) throw new errors.InvalidRequest('unsupported requested_token_type');
    ctx.body = idJagAsked ? await issueIdJag(ctx) : await exchange(ctx, trustedKeys);
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope', 'resource',
    'actor_token', 'actor_token_type']);
}

if (idJagTrust) {
  const idpKeys = createRemoteJWKSet(new URL(idJagTrust.jwks));
  const seen = new Set();
  provider.registerGrantType(JWT_BEARER, async (ctx) => {
    const p = ctx.oidc.params;
    let grant;
    try {
      ({ payload: grant } = await jwtVerify(p.assertion || '', idpKeys, {
        issuer: idJagTrust.issuer, audience: issuer, typ: 'oauth-id-jag+jwt',
        requiredClaims: ['sub', 'client_id', 'jti', 'exp', 'iat'],
      }));
    } catch {
      throw new errors.InvalidGrant('assertion is not a valid ID-JAG for this server');
    }
    if (Array.isArray(grant.aud) && grant.aud.length !== 1) throw new errors.InvalidGrant('aud must name only us');
    if (grant.client_id !== ctx.oidc.client.clientId) throw new errors.InvalidGrant('ID-JAG is for another client');
    if (seen.has(grant.jti)) throw new errors.InvalidGrant('ID-JAG was used before');
    seen.add(grant.jti);
    const rs = resourceServer(p.resource || [grant.resource].flat()[0]);
    if (!rs) throw new errors.InvalidTarget();
    const granted = new Set((grant.scope || '').split(' ').filter(Boolean));
    ctx.body = await accessToken(ctx, grant.sub, rs, p.scope, 'jwt_bearer', granted);
  }, ['assertion', 'scope', 'resource']);
}

const introspectionDelay = Number(env('IDP_INTROSPECTION_DELAY_MS', '0'));
provider.use(async (ctx, next) => {
  if (ctx.path === '/_stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path !== '/token/introspection') {
    await next();
    return;
  }
  stats.introspection += 1;
  if (introspectionDelay) await new Promise((resolve) => { setTimeout(resolve, introspectionDelay); });
  await next();
  const client = ctx.oidc?.client?.clientId;
  if (client) stats.introspection_by_client[client] = (stats.introspection_by_client[client] || 0) + 1;
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
