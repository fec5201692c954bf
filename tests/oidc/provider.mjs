// The OpenID provider of the OIDC tests: the real `oidc-provider` (an OpenID
// Certified implementation), configured from a JSON file the test writes:
//
//   { "port": 0, "jwks": { "keys": [private JWKs] }, "clients": [...],
//     "accounts": { "alice": { "preferred_username": "alice", ... } },
//     "id_token_ttl": 3600 }
//
// It listens on 127.0.0.1 (port 0: any free port) and prints
// `listening PORT` once it serves, so that the test waits for that line,
// never for a time. The issuer is `http://127.0.0.1:PORT`.
//
// Sign-in: an authorization request with a `login_hint` naming an account
// signs that account in without a page (the tests' programmatic clients);
// otherwise a one-field form asks for the account (the browser test).
// Consent is never asked: every client here is first-party, so the grant
// covers the scopes requested.

import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts ?? {};

const server = http.createServer();
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: config.clients,
    jwks: config.jwks,
    async findAccount(ctx, id) {
      const claims = accounts[id];
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ ...claims, sub: id }) };
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'ci'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
      // What CI systems put in their workload tokens.
      ci: ['repository', 'ref', 'event_name', 'project_path', 'ref_protected'],
    },
    // Requested claims go into the ID token itself, as CI tokens carry them.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(ctx.oidc.params.scope ?? 'openid');
      await grant.save();
      return grant;
    },
    ttl: { IdToken: config.id_token_ttl ?? 3600 },
    cookies: { keys: ['portcullis-test-cookies'] },
    enabledJWA: { idTokenSigningAlgValues: ['ES256', 'RS256'] },
  });

  const login = async (req, res, accountId) => {
    if (!accounts[accountId]) {
      res.statusCode = 400;
      res.end('unknown account');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId } });
  };

  const handler = provider.callback();
  server.on('request', async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (!match) {
      handler(req, res);
      return;
    }
    try {
      if (match[2] && req.method === 'POST') {
        let body = '';
        for await (const chunk of req) body += chunk;
        await login(req, res, new URLSearchParams(body).get('login') ?? '');
        return;
      }
      const details = await provider.interactionDetails(req, res);
      const hint = details.params.login_hint;
      if (hint) {
        await login(req, res, hint);
        return;
      }
      res.setHeader('Content-Type', 'text/html; charset=utf-8');
      res.end(`<!doctype html><title>Test provider sign-in</title>
<form method="post" action="/interaction/${details.uid}/login">
<label>Account <input id="login" name="login" autofocus></label>
<button id="submit" type="submit">Sign in</button></form>`);
    } catch (e) {
      res.statusCode = 400;
      res.end(String(e));
    }
  });
  console.log(`listening ${port}`);
});
