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

start_nginx_limit_req

# tiergate (core 0, one worker) on the bench config.
write_bench_config 100000
JWT_SECRET_KEY=compare-secret-0123456789abcdef RUST_LOG=warn taskset -c 0 target/release/tiergate --workers 1 --config "$work/tiergate.toml" 2>"$work/tiergate.err" &
echo $! > "$work/tiergate.pid"
sleep 1

echo "wrk -t1 -c$conns -d${secs}s, proxy on core 0, wrk + upstream on core 1"
measure direct 18000 "$(cat "$work/upstream.nginxpid")" || true
measure nginx 18081 "$(cat "$work/proxy-worker.pid")"
measure tiergate 18080 "$(cat "$work/tiergate.pid")"
