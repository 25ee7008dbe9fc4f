// A real OpenID provider for the e2e tests: the npm `oidc-provider` (a certified implementation) on loopback.
//
//   node oidc_idp.mjs --port PORT --resource URL [--other-resource URL]
//
// * client-credentials clients from $IDP_CLIENTS, a JSON list of
//   {"client_id", "client_secret", "groups": [...], "scope": "space separated scopes it may ask for"};
// * JWT access tokens (RFC 9068, typ at+jwt, RS256) through resource indicators (RFC 8707): a token
//   requested with `resource=<--resource>` has that audience and the scopes the resource allows
//   (tools:read, math:write); `--other-resource` is a second resource server, for "a token for another
//   resource"; any other resource is refused (invalid_target);
// * each token carries the client's `groups` claim (sub = client_id for client credentials);
// * its signing key is generated at start and published at the jwks_uri of its discovery document.
//
// Prints one line of JSON, {"issuer": "..."}, once it listens; exits on SIGTERM.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    resource: { type: 'string' },
    'other-resource': { type: 'string', default: 'https://api.other.test/mcp' },
  },
});
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = ['tools:read', 'math:write'];

const clients = JSON.parse(process.env.IDP_CLIENTS || '[]');
const groupsOf = new Map(clients.map((c) => [c.client_id, c.groups || []]));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `e2e-${randomUUID().slice(0, 8)}`, alg: 'RS256', use: 'sig' };

const resources = {
  [args.resource]: SCOPES.join(' '),
  [args['other-resource']]: 'tools:read',
};

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: c.scope || SCOPES.join(' '),
  })),
  jwks: { keys: [signingKey] },
  scopes: ['openid', ...SCOPES],
  features: {
    devInteractions: { enabled: false },
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
  extraTokenClaims: (ctx, token) => ({ groups: groupsOf.get(token.clientId) || [] }),
  ttl: { ClientCredentials: 300 },
});
provider.on('server_error', (ctx, err) => console.error('idp server_error', err));

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
