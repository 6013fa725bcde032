// A realistic free / pro / enterprise mix: one constant-arrival-rate scenario per tier, many users per tier.
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 loadtest/tiers.js
//
// Users: every token of a tier is one user. `FREE_TOKENS` / `PRO_TOKENS` / `ENTERPRISE_TOKENS` take a
// comma-separated list (mint them with `tiergate token --sub user-N --tier free`, see loadtest/README.md);
// without them the single FREE_TOKEN / PRO_TOKEN / ENTERPRISE_TOKEN is the only user of its tier.
// Each iteration is one request by the next user of its tier, round robin (constant-arrival-rate hands
// iterations to whichever virtual user is idle, so tying a token to a VU would make per-user rates
// uneven; round robin keeps every user at exactly its per-user rate).
//
// Rates are per user, so the offered load grows with the number of tokens:
//   FREE_RPM (default 6), PRO_RPM (30), ENTERPRISE_RPM (120)   requests per minute per user
//   DURATION (default 2m)
//   MIX (default general:35,api:55,data_export:2,exempt:8)      share of requests per route class
// At the defaults no user exceeds its tier's per-minute api budget; a free user spends its 100/hour after
// ~17 min and its 5 exports/day after ~40 min, a pro user its 1000/hour after ~33 min: longer runs show
// the 429 ratio of those tiers rise (setup() prints when each tier's users should start being limited).
//
// Thresholds (per tier, from the `tier` tag):
//   tiergate_limited{tier:T}   share of limited-class requests answered 429:
//                              free < FREE_MAX_429 (0.05), pro < PRO_MAX_429 (0.01), enterprise == 0
//   http_req_duration{tier:T}  p(95) < FREE_P95_MS / PRO_P95_MS / ENTERPRISE_P95_MS (default P95_MS, 300)
//   http_req_failed            < 1% (429 is an expected status, so this counts errors only)
//   checks                     > 99% (statuses, well-formed 429s, security and rate-limit headers)

import http from 'k6/http';
import exec from 'k6/execution';
import { Rate, Counter } from 'k6/metrics';
import {
  PATHS,
  TIERS,
  UNLIMITED_TIERS,
  RATE_LIMIT_HEADERS,
  url,
  tokensFor,
  requireTokens,
  tierOfToken,
  params,
  header,
  verify,
  quota,
  tooManyChecks,
} from './lib.js';

const DURATION = __ENV.DURATION || '2m';
const RPM = {
  free: parseFloat(__ENV.FREE_RPM || '6'),
  pro: parseFloat(__ENV.PRO_RPM || '30'),
  enterprise: parseFloat(__ENV.ENTERPRISE_RPM || '120'),
};
const MAX_429 = {
  free: __ENV.FREE_MAX_429 || '0.05',
  pro: __ENV.PRO_MAX_429 || '0.01',
};
const P95 = __ENV.P95_MS || '300';

function parseMix(s) {
  const mix = [];
  let total = 0;
  for (const part of s.split(',')) {
    const [cls, w] = part.split(':').map((x) => x.trim());
    if (!PATHS[cls] || cls === 'quota') throw new Error(`MIX: unknown class ${cls} (general, api, data_export, exempt)`);
    total += parseFloat(w);
    mix.push({ cls, upTo: total });
  }
  return mix.map((m) => ({ cls: m.cls, upTo: m.upTo / total }));
}
const MIX = parseMix(__ENV.MIX || 'general:35,api:55,data_export:2,exempt:8');

const limited = new Rate('tiergate_limited'); // 429 share of limited-class requests, tagged tier + class
const by429 = new Counter('tiergate_429');

const USERS = {};
for (const t of TIERS) USERS[t] = tokensFor(t);

function scenario(tier) {
  const users = Math.max(1, USERS[tier].length);
  const perMinute = Math.max(1, Math.round(RPM[tier] * users));
  const perSecond = perMinute / 60;
  return {
    executor: 'constant-arrival-rate',
    exec: 'run',
    rate: perMinute,
    timeUnit: '1m',
    duration: DURATION,
    preAllocatedVUs: Math.max(2, Math.ceil(perSecond * 0.2)),
    maxVUs: Math.max(10, Math.ceil(perSecond * 2)),
    tags: { tier },
    env: { TIER: tier },
  };
}

const scenarios = {};
const thresholds = {
  http_req_failed: ['rate<0.01'],
  checks: ['rate>0.99'],
};
for (const t of TIERS) {
  if (!(RPM[t] > 0)) continue;
  scenarios[t] = scenario(t);
  thresholds[`http_req_duration{tier:${t}}`] = [`p(95)<${__ENV[`${t.toUpperCase()}_P95_MS`] || P95}`];
  thresholds[`tiergate_limited{tier:${t}}`] = UNLIMITED_TIERS.includes(t) ? ['rate==0'] : [`rate<${MAX_429[t] || '0.05'}`];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

http.setResponseCallback(http.expectedStatuses(200, 429));

export function setup() {
  requireTokens(TIERS.filter((t) => RPM[t] > 0));
  const share = (cls) => {
    let prev = 0;
    for (const m of MIX) {
      if (m.cls === cls) return m.upTo - prev;
      prev = m.upTo;
    }
    return 0;
  };
  const limitedShare = 1 - share('exempt');
  for (const t of TIERS) {
    if (!(RPM[t] > 0)) continue;
    const q = quota(USERS[t][0], { tier: t }).body;
    const notes = [];
    for (const w of (q && q.windows) || []) {
      const cls = w.name === 'minute' ? 'api' : w.name === 'export_day' ? 'data_export' : null;
      const perMin = RPM[t] * (cls ? share(cls) : limitedShare); // one user's use of this window per minute
      if (perMin <= 0) continue;
      if (perMin * (w.window_seconds / 60) <= w.limit) continue; // sustainable
      notes.push(`${w.name} (${w.limit}/${w.window_seconds}s) full after ~${(w.limit / perMin).toFixed(1)} min`);
    }
    console.log(
      `${t}: ${USERS[t].length} user(s) x ${RPM[t]} req/min; ` + (notes.length ? `expect 429s: ${notes.join(', ')}` : 'within every window'),
    );
  }
}

export function run() {
  const tier = __ENV.TIER;
  const users = USERS[tier];
  const token = users[exec.scenario.iterationInTest % users.length];
  const r = Math.random();
  const cls = (MIX.find((m) => r < m.upTo) || MIX[MIX.length - 1]).cls;
  const tags = { tier, class: cls };
  const res = http.get(url(PATHS[cls]), params(token, tags));
  if (res.status === 429) by429.add(1, tags);
  if (cls !== 'exempt') limited.add(res.status === 429, tags);

  const expectedTier = tierOfToken(token);
  const sets = [
    {
      'status 200 or 429': (x) => x.status === 200 || (x.status === 429 && cls !== 'exempt'),
      'X-Content-Type-Options nosniff': (x) => header(x, 'X-Content-Type-Options') === 'nosniff',
    },
  ];
  if (res.status === 429) {
    sets.push(tooManyChecks(expectedTier));
  } else if (res.status === 200) {
    const want = cls !== 'exempt' && !UNLIMITED_TIERS.includes(expectedTier) && RATE_LIMIT_HEADERS !== 'none';
    sets.push({
      'rate-limit headers only where limited': (x) =>
        (header(x, 'X-RateLimit-Limit') !== undefined || header(x, 'RateLimit') !== undefined) === want,
    });
  }
  verify(res, sets, tags);
}
