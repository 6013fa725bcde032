#!/usr/bin/env bash
# The mixed workload for quota batching: 1,000 light callers at 1 request/s each beside 10 heavy
# callers at HEAVY_RATE (200) requests/s each, on the Redis store with and without quota_batch. Runs
# each group alone and both together (k6, loadtest/mixed.js), and prints Redis round trips per
# request (top-level commands only) for each. Light callers cannot be batched (a reservation would
# expire before their next request), and that is expected; the heavy ones should cost ~0.05.
# tiergate on core 0; k6, the upstream and redis-server on core 1.
# Needs: nginx (upstream), redis-server, bc, k6 (scripts/k6-smoke.sh installs it), a release build.
# Usage: scripts/mixed-batching.sh [seconds=20] [quota_batch=20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
batch=${2:-20}
work=$(mktemp -d)
K6=${K6:-$(command -v k6 || echo "$HOME/.cache/tiergate-tools/k6-venv/bin/k6")}
for tool in nginx taskset redis-server redis-cli bc "$K6"; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x target/release/tiergate ] || cargo build --release
export JWT_SECRET_KEY=mixed-secret-0123456789abcdef

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
trap bench_cleanup EXIT
use_free_ports
start_upstream
start_redis "$redis_port"

write_bench_config 100000
for i in $(seq 1 1000); do target/release/tiergate token --config "$work/tiergate.toml" --sub "light-$i" --tier bench; done > "$work/light.txt"
for i in $(seq 1 10); do target/release/tiergate token --config "$work/tiergate.toml" --sub "heavy-$i" --tier bench; done > "$work/heavy.txt"

run() { # quota_batch, groups
  write_bench_config 100000 -e "$(redis_storage "$redis_port" "$1")"
  start_tiergate || { echo "tiergate did not start:"; cat "$work/tiergate.err"; exit 1; }
  local pid=$tiergate_pid
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
  local before after
  before=$(cpu_ticks "$pid")
  taskset -c 1 "$K6" run --quiet --no-usage-report --summary-export "$work/summary.json" \
    -e BASE_URL="http://127.0.0.1:$tiergate_port" -e GROUPS="$2" -e DURATION="${secs}s" -e LIGHT_TOKENS_FILE="$work/light.txt" -e HEAVY_TOKENS_FILE="$work/heavy.txt" \
    loadtest/mixed.js >/dev/null 2>"$work/k6.err" || { echo "k6 failed:"; tail -5 "$work/k6.err"; }
  after=$(cpu_ticks "$pid")
  sleep 0.5
  local reqs calls
  reqs=$(python3 -c "import json;print(json.load(open('$work/summary.json'))['metrics']['http_reqs']['count'])")
  calls=$(redis_trips "$redis_port")
  printf 'quota_batch %-3s %-12s %8s requests  %7s Redis trips  %s trips/request  CPU %.1f us/request\n' "$1" "$2" "$reqs" "$calls" \
    "$(echo "$calls / $reqs" | bc -l | cut -c1-6)" "$(echo "($after - $before) * 1000000 / $(getconf CLK_TCK) / $reqs" | bc -l)"
  stop_pid tiergate
}
echo "k6 ${secs}s per run: 1,000 light callers at 1/s, 10 heavy at ${HEAVY_RATE:-200}/s; tiergate on core 0, k6 + upstream + redis on core 1"
for b in 0 "$batch"; do
  run "$b" light
  run "$b" heavy
  run "$b" light,heavy
done
