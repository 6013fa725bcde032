// A steady load for scripts/bench.sh --rate: RATE requests/s (constant arrival rate, new requests
// start on time however slow the answers are) for DURATION to TARGET, keep-alive. Only the status is
// checked; the latency figures come from the summary (--summary-export).
import http from 'k6/http';
import { check } from 'k6';

const rate = Number(__ENV.RATE || 500);

export const options = {
  discardResponseBodies: true,
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: Number(__ENV.VUS || 32),
      maxVUs: Number(__ENV.VUS || 32) * 4,
    },
  },
};

export default function () {
  const res = http.get(__ENV.TARGET);
  check(res, { 'status 200': (r) => r.status === 200 });
}
