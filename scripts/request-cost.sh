#!/usr/bin/env bash
# What one admitted request costs, in CPU instructions (valgrind callgrind: exact and repeatable even
# on a busy machine), for one or more builds of tiergate side by side: the memory store, an anonymous
# caller on the bench tier (three windows and a concurrency cap), log.access = none, keep-alive.
# Use it to compare two builds of the hot path: copy the old binary away, rebuild, pass both.
# Needs: valgrind, nginx (the upstream), curl, a release build.
# Usage: scripts/request-cost.sh [BINARY...]   (default target/release/tiergate; N=2000 requests)
#   STORE=redis: the Redis store instead (a private redis-server, quota_batch = 0), so each request
#   makes its decision's EVALSHA and its lease release's ZREM. STORE=redis-batch: the same with
#   quota_batch = QUOTA_BATCH (100), so nearly every request is admitted from a reservation.
#   LOAD=SECS: instead of N sequential requests, wrk -c CONNS (32) for SECS seconds against tiergate
#   under callgrind (tiergate on core 0, wrk on core 1), with the counters zeroed after a 2 s warm-up
#   (callgrind_control -z) and dumped at the end: instructions per request under concurrent load,
#   where a host without hardware counters (perf stat: not supported) cannot count them otherwise.
#   Under valgrind tiergate serves a few thousand requests per second, so this counts work, not speed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-2000}
work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
[ $# -gt 0 ] || set -- target/release/tiergate
start_cost_run
store=${STORE:-memory}
if [ "$store" = redis ] || [ "$store" = redis-batch ]; then
  command -v redis-server >/dev/null || { echo "missing redis-server" >&2; exit 1; }
  start_redis "$redis_port"
  batch=0
  [ "$store" = redis-batch ] && batch=${QUOTA_BATCH:-100}
  write_bench_config 100000 -e 's#^access = .*#access = "none"#' -e "$(redis_storage "$redis_port" "$batch")"
elif [ "$store" = memory ]; then
  write_bench_config 100000 -e 's#^access = .*#access = "none"#'
else
  echo "STORE is memory, redis or redis-batch" >&2; exit 64
fi
printf '%-40s %16s\n' "build" "instr/request"
if [ -n "${LOAD:-}" ]; then
  for tool in wrk callgrind_control taskset; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
  # The config in a directory of its own: the reload watcher checks its fingerprint when any file in
  # that directory changes, and callgrind writes its dump beside it otherwise.
  mkdir "$work/conf"
  mv "$work/tiergate.toml" "$work/conf/tiergate.toml"
  for bin in "$@"; do
    out="$work/cg.load"
    JWT_SECRET_KEY=cost-secret-0123456789abcdef RUST_LOG=${RUST_LOG:-warn} taskset -c 0 \
      valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --workers 1 --config "$work/conf/tiergate.toml" \
      >/dev/null 2>"$work/valgrind.load" &
    pid=$!
    echo "$pid" > "$work/load.pid"
    for _ in $(seq 1 300); do curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.1; done
    url="http://127.0.0.1:$tiergate_port/api/items"
    taskset -c 1 wrk -t1 -c"${CONNS:-32}" -d2s "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    done_requests=$(taskset -c 1 wrk -t1 -c"${CONNS:-32}" -d"${LOAD}s" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"; wait "$pid" || true
    rm -f "$work/load.pid"
    # The dump after zeroing holds the loaded window only; its file ends in .1 (the first dump).
    total=$(grep -hE '^(summary|totals):' "$out".*1 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$total" ] && [ "${done_requests:-0}" -gt 0 ] || { echo "$bin: no dump or no requests" >&2; exit 1; }
    printf '%-40s %16s   (%s requests under wrk)\n' "$bin" "$(( total / done_requests ))" "$done_requests"
    rm -f "$out" "$out".*
  done
  exit 0
fi
for bin in "$@"; do
  base=$(TIERGATE_BIN=$bin callgrind_run cost 0 /api/items)
  with=$(TIERGATE_BIN=$bin callgrind_run cost "$n" /api/items)
  printf '%-40s %16s\n' "$bin" "$(( (with - base) / n ))"
done
