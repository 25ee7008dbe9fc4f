// A real OpenID provider for the e2e tests: the npm `oidc-provider` (a certified implementation) on loopback.
//
//   node oidc_idp.mjs --port PORT --resource URL [--other-resource URL] [--upstream-resource URL]
//
// * client-credentials clients from $IDP_CLIENTS, a JSON list of
//   {"client_id", "client_secret", "groups": [...], "scope": "space separated scopes it may ask for"};
//   an entry with "redirect_uris" and "grant_types": ["authorization_code"] and no secret is a pre-registered
//   public client (PKCE, token_endpoint_auth_method none);
// * JWT access tokens (RFC 9068, typ at+jwt, RS256) through resource indicators (RFC 8707): a token
//   requested with `resource=<--resource>` has that audience and the scopes the resource allows
//   (tools:read, math:write); `--other-resource` is a second resource server, for "a token for another
//   resource"; any other resource is refused (invalid_target);
// * users from $IDP_USERS, a JSON list of {"sub", "groups": [...]}, sign in through the authorization-code
//   flow (PKCE): oidc-provider's dev interactions (a login form whose login names the user — only the listed
//   users exist — then a consent form), and public clients may register themselves (RFC 7591, open on
//   loopback) as an MCP client does;
// * each token carries the `groups` claim of its user (sub = the user) or, for client credentials, of its
//   client (sub = client_id);
// * its signing key is generated at start and published at the jwks_uri of its discovery document;
// * a token-exchange grant (RFC 8693, urn:ietf:params:oauth:grant-type:token-exchange) for clients whose
//   `grant_types` include it (the gateway): the subject_token must be one of this IdP's access tokens for
//   `--resource`; the new JWT access token has the subject's `sub`, the audience `--upstream-resource`, the
//   requested scopes (a subset of reports:read reports:write, else invalid_scope; default all) and
//   `act.sub` = the exchanging client. `--upstream-resource` also takes client-credentials tokens.
//
// Prints one line of JSON, {"issuer": "..."}, once it listens; exits on SIGTERM.

import { createPublicKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import { SignJWT, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    resource: { type: 'string' },
    'other-resource': { type: 'string', default: 'https://api.other.test/mcp' },
    'upstream-resource': { type: 'string', default: 'https://reports.upstream.test/mcp' },
  },
});
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = ['tools:read', 'math:write'];

const clients = JSON.parse(process.env.IDP_CLIENTS || '[]');
const groupsOf = new Map(clients.map((c) => [c.client_id, c.groups || []]));
const users = new Map(JSON.parse(process.env.IDP_USERS || '[]').map((u) => [u.sub, u.groups || []]));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const publicKey = createPublicKey(privateKey);
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `e2e-${randomUUID().slice(0, 8)}`, alg: 'RS256', use: 'sig' };

const UPSTREAM_SCOPES = ['reports:read', 'reports:write'];
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const EXCHANGED_TTL = 300;

const resources = {
  [args.resource]: SCOPES.join(' '),
  [args['other-resource']]: 'tools:read',
  [args['upstream-resource']]: UPSTREAM_SCOPES.join(' '),
};

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: c.grant_types || ['client_credentials'],
    redirect_uris: c.redirect_uris || [],
    response_types: c.redirect_uris ? ['code'] : [],
    token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
    scope: c.scope || [...SCOPES, ...UPSTREAM_SCOPES].join(' '),
  })),
  jwks: { keys: [signingKey] },
  scopes: ['openid', ...SCOPES, ...UPSTREAM_SCOPES],
  findAccount: (ctx, id) => (users.has(id) ? { accountId: id, claims: () => ({ sub: id }) } : undefined),
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        const scope = resources[resourceIndicator];
        if (scope === undefined) throw new errors.InvalidTarget();
        return {
          scope,
          audience: resourceIndicator,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => ({
    groups: (token.accountId ? users.get(token.accountId) : groupsOf.get(token.clientId)) || [],
  }),
  ttl: { ClientCredentials: 300 },
});
provider.on('server_error', (ctx, err) => console.error('idp server_error', err));

// RFC 8693: the authenticated client (ctx.oidc.client) exchanges a user's token for one for the upstream.
async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) throw new errors.InvalidRequest('unsupported subject_token_type');
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(params.subject_token, publicKey, {
      issuer, audience: args.resource, algorithms: ['RS256'],
    }));
  } catch {
    throw new errors.InvalidGrant('subject_token is not a valid access token of this issuer for the gateway');
  }
  const target = params.resource || params.audience;
  if (target !== args['upstream-resource']) throw new errors.InvalidTarget();
  const asked = (params.scope || UPSTREAM_SCOPES.join(' ')).split(' ').filter(Boolean);
  const refused = asked.filter((s) => !UPSTREAM_SCOPES.includes(s));
  if (refused.length) throw new errors.InvalidScope('requested scope is not allowed for this resource', refused.join(' '));
  const scope = asked.join(' ');
  const now = Math.floor(Date.now() / 1000);
  const accessToken = await new SignJWT({ scope, client_id: client.clientId, act: { sub: client.clientId } })
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: signingKey.kid })
    .setIssuer(issuer)
    .setSubject(String(subject.sub))
    .setAudience(target)
    .setIssuedAt(now)
    .setExpirationTime(now + EXCHANGED_TTL)
    .setJti(randomUUID())
    .sign(privateKey);
  ctx.body = {
    access_token: accessToken,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: EXCHANGED_TTL,
    scope,
  };
}
provider.registerGrantType(EXCHANGE, tokenExchange, [
  'subject_token', 'subject_token_type', 'requested_token_type', 'resource', 'audience', 'scope',
]);

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
