#!/usr/bin/env bash
# Side-by-side: tiergate vs nginx limit_req, both proxying to the same nginx upstream on loopback.
# The proxy under test is pinned to core 0; the load generator (wrk) and the upstream to core 1.
# Prints requests/s, latency and CPU microseconds per request for each proxy.
# Needs: wrk, nginx (Debian: wrk, nginx-light), a release build (cargo build --release).
# Usage: scripts/compare-nginx.sh [seconds=10] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

for tool in wrk nginx taskset; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x target/release/tiergate ] || cargo build --release

# The upstream: nginx returning a small body (core 1).
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_upstream

# nginx as the rate-limiting proxy (core 0): limit_req with a rate high enough never to refuse.
cat > "$work/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/proxy.nginxpid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream app { server 127.0.0.1:18000; keepalive 64; }
  server { listen 127.0.0.1:18081; keepalive_requests 1000000;
    location / { limit_req zone=perip burst=1000000 nodelay;
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://app; } } }
CONF
taskset -c 0 nginx -c "$work/proxy.conf" -p "$work" & echo $! > "$work/proxy.pid"

# tiergate (core 0, one worker) on the bench config.
write_bench_config 100000
JWT_SECRET_KEY=compare-secret-0123456789abcdef RUST_LOG=warn taskset -c 0 target/release/tiergate --workers 1 --config "$work/tiergate.toml" 2>"$work/tiergate.err" &
echo $! > "$work/tiergate.pid"
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # name port pid
  local name=$1 port=$2 pid=$3
  taskset -c 1 wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/api/items" >/dev/null  # warm up
  local before after out reqs
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/api/items")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local hz; hz=$(getconf CLK_TCK)
  printf '%-10s %10s req/s  p50 %8s  p99 %8s  CPU %6.1f us/request  non-2xx %s\n' "$name" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" \
    "$(echo "$out" | awk '$1=="99%" {print $2}')" \
    "$(echo "($after - $before) * 1000000 / $hz / $reqs" | bc -l)" \
    "$(echo "$out" | awk '/Non-2xx/ {print $4}' | grep . || echo 0)"
}
nginx_worker=$(pgrep -f "nginx: worker process" -P "$(cat "$work/proxy.nginxpid")" | head -1)
echo "wrk -t1 -c$conns -d${secs}s, proxy on core 0, wrk + upstream on core 1"
run direct 18000 "$(cat "$work/upstream.nginxpid")" || true
run nginx 18081 "$nginx_worker"
run tiergate 18080 "$(cat "$work/tiergate.pid")"
