#!/usr/bin/env bash
# Redis CPU per limit decision: the real decision script (src/limit/redis_give_back.lua +
# src/limit/redis.lua) run by redis-benchmark against a private redis-server, with no proxy in the
# way. Prints Redis's own accounting (INFO commandstats usec_per_call) for the default plan of class
# `api`: three sliding_log windows (minute, hour, day), never full, 10,000 callers; then the same
# with quota batching asking for 20 units; the floor; and, on Redis 7+, the same script loaded as a
# Redis Function and called with FCALL. redis-server on core 0, redis-benchmark on core 1.
# Usage: scripts/redis-script-cost.sh [requests=200000] [algorithm=1 (1 sliding_log, 2 gcra, 3 fixed_window)]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
alg=${2:-1}
work=$(mktemp -d)
port=$((20000 + $$ % 10000))
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in redis-server redis-cli redis-benchmark taskset; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done

taskset -c 0 redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
echo $! > "$work/redis.pid"
until redis-cli -p $port PING >/dev/null 2>&1; do sleep 0.05; done
sha=$(redis-cli -p $port SCRIPT LOAD "$(cat src/limit/redis_give_back.lua src/limit/redis.lua)")

# The same script as a Redis Function (Redis 7+): FCALL instead of EVALSHA, KEYS and ARGV as the
# function's parameters (empty when FUNCTION is not supported).
fn_lib=$(printf "#!lua name=tiergate_cost\nredis.register_function('decide', function(KEYS, ARGV)\n%s\nend)\n" \
  "$(cat src/limit/redis_give_back.lua src/limit/redis.lua)")
has_functions=$(redis-cli -p $port FUNCTION LOAD "$fn_lib" 2>/dev/null | grep -c tiergate_cost || true)

# The floor under any three-window script: the same Redis commands (TIME, MGET of 3 keys, a SET … PX
# per key) and a reply of the same size, with no decision logic.
floor=$(redis-cli -p $port SCRIPT LOAD "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000
local v = redis.call('MGET', unpack(KEYS, 1, 3))
for i = 1, 3 do local c = tonumber(v[i] or '0') or 0; redis.call('SET', KEYS[i], c + 1, 'PX', 60000) end
return {1, now, 0, 0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 0, 0}")

# One decision: 3 window keys of one caller; limits high enough never to refuse.
run() { # label, script sha (or function name), units asked for[, command: EVALSHA (default) or FCALL]
  local command=${4:-EVALSHA}
  redis-cli -p $port FLUSHALL >/dev/null
  redis-cli -p $port CONFIG RESETSTAT >/dev/null
  taskset -c 1 redis-benchmark -p $port -c 16 -n "$n" -r 10000 -q \
    "$command" "$2" 3 'rl:{u:__rand_int__}:minute' 'rl:{u:__rand_int__}:hour' 'rl:{u:__rand_int__}:day' \
    take "$alg" 3 0 -1 30000 m "$3" 0 0 0 1000000000 60000 1000000000 3600000 1000000000 86400000 >/dev/null
  local line stat
  stat=${command,,}
  line=$(redis-cli -p $port INFO commandstats | grep "^cmdstat_$stat:")
  printf '%-40s %s\n' "$1" "$(echo "$line" | sed "s/^cmdstat_$stat://; s/,rejected_calls.*//")"
}
echo "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), $n decisions per run, algorithm $alg, 16 clients"
run "decide (quota_batch = 0)" "$sha" 0
run "decide + reserve 20 (quota_batch)" "$sha" 20
run "floor: the same commands, no logic" "$floor" 0
if [ "$has_functions" -gt 0 ]; then
  run "decide as a Redis Function (FCALL)" decide 0 FCALL
  run "decide + reserve 20, FCALL" decide 20 FCALL
fi
