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
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -x target/release/tiergate ] || cargo build --release

taskset -c 1 redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
echo $! > "$work/redis.pid"
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_upstream
write_bench_config "$conc" -e 's#^backend = .*#backend = "redis"\nurl = "redis://127.0.0.1:16390/0"#'
JWT_SECRET_KEY=cost-secret-0123456789abcdef RUST_LOG=warn taskset -c 0 target/release/tiergate --workers 1 --config "$work/tiergate.toml" 2>"$work/tiergate.err" &
echo $! > "$work/tiergate.pid"
sleep 1
taskset -c 1 wrk -t1 -c16 -d1s http://127.0.0.1:18080/api/items >/dev/null
redis-cli -p 16390 CONFIG RESETSTAT >/dev/null
out=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" http://127.0.0.1:18080/api/items)
sleep 0.5
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
stats=$(redis-cli -p 16390 INFO commandstats)
echo "$out" | grep -E "Requests/sec|Latency|Non-2xx" || true
echo "requests: $reqs (3 windows: minute, hour, day; concurrent_requests = $conc)"
echo "$stats" | grep -E "^cmdstat_(evalsha|eval|zrem|time|mget|set|zadd|zcard|zremrangebyscore|pexpire):" | sed 's/^/  /'
client_cmds=$(echo "$stats" | awk -F'[:=,]' '/^cmdstat_(evalsha|eval|zrem|get|info|config)[:]/ && !/info|config/ {s += $3} END {print s}')
echo "client commands per request: $(echo "$client_cmds / $reqs" | bc -l | cut -c1-5)"
