// Smoke test: a few seconds, one virtual user, every tier x every route class, every header rule.
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 loadtest/smoke.js   (FREE_TOKEN etc. exported)
//
// Iterations 0..ROUNDS-1 ("tour"): free, pro, enterprise and anonymous callers each call a general, an api
// and an exempt path and the quota endpoint (exports once per run: free has only 5 a day); two bad tokens
// get 401. The last iteration ("limits") spends the free user's api budget until the 429, checks that a
// refused request consumed nothing, then fills the pro user's concurrency cap with slow requests.
//
// Budgets: setup() reads every caller's quota. A caller whose windows have room for the tour is "fresh" and
// must get 200 everywhere; otherwise (the smoke was run against the same tiergate a moment ago) a 429 is
// accepted, provided it is a well-formed 429. On a fresh `tiergate demo` everything is exact.
//
// ECHO=0 when the upstream is not tiergate's echo server (a real backend): the body-based checks (identity
// headers seen by the upstream) and the slow-request concurrency check are skipped, and any upstream
// status below 500 counts as forwarded.

import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  PATHS,
  ANONYMOUS_TIER,
  UNLIMITED_TIERS,
  url,
  tokenFor,
  requireTokens,
  claims,
  tierOfToken,
  params,
  header,
  json,
  verify,
  quota,
  remainingFor,
  securityChecks,
  rateLimitPresentChecks,
  rateLimitAbsentChecks,
  tooManyChecks,
  upstreamIdentityChecks,
} from './lib.js';
import encoding from 'k6/encoding';

const ROUNDS = 3;
const ECHO = (__ENV.ECHO || '1') !== '0';
const SLOW_MS = parseInt(__ENV.SLOW_MS || '1500', 10);

const limitedSeen = new Counter('smoke_429');
const responses = new Counter('smoke_responses');

export const options = {
  scenarios: {
    smoke: { executor: 'per-vu-iterations', vus: 1, iterations: ROUNDS + 1, maxDuration: '60s' },
  },
  setupTimeout: '30s',
  // the concurrency check sends cap + 2 requests at once
  batch: 64,
  batchPerHost: 64,
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'], // 401 and 429 are expected statuses (see the response callback)
    smoke_responses: ['count>=40'], // the script really ran
  },
  summaryTrendStats: ['avg', 'p(95)', 'max'],
};

http.setResponseCallback(ECHO ? http.expectedStatuses(200, 401, 429) : http.expectedStatuses({ min: 200, max: 499 }));

// Requests each limited caller makes during the tour, per class (for the "fresh budget" decision).
const PLAN = { general: ROUNDS, api: ROUNDS, data_export: 1 };

function callers() {
  const list = ['free', 'pro', 'enterprise'].map((t) => {
    const token = tokenFor(t);
    const tier = tierOfToken(token);
    return { name: t, token, tier, user: String(claims(token).sub), limited: !UNLIMITED_TIERS.includes(tier) };
  });
  list.push({ name: 'anonymous', token: '', tier: ANONYMOUS_TIER, user: null, limited: !UNLIMITED_TIERS.includes(ANONYMOUS_TIER) });
  return list;
}

function fresh(q) {
  if (!q) return false;
  // every window must have room for the whole tour
  const need = { all: PLAN.general + PLAN.api + PLAN.data_export, minute: PLAN.api, export_day: PLAN.data_export };
  return (q.windows || []).every((w) => w.remaining >= (need[w.name] !== undefined ? need[w.name] : need.all));
}

function quotaChecks(c) {
  return {
    'quota: 200 JSON': (r) => r.status === 200 && json(r) !== undefined,
    'quota: tier': (r) => json(r).tier === c.tier,
    'quota: windows well-formed': (r) => {
      const ws = json(r).windows;
      return (
        Array.isArray(ws) &&
        ws.every(
          (w) =>
            typeof w.name === 'string' &&
            Number.isInteger(w.limit) &&
            Number.isInteger(w.window_seconds) &&
            Number.isInteger(w.remaining) &&
            Number.isInteger(w.reset) &&
            w.remaining >= 0 &&
            w.remaining <= w.limit,
        )
      );
    },
    'quota: rate windows listed only for limited tiers': (r) => (json(r).windows.length > 0) === c.limited,
    'quota: concurrent limit + in_flight': (r) => {
      const cc = json(r).concurrent;
      return cc === undefined || cc === null || (Number.isInteger(cc.limit) && Number.isInteger(cc.in_flight));
    },
  };
}

export function setup() {
  requireTokens(['free', 'pro', 'enterprise']);
  const probe = http.get(url(PATHS.exempt), { tags: { class: 'exempt', tier: 'none' } });
  if (probe.status === 0) {
    throw new Error(`tiergate is not reachable at ${url(PATHS.exempt)}: ${probe.error}`);
  }
  const strict = {};
  const exact = {};
  for (const c of callers()) {
    const q = quota(c.token, { tier: c.name });
    responses.add(1);
    verify(q.res, [quotaChecks(c), securityChecks()], { tier: c.name, class: 'quota' });
    strict[c.name] = fresh(q.body);
    // no earlier request can leave a short window during the run: counts are exact
    exact[c.name] = strict[c.name] && (q.body.windows || []).every((w) => w.window_seconds > 300 || w.remaining === w.limit);
    if (!strict[c.name]) {
      console.warn(`${c.name}: budget already partly spent (smoke run twice?): 429s will be accepted if well-formed`);
    }
  }
  return { strict, exact };
}

// One request of a limited-or-unlimited class by a caller, checked according to what came back.
function limitedCall(c, cls, strict) {
  const tags = { tier: c.name, class: cls };
  // client-sent identity headers must never reach the upstream
  const res = http.get(url(PATHS[cls]), params(c.token, tags, { 'X-User-Id': 'spoofed', 'X-User-Tier': 'enterprise' }));
  responses.add(1);
  if (res.status === 429) {
    limitedSeen.add(1, tags);
    verify(res, [{ '429 only when the budget was already spent': () => !strict && c.limited }, tooManyChecks(c.tier), securityChecks()], tags);
    return res;
  }
  const sets = [
    { [`${cls}: forwarded (200)`]: (r) => (ECHO ? r.status === 200 : r.status >= 200 && r.status < 500 && r.status !== 401) },
    securityChecks(),
    c.limited ? rateLimitPresentChecks() : rateLimitAbsentChecks(true),
  ];
  if (ECHO) {
    sets.push(upstreamIdentityChecks(c.user, c.tier));
    sets.push({ 'upstream: Server / X-Powered-By stripped': (r) => !header(r, 'Server') && !header(r, 'X-Powered-By') });
  }
  verify(res, sets, tags);
  return res;
}

function exemptCall(c) {
  const tags = { tier: c.name, class: 'exempt' };
  const res = http.get(url(PATHS.exempt), params(c.token, tags, { 'X-User-Id': 'spoofed', 'X-User-Tier': 'enterprise' }));
  responses.add(1);
  const sets = [
    { 'exempt: 200': (r) => (ECHO ? r.status === 200 : r.status >= 200 && r.status < 500) },
    securityChecks(),
    rateLimitAbsentChecks(false),
  ];
  if (ECHO) sets.push(upstreamIdentityChecks(null, null)); // no identity on exempt routes, spoofed copies removed
  verify(res, sets, tags);
}

function quotaCall(c) {
  const q = quota(c.token, { tier: c.name });
  responses.add(1);
  verify(q.res, [quotaChecks(c), securityChecks()], { tier: c.name, class: 'quota' });
  return q.body;
}

function badTokens() {
  const good = tokenFor('free');
  const parts = good.split('.');
  // flip the first character of the signature (the last one may only carry padding bits)
  const sig = parts[2];
  const tampered = `${parts[0]}.${parts[1]}.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
  const none = `${encoding.b64encode('{"alg":"none","typ":"JWT"}', 'rawurl')}.${parts[1]}.`;
  for (const [name, token] of [['garbage', 'not.a.token'], ['tampered', tampered], ['alg-none', none]]) {
    const tags = { tier: 'invalid', class: 'api', token: name };
    const res = http.get(url(PATHS.api), params(token, tags));
    responses.add(1);
    verify(
      res,
      [
        {
          '401: status': (r) => r.status === 401,
          '401: WWW-Authenticate Bearer error="invalid_token"': (r) => header(r, 'WWW-Authenticate') === 'Bearer error="invalid_token"',
          '401: problem+json': (r) => (header(r, 'Content-Type') || '').indexOf('application/problem+json') === 0,
        },
        securityChecks(),
      ],
      tags,
    );
  }
  // exempt routes skip identity altogether: a bad token is not even looked at
  const res = http.get(url(PATHS.exempt), params('not.a.token', { tier: 'invalid', class: 'exempt' }));
  responses.add(1);
  verify(res, [{ 'exempt: bad token ignored (200)': (r) => (ECHO ? r.status === 200 : r.status >= 200 && r.status < 500) }, securityChecks(), rateLimitAbsentChecks(false)], {
    tier: 'invalid',
    class: 'exempt',
  });
}

function tour(round, strict) {
  for (const c of callers()) {
    limitedCall(c, 'general', strict[c.name]);
    limitedCall(c, 'api', strict[c.name]);
    if (round === 0) limitedCall(c, 'data_export', strict[c.name]);
    exemptCall(c);
    quotaCall(c);
  }
  badTokens();
}

// Free user: api calls until the first 429; exactly the remaining budget must be admitted.
// `exact`: the short windows were empty before the run, so nothing can expire from them meanwhile.
function exhaust(c, exact) {
  const tags = { tier: c.name, class: 'api', phase: 'exhaust' };
  const before = quotaCall(c);
  const budget = remainingFor(before, 'api');
  const again = quotaCall(c);
  verify(again, [{ 'quota: reading it consumes nothing': (q) => remainingFor(q, 'api') >= budget }], tags);
  if (!Number.isFinite(budget) || budget > 200) {
    console.warn(`exhaust: ${c.name} api budget is ${budget}: skipped`);
    return;
  }
  let admitted = 0;
  let refused = null;
  let lastRemaining = Infinity;
  let decreasing = true;
  for (let i = 0; i < budget + 5 && refused === null; i++) {
    const res = http.get(url(PATHS.api), params(c.token, tags));
    responses.add(1);
    if (res.status === 200) {
      admitted++;
      const rem = parseInt(header(res, 'X-RateLimit-Remaining'), 10);
      if (!(rem < lastRemaining)) decreasing = false;
      lastRemaining = rem;
    } else {
      refused = res;
    }
  }
  verify(
    refused || { status: 0, headers: {}, body: '' },
    [
      {
        'exhaust: the budget ends in a 429': (r) => r.status === 429,
        // exact on a fresh tiergate; with older requests in the window some may expire meanwhile (more room)
        'exhaust: exactly the remaining budget admitted': () => (exact ? admitted === budget : admitted >= budget),
        'exhaust: X-RateLimit-Remaining counts down': () => decreasing,
      },
    ],
    tags,
  );
  if (refused === null || refused.status !== 429) return;
  limitedSeen.add(1, tags);
  verify(refused, [tooManyChecks(c.tier), securityChecks(), rateLimitPresentChecks()], tags);

  // all-or-nothing: a refused request consumes nothing in any window (hour/day keep their count)
  const q1 = quotaCall(c);
  const res = http.get(url(PATHS.api), params(c.token, tags));
  responses.add(1);
  const q2 = quotaCall(c);
  const hourDay = (q) => (q.windows || []).filter((w) => w.name === 'hour' || w.name === 'day');
  verify(
    res,
    [
      {
        'exhaust: still 429': (r) => r.status === 429,
        'exhaust: a refused request consumed nothing': () =>
          hourDay(q1).every((w) => {
            const after = hourDay(q2).find((x) => x.name === w.name);
            return after !== undefined && after.remaining >= w.remaining;
          }),
      },
    ],
    tags,
  );
}

// Pro user: cap + 2 slow requests at once -> exactly `cap` admitted, 2 refused on "concurrent".
function concurrency(c) {
  const tags = { tier: c.name, class: 'general', phase: 'concurrency' };
  const q = quotaCall(c);
  const cap = q && q.concurrent ? q.concurrent.limit : -1;
  const budget = remainingFor(q, 'general');
  if (!ECHO || !(cap > 0) || cap + 2 > 60 || budget < cap + 2) {
    console.warn(`concurrency: skipped (echo=${ECHO}, cap=${cap}, budget=${budget})`);
    return;
  }
  const reqs = [];
  for (let i = 0; i < cap + 2; i++) {
    reqs.push(['GET', url(`/slow?ms=${SLOW_MS}&i=${i}`), null, params(c.token, tags)]);
  }
  const res = http.batch(reqs);
  responses.add(res.length);
  const ok = res.filter((r) => r.status === 200);
  const refused = res.filter((r) => r.status === 429);
  verify(
    res,
    [
      {
        'concurrency: exactly the cap admitted': () => ok.length === cap,
        'concurrency: the rest refused (429)': () => refused.length === 2,
        'concurrency: refused on "concurrent"': () =>
          refused.every((r) => {
            const b = json(r) || {};
            return JSON.stringify(b['violated-policies']) === '["concurrent"]' && header(r, 'X-RateLimit-Window') === 'concurrent';
          }),
      },
    ],
    tags,
  );
  for (const r of refused) {
    limitedSeen.add(1, tags);
    verify(r, [tooManyChecks(c.tier), securityChecks()], tags);
  }
  // every slot is released once the responses have ended
  const after = quotaCall(c);
  verify(after, [{ 'concurrency: slots released': (a) => a && a.concurrent && a.concurrent.in_flight === 0 }], tags);
}

export default function (data) {
  const i = exec.vu.iterationInScenario;
  if (i < ROUNDS) {
    tour(i, data.strict);
    sleep(0.3);
    return;
  }
  const all = callers();
  exhaust(all.find((c) => c.name === 'free'), data.exact.free);
  concurrency(all.find((c) => c.name === 'pro'));
}
