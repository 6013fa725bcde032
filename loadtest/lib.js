// Shared helpers for the tiergate k6 scripts (smoke.js, tiers.js, burst.js, soak.js).
//
// Environment (k6 `-e NAME=value`, or exported in the shell):
//   BASE_URL            tiergate's data plane, default http://127.0.0.1:8080 (what `tiergate demo` listens on)
//   FREE_TOKEN, PRO_TOKEN, ENTERPRISE_TOKEN
//                       one bearer token per tier (`tiergate demo` prints them; `tiergate token` mints them)
//   FREE_TOKENS, PRO_TOKENS, ENTERPRISE_TOKENS
//                       optional comma-separated lists (one token per simulated user); win over *_TOKEN
//   FREE_TOKENS_FILE, PRO_TOKENS_FILE, ENTERPRISE_TOKENS_FILE
//                       optional files with one token per line (absolute paths); win over both
//   ENVIRONMENT         development (the demo: no HSTS, X-Frame-Options SAMEORIGIN) | production | staging
//   RATE_LIMIT_HEADERS  both (default) | legacy | ietf | none: the deployment's `headers.rate_limit`
//   ANONYMOUS_TIER      tier of callers without a token (default free)
//   DEFAULT_TIER        tier of a token without a tier claim (default free)
//   UNLIMITED_TIERS     tiers whose rate windows are all -1 (default enterprise)

import http from 'k6/http';
import { check } from 'k6';
import encoding from 'k6/encoding';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const TIERS = ['free', 'pro', 'enterprise'];
export const ANONYMOUS_TIER = __ENV.ANONYMOUS_TIER || 'free';
export const DEFAULT_TIER = __ENV.DEFAULT_TIER || 'free';
export const UNLIMITED_TIERS = splitList(__ENV.UNLIMITED_TIERS === undefined ? 'enterprise' : __ENV.UNLIMITED_TIERS);
export const ENVIRONMENT = (__ENV.ENVIRONMENT || 'development').toLowerCase();
export const RATE_LIMIT_HEADERS = (__ENV.RATE_LIMIT_HEADERS || 'both').toLowerCase();

// Paths per route class of the default config.toml (first matching prefix wins).
export const PATHS = {
  general: __ENV.GENERAL_PATH || '/dashboard',
  api: __ENV.API_PATH || '/api/v1/items',
  data_export: __ENV.EXPORT_PATH || '/api/v1/export/report.csv',
  exempt: __ENV.EXEMPT_PATH || '/health',
  quota: '/_tiergate/quota',
};

export function splitList(s) {
  return String(s || '')
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}

export function url(path) {
  return BASE_URL + path;
}

/** The single token of a tier (`FREE_TOKEN` ...), or the first of `FREE_TOKENS`; '' when neither is set. */
export function tokenFor(tier) {
  const up = tier.toUpperCase();
  return __ENV[`${up}_TOKEN`] || tokensFor(tier)[0] || '';
}

// `FREE_TOKENS_FILE` etc.: one token per line (or comma-separated), for lists too long for the environment.
// Read here, in the init context (k6's open() works nowhere else); give an absolute path.
const FILE_TOKENS = {};
for (const t of TIERS) {
  const f = __ENV[`${t.toUpperCase()}_TOKENS_FILE`];
  if (f) FILE_TOKENS[t] = splitList(open(f).replace(/\s+/g, ','));
}

/** Every token of a tier: `FREE_TOKENS_FILE`, else `FREE_TOKENS` (comma-separated), else `[FREE_TOKEN]`, else []. */
export function tokensFor(tier) {
  const up = tier.toUpperCase();
  if (FILE_TOKENS[tier] && FILE_TOKENS[tier].length > 0) return FILE_TOKENS[tier];
  const many = splitList(__ENV[`${up}_TOKENS`]);
  if (many.length > 0) return many;
  return __ENV[`${up}_TOKEN`] ? [__ENV[`${up}_TOKEN`]] : [];
}

/** Throws (k6 then exits non-zero) when a tier has no token, naming the variables to set. */
export function requireTokens(tiers) {
  const missing = tiers.filter((t) => tokensFor(t).length === 0);
  if (missing.length > 0) {
    throw new Error(
      `no token for tier(s) ${missing.join(', ')}: set ${missing.map((t) => t.toUpperCase() + '_TOKEN').join(', ')} ` +
        '(printed by `tiergate demo`, or minted with `tiergate token --sub ID --tier TIER`)',
    );
  }
}

/** Claims of a JWT, without verifying it (to know which sub/tier tiergate should derive). */
export function claims(token) {
  try {
    const part = String(token).split('.')[1];
    return JSON.parse(encoding.b64decode(part, 'rawurl', 's'));
  } catch (e) {
    return {};
  }
}

/** The tier tiergate should give a token: its `tier` claim when it names a known tier, else DEFAULT_TIER. */
export function tierOfToken(token) {
  const t = claims(token).tier;
  const known = splitList(__ENV.KNOWN_TIERS || TIERS.join(','));
  return typeof t === 'string' && known.includes(t) ? t : DEFAULT_TIER;
}

/** Request headers for a caller: `Authorization: Bearer <token>` unless token is empty (anonymous). */
export function authHeaders(token, extra) {
  const h = Object.assign({}, extra || {});
  if (token) h['Authorization'] = `Bearer ${token}`;
  return h;
}

/** k6 request params: auth headers + tags (tier, class, ...). */
export function params(token, tags, extraHeaders) {
  return { headers: authHeaders(token, extraHeaders), tags: Object.assign({}, tags || {}) };
}

/** A response header, case-insensitively (k6 canonicalises names, e.g. `X-Ratelimit-Limit`); undefined if absent. */
export function header(res, name) {
  if (!res || !res.headers) return undefined;
  const want = name.toLowerCase();
  for (const k of Object.keys(res.headers)) {
    if (k.toLowerCase() === want) return res.headers[k];
  }
  return undefined;
}

export function hasHeader(res, name) {
  return header(res, name) !== undefined;
}

function intHeader(res, name) {
  const v = header(res, name);
  return v !== undefined && /^\d+$/.test(v) ? parseInt(v, 10) : NaN;
}

export function json(res) {
  try {
    return res.json();
  } catch (e) {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------
// Check sets: objects of { 'check name': (res) => bool }, merged and passed to verify().

/** Security headers that must be on every response (errors and exempt routes included). */
export function securityChecks() {
  const production = ENVIRONMENT !== 'development';
  return {
    'security: X-Content-Type-Options nosniff': (r) => header(r, 'X-Content-Type-Options') === 'nosniff',
    'security: Content-Security-Policy': (r) => (header(r, 'Content-Security-Policy') || '').length > 0,
    'security: X-Frame-Options': (r) => header(r, 'X-Frame-Options') === (production ? 'DENY' : 'SAMEORIGIN'),
    'security: Referrer-Policy': (r) => (header(r, 'Referrer-Policy') || '').length > 0,
    'security: HSTS only outside development': (r) => hasHeader(r, 'Strict-Transport-Security') === production,
  };
}

const LEGACY = ['X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset', 'X-RateLimit-Window'];
const IETF_RE = /^"([^"]+)";r=(\d+);t=(\d+)$/;

/** Rate-limit headers present and consistent (binding window named in both sets). */
export function rateLimitPresentChecks() {
  const legacy = RATE_LIMIT_HEADERS === 'both' || RATE_LIMIT_HEADERS === 'legacy';
  const ietf = RATE_LIMIT_HEADERS === 'both' || RATE_LIMIT_HEADERS === 'ietf';
  const c = {};
  if (legacy) {
    c['ratelimit: X-RateLimit-* present'] = (r) => LEGACY.every((h) => hasHeader(r, h));
    c['ratelimit: 0 <= Remaining <= Limit'] = (r) => {
      const lim = intHeader(r, 'X-RateLimit-Limit');
      const rem = intHeader(r, 'X-RateLimit-Remaining');
      return rem >= 0 && rem <= lim;
    };
    c['ratelimit: Reset is a Unix time'] = (r) => intHeader(r, 'X-RateLimit-Reset') > 1500000000;
  }
  if (ietf) {
    c['ratelimit: RateLimit-Policy + RateLimit present'] = (r) =>
      hasHeader(r, 'RateLimit-Policy') && IETF_RE.test(header(r, 'RateLimit') || '');
  }
  if (legacy && ietf) {
    c['ratelimit: RateLimit names the X-RateLimit-Window'] = (r) => {
      const m = IETF_RE.exec(header(r, 'RateLimit') || '');
      const w = header(r, 'X-RateLimit-Window');
      return (
        m !== null &&
        m[1] === w &&
        parseInt(m[2], 10) === intHeader(r, 'X-RateLimit-Remaining') &&
        (header(r, 'RateLimit-Policy') || '').indexOf(`"${w}";`) >= 0
      );
    };
  }
  return c;
}

/** No rate-limit headers. `allowConcurrentPolicy`: an unlimited tier with a concurrency cap may still
 *  announce only `"concurrent"` in RateLimit-Policy. */
export function rateLimitAbsentChecks(allowConcurrentPolicy) {
  return {
    'no ratelimit: X-RateLimit-* and RateLimit absent': (r) =>
      LEGACY.every((h) => !hasHeader(r, h)) && !hasHeader(r, 'RateLimit'),
    'no ratelimit: RateLimit-Policy absent (or only "concurrent")': (r) => {
      const p = header(r, 'RateLimit-Policy');
      if (p === undefined) return true;
      if (!allowConcurrentPolicy) return false;
      return p.split(',').every((item) => item.trim().startsWith('"concurrent";'));
    },
  };
}

/** A 429 from tiergate: problem+json body, Retry-After, rate-limit headers describing the full window. */
export function tooManyChecks(expectedTier) {
  const c = {
    '429: status 429': (r) => r.status === 429,
    '429: problem+json': (r) => (header(r, 'Content-Type') || '').indexOf('application/problem+json') === 0,
    '429: type quota-exceeded': (r) =>
      (json(r) || {}).type === 'https://iana.org/assignments/http-problem-types#quota-exceeded',
    '429: violated-policies non-empty': (r) => {
      const v = (json(r) || {})['violated-policies'];
      return Array.isArray(v) && v.length > 0;
    },
    '429: tier in body': (r) => (json(r) || {}).tier === expectedTier,
    '429: Retry-After >= 1 and = retry_after': (r) => {
      const ra = intHeader(r, 'Retry-After');
      const body = (json(r) || {}).retry_after;
      return ra >= 1 && Number.isInteger(body) && Math.abs(body - ra) <= 1;
    },
  };
  if (RATE_LIMIT_HEADERS === 'both' || RATE_LIMIT_HEADERS === 'legacy') {
    c['429: X-RateLimit-Remaining 0, window among violated'] = (r) => {
      const v = (json(r) || {})['violated-policies'] || [];
      return intHeader(r, 'X-RateLimit-Remaining') === 0 && v.indexOf(header(r, 'X-RateLimit-Window')) >= 0;
    };
  }
  return c;
}

/** What the echo upstream saw: identity headers set by tiergate (client-sent copies replaced). */
export function upstreamIdentityChecks(expectedUser, expectedTier) {
  const seen = (r, name) => {
    const h = ((json(r) || {}).headers || {})[name];
    return Array.isArray(h) ? h : h === undefined ? [] : [h];
  };
  return {
    'upstream: X-User-Id set by tiergate': (r) => {
      const v = seen(r, 'x-user-id');
      return expectedUser === null ? v.length === 0 : v.length === 1 && v[0] === expectedUser;
    },
    'upstream: X-User-Tier set by tiergate': (r) => {
      const v = seen(r, 'x-user-tier');
      return expectedTier === null ? v.length === 0 : v.length === 1 && v[0] === expectedTier;
    },
  };
}

const MAX_WARNINGS = parseInt(__ENV.MAX_WARNINGS || '20', 10);
let warnings = 0;

/** Runs every check of `sets` on `res` in one k6 check(); logs the failed ones with the request
 *  (at most MAX_WARNINGS lines per virtual user, default 20). */
export function verify(res, sets, tags) {
  const all = Object.assign({}, ...sets);
  let failed = [];
  const wrapped = {};
  for (const name of Object.keys(all)) {
    wrapped[name] = (r) => {
      let ok = false;
      try {
        ok = !!all[name](r);
      } catch (e) {
        ok = false;
      }
      if (!ok) failed.push(name);
      return ok;
    };
  }
  const ok = check(res, wrapped, tags);
  if (!ok && warnings++ < MAX_WARNINGS) {
    const req = res && res.request ? `${res.request.method} ${res.request.url}` : '?';
    console.warn(`failed [${failed.join('; ')}] on ${req} -> ${res ? res.status : '?'} ${res ? String(res.body).slice(0, 300) : ''}`);
  }
  return ok;
}

/** GET /_tiergate/quota for a caller (consumes nothing). Returns the parsed JSON or undefined. */
export function quota(token, tags) {
  const res = http.get(url(PATHS.quota), params(token, Object.assign({ class: 'quota' }, tags || {})));
  return { res, body: res.status === 200 ? json(res) : undefined };
}

/** Windows of a quota document that count requests of a class (by the README's window names). */
export function windowsFor(q, cls) {
  const ws = (q && Array.isArray(q.windows) && q.windows) || [];
  return ws.filter((w) => {
    if (w.name === 'minute') return cls === 'api';
    if (w.name === 'export_day') return cls === 'data_export';
    return true; // hour, day and custom limits (custom ones may be narrower; then this is conservative)
  });
}

/** Fewest remaining among the windows that count a class (Infinity when none applies). */
export function remainingFor(q, cls) {
  return windowsFor(q, cls).reduce((m, w) => Math.min(m, w.remaining), Infinity);
}
