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
//   IDP_ROTATE     if "1", add a fresh key in front of the file's keys at start:
//                  new tokens get a new kid, old ones still verify
import fs from 'node:fs';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

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

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
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
  jwks: loadKeys(),
  scopes: [...scopes],
  clients: clients.map((c) => ({
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    ...c,
  })),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
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

const jwksDelay = Number(env('IDP_JWKS_DELAY_MS', '0'));
if (jwksDelay > 0) {
  provider.use(async (ctx, next) => {
    if (ctx.path === '/jwks') await new Promise((resolve) => { setTimeout(resolve, jwksDelay); });
    await next();
  });
}

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => console.log(`idp ${issuer} listening on 127.0.0.1:${port}`));
