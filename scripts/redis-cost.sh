#!/usr/bin/env bash
# Redis cost of tiergate's limit decisions: runs tiergate (release build) on a private redis-server,
# drives it with wrk, and prints Redis's own accounting (INFO commandstats): microseconds per
# EVALSHA and Redis commands per proxied request. Proxy on core 0; wrk, upstream and Redis on core 1.
# Usage: scripts/redis-cost.sh [seconds=10] [concurrent_requests=-1]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:--1}
work=$(mktemp -d)
[ -x target/release/tiergate ] || cargo build --release

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
trap bench_cleanup EXIT
use_free_ports
start_redis "$redis_port"
start_upstream
write_bench_config "$conc" -e "$(redis_storage "$redis_port" 0)"
start_tiergate || { echo "tiergate did not start:"; cat "$work/tiergate.err"; exit 1; }
taskset -c 1 wrk -t1 -c16 -d1s "http://127.0.0.1:$tiergate_port/api/items" >/dev/null
redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
out=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$tiergate_port/api/items")
sleep 0.5
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
stats=$(redis-cli -p "$redis_port" INFO commandstats)
echo "$out" | grep -E "Requests/sec|Latency|Non-2xx" || true
echo "requests: $reqs (3 windows: minute, hour, day; concurrent_requests = $conc)"
echo "$stats" | grep -E "^cmdstat_(evalsha|eval|zrem|time|mget|set|zadd|zcard|zremrangebyscore|pexpire):" | sed 's/^/  /'
client_cmds=$(echo "$stats" | awk -F'[:=,]' '/^cmdstat_(evalsha|eval|zrem|get|info|config)[:]/ && !/info|config/ {s += $3} END {print s}')
echo "client commands per request: $(echo "$client_cmds / $reqs" | bc -l | cut -c1-5)"
