#!/usr/bin/env bash
# Where a proxied request's CPU goes: user time against kernel time per request, and the system calls
# each request makes, for tiergate (memory store, --workers 1) and nginx limit_req side by side in one
# run, behind the same nginx upstream, under the same wrk load. It answers "is the gap to nginx in
# user space or in the kernel?": the CPU row of scripts/bench.sh split in two.
#
# The proxy under test is pinned to core 0; wrk and the upstream to core 1. Each proxy is warmed up for
# 2 s, then measured for SECS s (user and system time from /proc/PID/stat). With strace installed, a
# second, shorter run per proxy counts its system calls (strace -c -f; strace slows the proxy, so
# only the calls per request count there, not the time).
#
# Usage: scripts/cpu-split.sh [SECS=10 [CONNS=64]]
#   STORE=redis-batch: tiergate on the Redis store with quota_batch = QUOTA_BATCH (100) instead of the
#   memory store (a private redis-server on core 1), to split the batched path's CPU the same way.
# Needs: wrk, nginx, curl, taskset, a release build (built if missing); strace is optional.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
for tool in wrk nginx curl taskset; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -n "${TIERGATE_BIN:-}" ] || [ -x target/release/tiergate ] || cargo build --release
use_free_ports
trap bench_cleanup EXIT
start_upstream
sleep 0.5
store=${STORE:-memory}
if [ "$store" = redis-batch ]; then
  command -v redis-server >/dev/null || { echo "missing redis-server" >&2; exit 1; }
  start_redis "$redis_port"
  write_bench_config 100000 -e 's#^access = .*#access = "none"#' -e "$(redis_storage "$redis_port" "${QUOTA_BATCH:-100}")"
  label="tiergate batch=${QUOTA_BATCH:-100}"
elif [ "$store" = memory ]; then
  write_bench_config 100000 -e 's#^access = .*#access = "none"#'
  label="tiergate memory"
else
  echo "STORE is memory or redis-batch" >&2; exit 64
fi
start_tiergate
start_nginx_limit_req
hz=$(getconf CLK_TCK)

# Args: label port pid. Prints one row.
split_row() {
  local label=$1 pid=$3 u0 s0 f0 u1 s1 f1 n url="http://127.0.0.1:$2/api/items"
  run_waited wrk taskset -c 1 wrk -t1 -c"$conns" -d2s "$url" >/dev/null
  # /proc/PID/stat: field 10 minor page faults, 14 user and 15 system clock ticks.
  read -r u0 s0 f0 < <(awk '{print $14, $15, $10}' "/proc/$pid/stat")
  run_waited wrk taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "$url" > "$work/wrk.out"
  read -r u1 s1 f1 < <(awk '{print $14, $15, $10}' "/proc/$pid/stat")
  n=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  awk -v l="$label" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v f=$((f1 - f0)) -v hz="$hz" 'BEGIN {
    printf "%-22s %10d %12.2f %12.2f %12.2f %12.4f\n", l, n, u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n, f / n }'
}

# Args: label port pid. Prints the system calls per request, most frequent first.
syscall_row() {
  local label=$1 pid=$3 sp n url="http://127.0.0.1:$2/api/items"
  timeout 30 strace -c -f -p "$pid" -o "$work/strace.out" 2>/dev/null & sp=$!
  echo "$sp" > "$work/strace.pid"
  sleep 0.5
  run_waited wrk taskset -c 1 wrk -t1 -c"$conns" -d3s "$url" > "$work/wrk.out"
  sleep 0.2
  kill -INT "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  rm -f "$work/strace.pid"
  n=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v l="$label" -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      per = $4 / n
      if (per >= 0.05) out = out sprintf(" %s %.2f", $NF, per) }
    END { printf "%-22s%s\n", l, out }' "$work/strace.out"
}

nginx_worker=$(cat "$work/proxy-worker.pid")
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), wrk -t1 -c$conns, ${secs} s per proxy"
printf '%-22s %10s %12s %12s %12s %12s\n' "proxy" "requests" "user µs/req" "sys µs/req" "total µs/req" "faults/req"
for round in 1 2; do
  split_row "$label ($round)" "$tiergate_port" "$tiergate_pid"
  split_row "nginx limit_req ($round)" "$peer_port" "$nginx_worker"
done
if command -v strace >/dev/null; then
  echo
  echo "system calls per request (strace -c, 3 s each; calls made less than once per 20 requests left out):"
  syscall_row "$label" "$tiergate_port" "$tiergate_pid"
  syscall_row "nginx limit_req" "$peer_port" "$nginx_worker"
fi
