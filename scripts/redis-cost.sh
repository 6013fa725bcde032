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
cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.nginxpid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18000; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
CONF
taskset -c 1 nginx -c "$work/upstream.conf" -p "$work" & echo $! > "$work/upstream.pid"

sed -e 's#^listen = .*#listen = "127.0.0.1:18080"#' \
    -e 's#^admin_listen = .*#admin_listen = "127.0.0.1:19901"#' \
    -e 's#^upstream = .*#upstream = "http://127.0.0.1:18000"#' \
    -e 's#^backend = .*#backend = "redis"\nurl = "redis://127.0.0.1:16390/0"#' \
    -e 's#^anonymous_tier = .*#anonymous_tier = "bench"#' config.toml > "$work/tiergate.toml"
cat >> "$work/tiergate.toml" <<CONF

[tiers.bench]
requests_per_hour = 1000000000
requests_per_day = 1000000000
api_calls_per_minute = 1000000000
concurrent_requests = $conc
CONF
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
