// Mixed workload for quota batching: many light callers (1 request/s each) beside a few heavy ones
// (hundreds per second each), at constant arrival rates. Run by scripts/mixed-batching.sh, which
// counts Redis round trips per request for each group; the checks here only require 200s.
//
// Environment:
//   BASE_URL            tiergate's data plane (default http://127.0.0.1:18080)
//   GROUPS              which groups run: light, heavy, or light,heavy (default)
//   LIGHT_TOKENS_FILE   one token per light caller, one per line (absolute path)
//   HEAVY_TOKENS_FILE   one token per heavy caller
//   HEAVY_RATE          requests/s per heavy caller (default 200)
//   DURATION            e.g. 20s (default)
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
const GROUPS = (__ENV.GROUPS || 'light,heavy').split(',').map((g) => g.trim());
const DURATION = __ENV.DURATION || '20s';
const HEAVY_RATE = Number(__ENV.HEAVY_RATE || 200);
const read = (f) => (f ? open(f).split('\n').map((l) => l.trim()).filter((l) => l.length > 0) : []);
const LIGHT = read(__ENV.LIGHT_TOKENS_FILE);
const HEAVY = read(__ENV.HEAVY_TOKENS_FILE);

const scenarios = {};
if (GROUPS.includes('light')) {
  scenarios.light = {
    executor: 'constant-arrival-rate', exec: 'light', rate: LIGHT.length, timeUnit: '1s',
    duration: DURATION, preAllocatedVUs: 100, maxVUs: 400,
  };
}
if (GROUPS.includes('heavy')) {
  scenarios.heavy = {
    executor: 'constant-arrival-rate', exec: 'heavy', rate: HEAVY.length * HEAVY_RATE, timeUnit: '1s',
    duration: DURATION, preAllocatedVUs: 100, maxVUs: 400,
  };
}
export const options = { scenarios, discardResponseBodies: true, thresholds: { checks: ['rate>0.99'] } };

function call(tokens) {
  // Round robin: each caller gets an equal share of its group's rate.
  const t = tokens[exec.scenario.iterationInTest % tokens.length];
  const r = http.get(`${BASE_URL}/api/items`, { headers: { Authorization: `Bearer ${t}` } });
  check(r, { 'admitted': (res) => res.status === 200 });
}

export function light() { call(LIGHT); }
export function heavy() { call(HEAVY); }
