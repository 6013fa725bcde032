# Shared by scripts/compare-nginx.sh, scripts/compare-batching.sh and scripts/redis-cost.sh
# (sourced, not run).
# Needs $work (a scratch directory) to be set by the caller.

# An nginx upstream on 127.0.0.1:18000 answering "ok", pinned to core 1.
start_upstream() {
  cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.nginxpid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18000; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
CONF
  taskset -c 1 nginx -c "$work/upstream.conf" -p "$work" & echo $! > "$work/upstream.pid"
}

# $work/tiergate.toml: config.toml on 127.0.0.1:18080 (admin :19901) in front of the upstream, with
# anonymous callers on tier "bench": three finite, never-reached windows, so every request takes a
# real limit decision. $1: concurrent_requests for the tier; further args: extra sed expressions.
write_bench_config() {
  local conc=$1; shift
  sed -e 's#^listen = .*#listen = "127.0.0.1:18080"#' \
      -e 's#^admin_listen = .*#admin_listen = "127.0.0.1:19901"#' \
      -e 's#^upstream = .*#upstream = "http://127.0.0.1:18000"#' \
      -e 's#^anonymous_tier = .*#anonymous_tier = "bench"#' "$@" config.toml > "$work/tiergate.toml"
  cat >> "$work/tiergate.toml" <<CONF

[tiers.bench]
requests_per_hour = 1000000000
requests_per_day = 1000000000
api_calls_per_minute = 1000000000
concurrent_requests = $conc
CONF
}

# nginx as the rate-limiting proxy on 127.0.0.1:18081 (core 0): limit_req with a rate high enough
# never to refuse, upstream keep-alive. Its worker's pid goes to $work/proxy-worker.pid.
start_nginx_limit_req() {
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
  sleep 0.5
  pgrep -f "nginx: worker process" -P "$(cat "$work/proxy.nginxpid")" | head -1 > "$work/proxy-worker.pid"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One wrk run against 127.0.0.1:PORT/api/items, pinned to core 1, after a 2 s warm-up; prints a
# row: requests/s, p50, p99, the proxy process's CPU (user + system) per request, non-2xx, and,
# when a Redis port is given, Redis round trips per request (top-level commands only: EVALSHA,
# EVAL, ZREM, GET; INFO commandstats also counts the commands scripts run, which are not trips).
# Needs $secs and $conns. Args: name port pid [redis_port]
measure() {
  local name=$1 port=$2 pid=$3 redis=${4:-}
  taskset -c 1 wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/api/items" >/dev/null
  [ -n "$redis" ] && redis-cli -p "$redis" CONFIG RESETSTAT >/dev/null
  local before after out reqs hz trips="—"
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/api/items")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  hz=$(getconf CLK_TCK)
  if [ -n "$redis" ]; then
    local calls
    calls=$(redis-cli -p "$redis" INFO commandstats |
      awk -F'[:=,]' '/^cmdstat_(evalsha|eval|zrem|get):/ {s += $3} END {print s + 0}')
    trips=$(echo "$calls / $reqs" | bc -l | cut -c1-6)
  fi
  printf '%-26s %10s req/s  p50 %8s  p99 %8s  CPU %6.1f us/request  non-2xx %-6s Redis trips/request %s\n' "$name" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" \
    "$(echo "$out" | awk '$1=="99%" {print $2}')" \
    "$(echo "($after - $before) * 1000000 / $hz / $reqs" | bc -l)" \
    "$(echo "$out" | awk '/Non-2xx/ {print $4}' | grep . || echo 0)" "$trips"
}

# Instructions (callgrind) for one run of tiergate on $work/tiergate.toml: start, COUNT requests to
# PATH over keep-alive (curl's [1-COUNT] globbing), SIGTERM. Subtract a COUNT=0 run for the cost of
# the requests alone. Args: tag count path [curl options...]
callgrind_run() {
  local tag=$1 count=$2 path=$3; shift 3
  local out="$work/cg.$tag.$count"
  JWT_SECRET_KEY=cost-secret-0123456789abcdef RUST_LOG=${RUST_LOG:-warn} \
    valgrind --tool=callgrind --callgrind-out-file="$out" target/release/tiergate --workers 1 --config "$work/tiergate.toml" \
    >/dev/null 2>"$work/valgrind.$tag" &
  local pid=$!
  for _ in $(seq 1 300); do curl -fs -o /dev/null http://127.0.0.1:19901/readyz && break; sleep 0.1; done
  if [ "$count" -gt 0 ]; then
    curl -s "$@" -o /dev/null "http://127.0.0.1:18080$path?[1-$count]"
  fi
  kill -TERM "$pid"; wait "$pid" || true
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}
