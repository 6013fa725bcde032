# shellcheck shell=bash disable=SC2034,SC2154 # sourced: $work, $secs, $conns come from the caller; m_* go back to it
# Shared by the benchmark and cost scripts (scripts/bench.sh, redis-cost.sh, mixed-batching.sh,
# access-log-cost.sh, refusal-cost.sh; sourced, not run).
# Needs $work (a scratch directory) to be set by the caller. Every process started here writes its
# pid to $work/NAME.pid, so `trap bench_cleanup EXIT` stops them all.
#
# Ports (loopback only). The defaults are the historical fixed ones; use_free_ports (below) replaces
# them with free ones, so that a run does not collide with another one on the same machine.
: "${upstream_port:=18000}"   # the nginx upstream
: "${tiergate_port:=18080}"   # tiergate's data plane
: "${admin_port:=19901}"      # tiergate's admin listener (/readyz)
: "${peer_port:=18081}"       # the peer proxy under test (nginx, HAProxy, Envoy, Traefik)

# Sets the four ports above and $redis_port to free loopback ports, below the kernel's ephemeral
# range (so no outgoing connection takes one in the meantime). Call before starting anything.
use_free_ports() {
  read -r upstream_port tiergate_port admin_port peer_port redis_port < <(python3 -c '
import random, socket
ports = []
while len(ports) < 5:
    p = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        if p not in ports:
            ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*ports)')
}

# An nginx upstream on 127.0.0.1:$upstream_port answering "ok", pinned to core 1.
start_upstream() {
  cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.nginxpid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$upstream_port; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
CONF
  taskset -c 1 nginx -c "$work/upstream.conf" -p "$work" & echo $! > "$work/upstream.pid"
}

# $work/tiergate.toml: config.toml on 127.0.0.1:$tiergate_port (admin :$admin_port) in front of the
# upstream, with anonymous callers on tier "bench": three finite, never-reached windows, so every
# request takes a real limit decision. $1: concurrent_requests for the tier; further args: extra sed
# expressions.
write_bench_config() {
  local conc=$1; shift
  sed -e "s#^listen = .*#listen = \"127.0.0.1:$tiergate_port\"#" \
      -e "s#^admin_listen = .*#admin_listen = \"127.0.0.1:$admin_port\"#" \
      -e "s#^upstream = .*#upstream = \"http://127.0.0.1:$upstream_port\"#" \
      -e 's#^anonymous_tier = .*#anonymous_tier = "bench"#' "$@" config.toml > "$work/tiergate.toml"
  cat >> "$work/tiergate.toml" <<CONF

[tiers.bench]
requests_per_hour = 1000000000
requests_per_day = 1000000000
api_calls_per_minute = 1000000000
concurrent_requests = $conc
CONF
}

# sed expression for write_bench_config: the Redis store at 127.0.0.1:$1, with quota_batch $2.
redis_storage() { printf 's#^backend = .*#backend = "redis"\\nurl = "redis://127.0.0.1:%s/0"\\nquota_batch = %s#' "$1" "$2"; }

# Polls URL until it answers 2xx, for at most 10 s. Returns 1 if it never does.
wait_http() {
  local _
  for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

# tiergate (release build, one worker, core 0) on $work/tiergate.toml, stderr in $work/tiergate.err;
# pid in $tiergate_pid and $work/tiergate.pid. Returns once /readyz answers (1 if it never does).
# $tiergate_cpus (0) and $tiergate_args (--workers 1) change where it runs and how many workers.
start_tiergate() {
  # shellcheck disable=SC2086 # $tiergate_args is a list of options
  JWT_SECRET_KEY=${JWT_SECRET_KEY:-bench-secret-0123456789abcdef0123456789} RUST_LOG=${RUST_LOG:-warn} \
    taskset -c "${tiergate_cpus:-0}" "${TIERGATE_BIN:-target/release/tiergate}" ${tiergate_args:---workers 1} --config "$work/tiergate.toml" 2>"$work/tiergate.err" &
  tiergate_pid=$!
  echo "$tiergate_pid" > "$work/tiergate.pid"
  wait_http "http://127.0.0.1:$admin_port/readyz"
}

# Stops the process whose pid is in $work/NAME.pid (SIGTERM, then SIGKILL after 5 s) and forgets it.
stop_pid() {
  local f="$work/$1.pid" pid _
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$f"
}

# The EXIT trap: stops everything with a pid file in $work (SIGTERM, SIGKILL after 2 s), removes $work.
bench_cleanup() {
  local pids _
  # shellcheck disable=SC2046 # one pid per file
  pids=$(cat "$work"/*.pid 2>/dev/null | tr '\n' ' ') || true
  if [ -n "${pids// }" ]; then
    # shellcheck disable=SC2086 # a list of pids
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 40); do
      # shellcheck disable=SC2086
      kill -0 $pids 2>/dev/null || break
      sleep 0.05
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  rm -rf "$work"
}

# redis-server on 127.0.0.1:$1, no persistence, pinned to core 1; pid in $work/redis.pid. Returns once
# it answers PING (1 if it never does within 10 s).
start_redis() {
  local _
  taskset -c 1 redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
  echo $! > "$work/redis.pid"
  for _ in $(seq 1 200); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done
  return 1
}

# nginx as the rate-limiting proxy on 127.0.0.1:$peer_port (core 0): limit_req with a rate high
# enough never to refuse, upstream keep-alive. Its master's pid goes to $work/proxy.pid, its worker's
# to $work/proxy-worker.pid. Arg (optional): a file of nginx directives included in its location
# (bench.sh's nginx-headers target: add_header lines).
start_nginx_limit_req() {
  local include=${1:+include $1;}
  cat > "$work/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/proxy.nginxpid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream app { server 127.0.0.1:$upstream_port; keepalive 64; }
  server { listen 127.0.0.1:$peer_port; keepalive_requests 1000000;
    location / { limit_req zone=perip burst=1000000 nodelay;
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://app; $include } } }
CONF
  taskset -c 0 nginx -c "$work/proxy.conf" -p "$work" & echo $! > "$work/proxy.pid"
  sleep 0.5
  pgrep -f "nginx: worker process" -P "$(cat "$work/proxy.nginxpid")" | head -1 > "$work/proxy-worker.pid"
}

# Runs a command in the background with its pid in $work/NAME.pid and waits for it: unlike a
# foreground command, a wait lets the caller's INT/TERM trap run at once (and bench_cleanup stop it).
# Args: name command...
run_waited() {
  local name=$1 pid rc=0; shift
  "$@" & pid=$!
  echo "$pid" > "$work/$name.pid"
  wait "$pid" || rc=$?
  rm -f "$work/$name.pid"
  return $rc
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Peak resident set (VmHWM) of PID in MiB.
peak_rss_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# Redis client round trips so far (INFO commandstats, top-level commands only: EVALSHA, EVAL, ZREM,
# GET; commandstats also counts the commands scripts run, which are not trips). Arg: redis port.
redis_trips() {
  redis-cli -p "$1" INFO commandstats |
    awk -F'[:=,]' '/^cmdstat_(evalsha|eval|zrem|get):/ {s += $3} END {print s + 0}'
}

# wrk's latency ("612.00us", "1.15ms", "2.00s") in microseconds.
wrk_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1e3; else if (v ~ /s$/) m = 1e6; else m = 0
  if (m) printf "%.0f", n * m; else printf "nan" }'; }

# One wrk run against 127.0.0.1:PORT/api/items, pinned to core 1, after a $warm-second (default 2)
# warm-up, for $secs seconds over $conns connections. Sets:
#   m_reqs m_rps     requests, requests/s
#   m_p50 m_p99      latency percentiles in µs
#   m_cpu            the proxy process's CPU (user + system, all threads) per request in µs ("-" without PID)
#   m_rss            the proxy's peak RSS (VmHWM) in MiB ("-" without PID)
#   m_trips          Redis round trips per request ("-" without a Redis port)
#   m_bytes          bytes read per response (status line, headers and body)
#   m_non2xx m_errs  non-2xx responses, socket errors (connect, read, write, timeout)
# Args: port [pid [redis_port]]
measure() {
  local pid=${2:-} redis=${3:-} url="http://127.0.0.1:$1/api/items"
  run_waited wrk taskset -c 1 timeout $((${warm:-2} + 30)) wrk -t1 -c"$conns" -d"${warm:-2}s" "$url" >/dev/null
  [ -n "$redis" ] && redis-cli -p "$redis" CONFIG RESETSTAT >/dev/null
  local before=0 after=0 out
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  run_waited wrk taskset -c 1 timeout $((secs + 30)) wrk -t1 -c"$conns" -d"${secs}s" --latency "$url" > "$work/wrk.out"
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  out=$(cat "$work/wrk.out")
  m_reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  m_rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  m_p50=$(wrk_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  m_p99=$(wrk_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  m_non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}' | grep . || echo 0)
  m_errs=$(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' | grep . || echo 0)
  # "1.23MB read": wrk's units are powers of 1024.
  m_bytes=$(echo "$out" | awk -v n="$m_reqs" '/ read$/ { v = $(NF-1); m = 1
    if (v ~ /KB$/) m = 1024; else if (v ~ /MB$/) m = 1048576; else if (v ~ /GB$/) m = 1073741824
    printf "%.0f", (v + 0) * m / n }')
  per_request "$pid" "$redis" $((after - before))
}

# As `measure`, at a steady $rate requests/s (k6, constant arrival rate, loadtest/steady.js) instead
# of as fast as wrk can: the latency a sidecar adds at a realistic load, and what a request costs
# when connections are mostly idle. Needs $k6 (the k6 binary). Sets the same m_* (m_bytes "-").
measure_steady() {
  local pid=${2:-} redis=${3:-} url="http://127.0.0.1:$1/api/items"
  run_waited k6 taskset -c 1 timeout $((${warm:-2} + 60)) "$k6" run --quiet --no-usage-report \
    -e TARGET="$url" -e RATE="$rate" -e DURATION="${warm:-2}s" loadtest/steady.js >/dev/null 2>&1 || true
  [ -n "$redis" ] && redis-cli -p "$redis" CONFIG RESETSTAT >/dev/null
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  run_waited k6 taskset -c 1 timeout $((secs + 60)) "$k6" run --quiet --no-usage-report \
    --summary-trend-stats "med,p(99)" --summary-export "$work/k6.json" \
    -e TARGET="$url" -e RATE="$rate" -e DURATION="${secs}s" loadtest/steady.js >/dev/null 2>&1 || true
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  read -r m_reqs m_rps m_p50 m_p99 m_non2xx < <(python3 - "$work/k6.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d, reqs = m["http_req_duration"], m["http_reqs"]
failed = m.get("checks", {}).get("fails", 0)
print(reqs["count"], round(reqs["rate"]), round(d["med"] * 1000), round(d["p(99)"] * 1000), failed)
PY
)
  m_errs=0 m_bytes=-
  per_request "$pid" "$redis" $((after - before))
}

# The per-request figures both measures end with, from $m_reqs: m_cpu and m_rss when a pid is
# given, m_trips when a Redis port is ("-" otherwise). Args: pid redis_port cpu_ticks_spent
per_request() {
  local hz
  hz=$(getconf CLK_TCK)
  m_cpu=- m_rss=- m_trips=-
  if [ -n "$1" ]; then
    m_cpu=$(awk -v t="$3" -v hz="$hz" -v n="$m_reqs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    m_rss=$(peak_rss_mib "$1")
  fi
  if [ -n "$2" ]; then
    m_trips=$(awk -v c="$(redis_trips "$2")" -v n="$m_reqs" 'BEGIN {printf "%.4f", c / n}')
  fi
}

# The setup the callgrind cost scripts share: valgrind, nginx and curl present, a release build
# (built if missing; `TIERGATE_BIN` skips the check), free ports, everything stopped on exit, and the
# nginx upstream started.
start_cost_run() {
  local tool
  for tool in valgrind nginx curl; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
  [ -n "${TIERGATE_BIN:-}" ] || [ -x target/release/tiergate ] || cargo build --release
  use_free_ports
  trap bench_cleanup EXIT
  start_upstream
  sleep 0.5
}

# Instructions (callgrind) for one run of tiergate on $work/tiergate.toml: start, COUNT requests to
# PATH over keep-alive (curl's [1-COUNT] globbing), SIGTERM. Subtract a COUNT=0 run for the cost of
# the requests alone. Args: tag count path [curl options...]
callgrind_run() {
  local tag=$1 count=$2 path=$3; shift 3
  local out="$work/cg.$tag.$count"
  JWT_SECRET_KEY=cost-secret-0123456789abcdef RUST_LOG=${RUST_LOG:-warn} \
    valgrind --tool=callgrind --callgrind-out-file="$out" "${TIERGATE_BIN:-target/release/tiergate}" --workers 1 --config "$work/tiergate.toml" \
    >/dev/null 2>"$work/valgrind.$tag" &
  local pid=$!
  for _ in $(seq 1 300); do curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.1; done
  if [ "$count" -gt 0 ]; then
    curl -s "$@" -o /dev/null "http://127.0.0.1:$tiergate_port$path?[1-$count]"
  fi
  kill -TERM "$pid"; wait "$pid" || true
  # quanta (under the metrics recorder) calibrates its clock once, for as long as the wall clock
  # says: under valgrind that varies by millions of instructions from run to run. Left out.
  local total calibrate
  total=$(grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}')
  calibrate=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
    awk '/quanta::Calibration::calibrate/ && !found {gsub(",", "", $1); print $1; found = 1}')
  echo $(( total - ${calibrate:-0} ))
}
