// Soak: a constant arrival rate for a long time; errors and tail latency must stay low, nothing may leak.
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 -e RATE=50 -e DURATION=30m loadtest/soak.js
//
//   RATE (20)          requests per second (constant-arrival-rate)
//   DURATION (10m)
//   TIER (enterprise)  whose tokens: ${TIER}_TOKENS (comma-separated, round robin) or ${TIER}_TOKEN.
//                      The default tier has unlimited rates, so every request should be admitted; with a
//                      limited tier set ALLOW_429=1, or the 429s count as errors.
//   ALLOW_429 (0)      1: a well-formed 429 is an expected answer, not an error
//   ERROR_RATE (0.001) threshold on http_req_failed (5xx, timeouts, resets, and 429 unless ALLOW_429=1)
//   P99_MS (500)       threshold on the p(99) of http_req_duration
//   ECHO (1)           the upstream is tiergate's echo server: the mix includes streamed (/stream) and slow
//                      (/slow) answers, which hold concurrency slots; 0 for a real backend
//   ADMIN_URL          optional, e.g. http://127.0.0.1:9901: teardown reads /metrics (in-flight gauge)
//
// Mix: api 60 %, general 20 %, streamed 5 %, slow (50 ms) 5 %, exempt 10 %.
// Teardown checks that the quota endpoint shows no request in flight for the users (no leaked
// concurrency slot) and, with ADMIN_URL, that tiergate_inflight_requests is back to 0.

import http from 'k6/http';
import exec from 'k6/execution';
import { sleep } from 'k6';
import { Rate } from 'k6/metrics';
import { PATHS, url, tokensFor, tierOfToken, params, header, verify, quota, tooManyChecks } from './lib.js';

const RATE = parseInt(__ENV.RATE || '20', 10);
const DURATION = __ENV.DURATION || '10m';
const TIER = __ENV.TIER || 'enterprise';
const ALLOW_429 = (__ENV.ALLOW_429 || '0') === '1';
const ECHO = (__ENV.ECHO || '1') !== '0';
const TOKENS = __ENV.TOKEN ? [__ENV.TOKEN] : tokensFor(TIER);

const limited = new Rate('soak_limited');

const MIX = [
  { upTo: 0.6, cls: 'api', path: PATHS.api },
  { upTo: 0.8, cls: 'general', path: PATHS.general },
  { upTo: 0.85, cls: 'general', path: ECHO ? '/stream?chunks=3&ms=20' : PATHS.general, kind: 'stream' },
  { upTo: 0.9, cls: 'general', path: ECHO ? '/slow?ms=50' : PATHS.general, kind: 'slow' },
  { upTo: 1.0, cls: 'exempt', path: PATHS.exempt },
];

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(5, Math.ceil(RATE * 0.2)),
      maxVUs: Math.max(50, RATE * 2),
    },
  },
  thresholds: {
    http_req_failed: [`rate<${__ENV.ERROR_RATE || '0.001'}`],
    http_req_duration: [`p(99)<${__ENV.P99_MS || '500'}`],
    checks: ['rate>0.999'],
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

http.setResponseCallback(ALLOW_429 ? http.expectedStatuses(200, 429) : http.expectedStatuses(200));

export function setup() {
  if (TOKENS.length === 0) {
    throw new Error(`no token: set ${TIER.toUpperCase()}_TOKEN or ${TIER.toUpperCase()}_TOKENS (or TOKEN)`);
  }
  console.log(`soak: ${RATE} req/s for ${DURATION}, ${TOKENS.length} ${TIER} user(s), 429 ${ALLOW_429 ? 'allowed' : 'is an error'}`);
}

export default function () {
  const token = TOKENS[exec.scenario.iterationInTest % TOKENS.length];
  const r = Math.random();
  const m = MIX.find((x) => r < x.upTo) || MIX[MIX.length - 1];
  const tags = { tier: TIER, class: m.cls, kind: m.kind || m.cls };
  const res = http.get(url(m.path), params(token, tags));
  if (m.cls !== 'exempt') limited.add(res.status === 429, tags);
  const sets = [
    {
      status: (x) => x.status === 200 || (ALLOW_429 && x.status === 429 && m.cls !== 'exempt'),
      'X-Content-Type-Options nosniff': (x) => header(x, 'X-Content-Type-Options') === 'nosniff',
    },
  ];
  if (res.status === 429) sets.push(tooManyChecks(tierOfToken(token)));
  if (m.kind === 'stream' && res.status === 200) sets.push({ 'stream: whole body': (x) => String(x.body).indexOf('chunk 2') >= 0 });
  verify(res, sets, tags);
}

export function teardown() {
  sleep(1); // let the last bodies end
  for (const token of TOKENS.slice(0, 10)) {
    const q = quota(token, { phase: 'teardown' });
    verify(q.res, [{ 'no concurrency slot left in flight': () => q.body && (!q.body.concurrent || q.body.concurrent.in_flight === 0) }], {
      phase: 'teardown',
    });
  }
  if (__ENV.ADMIN_URL) {
    const res = http.get(`${__ENV.ADMIN_URL.replace(/\/+$/, '')}/metrics`, { tags: { phase: 'teardown' } });
    const m = /^tiergate_inflight_requests(?:\{[^}]*\})? (\S+)$/m.exec(String(res.body));
    verify(res, [{ 'metrics: tiergate_inflight_requests back to 0': () => m !== null && parseFloat(m[1]) === 0 }], {
      phase: 'teardown',
    });
  }
}
