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
for bin in "$@"; do
  base=$(TIERGATE_BIN=$bin callgrind_run cost 0 /api/items)
  with=$(TIERGATE_BIN=$bin callgrind_run cost "$n" /api/items)
  printf '%-40s %16s\n' "$bin" "$(( (with - base) / n ))"
done
