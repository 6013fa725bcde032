# Shared by scripts/compare-nginx.sh and scripts/redis-cost.sh (sourced, not run).
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
