#!/usr/bin/env bash
# Quota batching end to end, in one run: nginx `limit_req`, then tiergate on the memory store, on the
# Redis store without batching, and on the Redis store with `quota_batch`, all proxying to the same
# nginx upstream. Each row: requests/s, p50, p99, the proxy's CPU per request, and Redis round trips
# per request (top-level commands only). The proxy under test is pinned to core 0; wrk, the upstream
# and redis-server to core 1. tiergate serves anonymous callers on a tier with three finite,
# never-reached windows and a concurrency cap (scripts/bench-common.sh), so every request takes a
# real limit decision: one heavy caller, the case batching is for (see scripts/mixed-batching.sh for
# many light callers).
# Needs: wrk, nginx (Debian: wrk, nginx-light), redis-server, a release build (cargo build --release).
# Usage: scripts/compare-batching.sh [seconds=10] [connections=32] [quota_batch=20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
batch=${3:-20}
work=$(mktemp -d)
redis_port=16394
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

for tool in wrk nginx taskset redis-server redis-cli bc; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x target/release/tiergate ] || cargo build --release

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_upstream
start_nginx_limit_req
taskset -c 1 redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
echo $! > "$work/redis.pid"
until redis-cli -p $redis_port PING >/dev/null 2>&1; do sleep 0.05; done

# tiergate with the bench config plus sed expressions; measured, then stopped.
tiergate_row() { # name, sed expressions for the [storage] section...
  local name=$1; shift
  write_bench_config 100000 "$@"
  JWT_SECRET_KEY=compare-secret-0123456789abcdef RUST_LOG=warn taskset -c 0 target/release/tiergate --workers 1 \
    --config "$work/tiergate.toml" 2>"$work/tiergate.err" &
  local pid=$!
  echo $pid > "$work/tiergate.pid"
  until curl -fs http://127.0.0.1:19901/readyz >/dev/null 2>&1; do sleep 0.05; done
  measure "$name" 18080 $pid $redis_port
  kill $pid; wait $pid 2>/dev/null || true
  rm -f "$work/tiergate.pid"
}
redis() { echo "s#^backend = .*#backend = \"redis\"\nurl = \"redis://127.0.0.1:$redis_port/0\"\nquota_batch = $1#"; }

echo "wrk -t1 -c$conns -d${secs}s; proxy on core 0; wrk, upstream, redis-server on core 1; $(nproc) cores"
measure "nginx limit_req" 18081 "$(cat "$work/proxy-worker.pid")"
tiergate_row "tiergate memory" -e 's#^backend = .*#backend = "memory"#'
tiergate_row "tiergate redis" -e "$(redis 0)"
tiergate_row "tiergate redis batch=$batch" -e "$(redis "$batch")"
