// A real OpenID Connect provider (panva/oidc-provider) for the ByteOr test-suite.
//
// Driven by tests/oidc.py; never meant for anything but tests. Configuration comes from the
// environment:
//
//   OIDC_PORT          port to listen on (127.0.0.1 only); 0 picks a free one
//   OIDC_ISSUER        the Issuer Identifier (an origin such as http://127.0.0.1:8123); it may
//                      differ from the listen address when a proxy sits in front, and every URL
//                      the provider generates (discovery, redirects, form actions) uses it
//   OIDC_CLIENTS       JSON list of client metadata objects; the extra key `id_token_ttl`
//                      (seconds) overrides OIDC_ID_TOKEN_TTL for that client
//   OIDC_ID_TOKEN_TTL  ID Token lifetime in seconds (default 3600)
//   OIDC_CONFORM_ID_TOKEN_CLAIMS  "1": scope claims (email, name) only at the userinfo endpoint,
//                      as oidc-provider does by default; "0" (default here): also in the ID Token
//   OIDC_DEBUG         when "1", keep oidc-provider's development NOTICE lines (on stderr)
//
// Accounts: any login id signs in. Its claims are sub = the id, email = the id when it contains
// "@" else `${id}@example.com`, email_verified = true, name = the id. `PUT /__test/accounts/:sub`
// with a JSON object holding any of email, email_verified, name overrides them (204).
//
// Once listening it prints exactly one line `READY <url>` on stdout; everything else (warnings,
// errors) goes to stderr. SIGTERM / SIGINT close the server and exit 0.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import process from 'node:process';

// oidc-provider prints development NOTICEs with console.info (stdout). stdout carries the READY
// protocol only, so route those to stderr, and drop them unless asked for.
console.info = (...args) => {
  const [first] = args;
  if (typeof first === 'string' && first.startsWith('oidc-provider NOTICE:') && process.env.OIDC_DEBUG !== '1') {
    return;
  }
  console.error(...args);
};

const { default: Provider, errors } = await import('oidc-provider');

function fail(message) {
  console.error(`provider.mjs: ${message}`);
  process.exit(2);
}

function intFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return value;
}

const port = intFromEnv('OIDC_PORT', 0);
const defaultIdTokenTTL = intFromEnv('OIDC_ID_TOKEN_TTL', 3600);

let clientsInput;
try {
  clientsInput = JSON.parse(process.env.OIDC_CLIENTS ?? '[]');
} catch (err) {
  fail(`OIDC_CLIENTS is not valid JSON: ${err.message}`);
}
if (!Array.isArray(clientsInput)) fail('OIDC_CLIENTS must be a JSON list of client metadata objects');

// Per-client ID Token lifetimes; the key is ours, not client metadata, so strip it.
const idTokenTTLByClient = new Map();
const clients = clientsInput.map((input) => {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) fail('every OIDC_CLIENTS entry must be an object');
  const { id_token_ttl: ttl, ...metadata } = input;
  if (ttl !== undefined && ttl !== null) {
    if (!Number.isInteger(ttl) || ttl < 1) fail(`id_token_ttl of client ${metadata.client_id} must be a positive integer`);
    idTokenTTLByClient.set(metadata.client_id, ttl);
  }
  return {
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...metadata,
  };
});

// Signing keys, fresh for every run: RS256 (the default ID Token alg) and ES256.
function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`,
    use: 'sig',
    alg,
  };
}
const jwks = {
  keys: [
    signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
    signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
  ],
};

// Accounts: defaults derived from the login id, overridable at runtime.
const accountOverrides = new Map();
const OVERRIDABLE = new Set(['email', 'email_verified', 'name']);

function accountClaims(sub) {
  return {
    sub,
    email: sub.includes('@') ? sub : `${sub}@example.com`,
    email_verified: true,
    name: sub,
    ...accountOverrides.get(sub),
  };
}

if (!process.env.OIDC_ISSUER && port === 0) fail('set OIDC_ISSUER or a non-zero OIDC_PORT');
const issuer = process.env.OIDC_ISSUER || `http://127.0.0.1:${port}`;
let issuerURL;
try {
  issuerURL = new URL(issuer);
} catch {
  fail(`OIDC_ISSUER is not a URL: ${issuer}`);
}
if (issuerURL.pathname !== '/' || issuer.endsWith('/')) {
  fail(`OIDC_ISSUER must be an origin without a path or trailing slash, got ${issuer}`);
}

const provider = new Provider(issuer, {
  clients,
  jwks,
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url'), crypto.randomBytes(32).toString('base64url')],
  },
  scopes: ['openid', 'email', 'profile'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Put the scope claims (email, name, ...) in the ID Token even though an access token is
  // issued too, unless OIDC_CONFORM_ID_TOKEN_CLAIMS=1 keeps them for the userinfo endpoint only.
  conformIdTokenClaims: process.env.OIDC_CONFORM_ID_TOKEN_CLAIMS === '1',
  // PKCE (S256, the only method oidc-provider 9 accepts) is required of every client, confidential
  // ones included; a code_verifier that does not match makes the token request fail with
  // invalid_grant.
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: (ctx, token, client) => idTokenTTLByClient.get(client.clientId) ?? defaultIdTokenTTL,
    Interaction: 3600,
    Session: 3600,
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return accountClaims(id);
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    const escape = (v) => String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>oidc-provider error</title></head><body>${
      Object.entries(out).map(([k, v]) => `<pre><strong>${escape(k)}</strong>: ${escape(v)}</pre>`).join('')
    }</body></html>`;
  },
});

// Trust X-Forwarded-*; the wrapper below sets them from the issuer on every request, so the
// generated URLs follow the issuer whichever address the request came in on.
provider.proxy = true;

provider.on('server_error', (ctx, err) => {
  console.error('server_error', ctx.method, ctx.path, err);
});
for (const event of ['authorization.error', 'grant.error', 'userinfo.error', 'introspection.error', 'jwks.error', 'discovery.error']) {
  provider.on(event, (ctx, err) => {
    if (err instanceof errors.OIDCProviderError && err.expose) {
      console.error(`${event}: ${err.error} (${err.error_description ?? ''})`);
    } else {
      console.error(event, err);
    }
  });
}

const providerCallback = provider.callback();
const ADMIN_ACCOUNTS = /^\/__test\/accounts\/([^/?]+)$/;

function respond(res, status, body) {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const payload = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }).end(payload);
}

async function readJSON(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

async function adminPutAccount(req, res, sub) {
  let body;
  try {
    body = await readJSON(req);
  } catch (err) {
    respond(res, 400, { error: `body is not JSON: ${err.message}` });
    return;
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    respond(res, 400, { error: 'body must be a JSON object' });
    return;
  }
  const unknown = Object.keys(body).filter((key) => !OVERRIDABLE.has(key));
  if (unknown.length) {
    respond(res, 400, { error: `unknown claims: ${unknown.join(', ')}` });
    return;
  }
  accountOverrides.set(sub, { ...accountOverrides.get(sub), ...body });
  respond(res, 204);
}

const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  const admin = ADMIN_ACCOUNTS.exec(path);
  if (admin) {
    if (req.method !== 'PUT') {
      respond(res, 405, { error: 'use PUT' });
      return;
    }
    adminPutAccount(req, res, decodeURIComponent(admin[1])).catch((err) => {
      console.error('admin endpoint failed', err);
      if (!res.headersSent) respond(res, 500, { error: String(err) });
    });
    return;
  }
  req.headers['x-forwarded-host'] = issuerURL.host;
  req.headers['x-forwarded-proto'] = issuerURL.protocol.slice(0, -1);
  providerCallback(req, res);
});

server.on('error', (err) => {
  console.error('provider.mjs: server error', err);
  process.exit(1);
});

server.listen(port, '127.0.0.1', () => {
  const { port: actual } = server.address();
  process.stdout.write(`READY http://127.0.0.1:${actual}\n`);
});

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
