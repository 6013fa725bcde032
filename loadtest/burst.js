// Burst: one user hammers one window; exactly the window's limit must be admitted, the rest refused.
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 loadtest/burst.js   (FREE_TOKEN exported)
//
// Defaults: the free user (FREE_TOKEN) on the api class (/api/v1/items), window "minute", 20 admitted.
//   EXPECTED  (20)        requests that must get 200 (the window's limit)
//   TIER      (free)      whose token: ${TIER}_TOKEN, or "anonymous" (no token: keyed by IP); TOKEN overrides
//   CLASS     (api)       route class hammered: general | api | data_export (path from lib.js PATHS)
//   WINDOW    (minute)    the window expected to bind: minute | hour | day | export_day | a custom name
//   REQUESTS  (3*EXPECTED) requests sent in all;  VUS (5) sent at once (free's concurrency cap is 5; more
//                         VUs add "concurrent" refusals, which change nothing: a refused request consumes nothing)
//   WAIT_FOR_FRESH (1)    setup() waits (at most the window's length) until the window is empty; 0: fail instead
//
// Counters + thresholds:
//   burst_admitted  count == EXPECTED   (200s)
//   burst_refused   count > 0           (429s on the window: the limit was reached)
//   burst_other     count == 0          (anything but 200 / 429)
//   checks          rate == 1           (well-formed 429s naming the window; burst within the window;
//                                         the quota endpoint shows the window empty afterwards)

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  PATHS,
  ANONYMOUS_TIER,
  url,
  tokenFor,
  tierOfToken,
  params,
  json,
  verify,
  quota,
  windowsFor,
  securityChecks,
  tooManyChecks,
} from './lib.js';

const EXPECTED = parseInt(__ENV.EXPECTED || '20', 10);
const TIER = __ENV.TIER || 'free';
const TOKEN = __ENV.TOKEN !== undefined ? __ENV.TOKEN : TIER === 'anonymous' ? '' : tokenFor(TIER);
const CLASS = __ENV.CLASS || 'api';
const WINDOW = __ENV.WINDOW || 'minute';
const REQUESTS = parseInt(__ENV.REQUESTS || String(EXPECTED * 3), 10);
const VUS = parseInt(__ENV.VUS || '5', 10);
const WAIT_FOR_FRESH = (__ENV.WAIT_FOR_FRESH || '1') !== '0';
const EXPECTED_TIER = TOKEN ? tierOfToken(TOKEN) : ANONYMOUS_TIER;

const admitted = new Counter('burst_admitted');
const refused = new Counter('burst_refused');
const refusedConcurrent = new Counter('burst_refused_concurrent');
const other = new Counter('burst_other');
const retryAfter = new Trend('burst_retry_after_s');

export const options = {
  scenarios: {
    burst: { executor: 'shared-iterations', vus: VUS, iterations: REQUESTS, maxDuration: '50s' },
  },
  setupTimeout: '200s', // may wait for the window to empty
  thresholds: {
    burst_admitted: [`count==${EXPECTED}`],
    burst_refused: ['count>0'],
    burst_other: ['count==0'],
    checks: ['rate==1'],
    http_req_failed: ['rate==0'], // 429 is expected here
  },
  summaryTrendStats: ['min', 'med', 'max'],
};

http.setResponseCallback(http.expectedStatuses(200, 429));

function findWindow(q) {
  return ((q && q.windows) || []).find((w) => w.name === WINDOW);
}

export function setup() {
  if (TIER !== 'anonymous' && !TOKEN) {
    throw new Error(`no token: set ${TIER.toUpperCase()}_TOKEN (or TOKEN, or TIER=anonymous)`);
  }
  if (!PATHS[CLASS] || CLASS === 'exempt' || CLASS === 'quota') throw new Error(`CLASS=${CLASS}: not a limited class`);
  let q = quota(TOKEN, { phase: 'setup' }).body;
  let w = findWindow(q);
  if (!w) throw new Error(`window ${WINDOW} does not apply to this caller (quota: ${JSON.stringify(q)})`);
  if (w.limit !== EXPECTED) console.warn(`window ${WINDOW} has limit ${w.limit}, EXPECTED=${EXPECTED}`);
  // the other windows that count this class must not bind first
  for (const o of windowsFor(q, CLASS)) {
    if (o.name !== WINDOW && o.remaining < EXPECTED) {
      throw new Error(`window ${o.name} has only ${o.remaining} left (< ${EXPECTED}): it would bind before ${WINDOW}; use a fresh user`);
    }
  }
  if (w.remaining < w.limit) {
    if (!WAIT_FOR_FRESH || w.window_seconds > 180) {
      throw new Error(`window ${WINDOW} already has ${w.limit - w.remaining} request(s) counted; use a fresh user or wait until it empties`);
    }
    const deadline = Date.now() + (w.window_seconds + 10) * 1000;
    console.log(`window ${WINDOW}: ${w.remaining}/${w.limit} left, waiting for it to empty (<= ${w.window_seconds}s)`);
    while (w.remaining < w.limit && Date.now() < deadline) {
      sleep(2);
      q = quota(TOKEN, { phase: 'setup' }).body;
      w = findWindow(q);
    }
    if (w.remaining < w.limit) throw new Error(`window ${WINDOW} did not empty in time`);
  }
  admitted.add(0);
  refused.add(0);
  refusedConcurrent.add(0);
  other.add(0);
  return { start: Date.now(), windowSeconds: w.window_seconds };
}

export default function () {
  const tags = { tier: TIER, class: CLASS, phase: 'burst' };
  const res = http.get(url(PATHS[CLASS]), params(TOKEN, tags));
  if (res.status === 200) {
    admitted.add(1);
    return;
  }
  if (res.status !== 429) {
    other.add(1);
    console.warn(`unexpected ${res.status}: ${String(res.body).slice(0, 200)}`);
    return;
  }
  const v = (json(res) || {})['violated-policies'] || [];
  if (v.length === 1 && v[0] === 'concurrent') {
    refusedConcurrent.add(1);
  } else {
    refused.add(1);
    retryAfter.add(parseInt(res.headers['Retry-After'], 10));
  }
  verify(
    res,
    [
      tooManyChecks(EXPECTED_TIER),
      securityChecks(),
      { [`429 names ${WINDOW} (or concurrent)`]: () => v.indexOf(WINDOW) >= 0 || (v.length === 1 && v[0] === 'concurrent') },
    ],
    tags,
  );
}

export function teardown(data) {
  const elapsed = (Date.now() - data.start) / 1000;
  const q = quota(TOKEN, { phase: 'teardown' });
  const w = findWindow(q.body);
  verify(
    q.res,
    [
      {
        'burst finished within the window': () => elapsed < data.windowSeconds,
        [`quota: ${WINDOW} has 0 remaining after the burst`]: () => w !== undefined && w.remaining === 0,
      },
    ],
    { phase: 'teardown' },
  );
  console.log(`burst: ${REQUESTS} requests by ${VUS} VUs in ${elapsed.toFixed(2)} s; ${WINDOW} now ${w ? w.remaining : '?'}/${w ? w.limit : '?'} left`);
}
