#!/usr/bin/env bash
# Memory at many distinct users (issue #10): tiergate's RSS as 100,000 distinct JWT users each make
# one request, then as another 100,000 new users do (which must leave it flat), on the memory store
# and on the Redis store. Each user is a distinct `sub` on tier `free`, requesting `/api/items`
# (class `api`: the minute, hour and day windows and the concurrency cap, the most state one user
# can hold), over keep-alive connections from a Python asyncio client; tokens are minted in the same
# process (stdlib HS256). VmRSS and VmHWM come from /proc/PID/status of tiergate (`--workers 1`)
# after each quarter of a phase (25,000 users).
#
# Everything listens on free loopback ports (never the fixed bench ports); the upstream is
# `tiergate echo` and the Redis store's `redis-server` is started here; all of it is killed on exit.
# Needs: python3, redis-server, redis-cli, curl, a release build (built here when missing; TIERGATE_BIN
# names another binary, e.g. a build of an older commit to compare).
# Usage: scripts/rss-users.sh [users per phase=100000] [store=both|memory|redis]
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-100000}
stores=${2:-both}
[ "$stores" = both ] && stores="memory redis"
bin=${TIERGATE_BIN:-target/release/tiergate}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for tool in python3 redis-server redis-cli curl; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x "$bin" ] || cargo build --release

read -r redis_port proxy_port admin_port echo_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()
EOF
)
export JWT_SECRET_KEY="rss-secret-0123456789abcdef0123456789"

"$bin" --workers 1 echo --listen "127.0.0.1:$echo_port" >/dev/null 2>&1 &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
until redis-cli -p "$redis_port" PING >/dev/null 2>&1; do sleep 0.05; done

# The driver: mints tokens, sends one request per user over keep-alive connections, and prints one
# table row per 25,000 users (and at 0). Args: tiergate pid, proxy port, users per phase, label.
cat > "$work/drive.py" <<'EOF'
import asyncio, base64, hashlib, hmac, json, os, sys, time

pid, port, per_phase, label = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
secret = os.environ["JWT_SECRET_KEY"].encode()
exp = int(time.time()) + 4 * 3600
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())

def token(i):
    body = b64(json.dumps({"sub": f"rss-user-{i:07d}", "tier": "free", "exp": exp}, separators=(",", ":")).encode())
    signing = head + b"." + body
    return signing + b"." + b64(hmac.new(secret, signing, hashlib.sha256).digest())

def status():
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                fields[k] = int(v.split()[0])
    return fields["VmRSS"], fields["VmHWM"]

def row(done, seconds):
    rss, hwm = status()
    print(f"| {label} | {done:,} | {rss / 1024:.1f} | {hwm / 1024:.1f} | {seconds:.1f} |", flush=True)

async def worker(ids, bad):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in ids:
        writer.write(b"GET /api/items HTTP/1.1\r\nHost: rss\r\nAuthorization: Bearer " + token(i) + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            bad.append(head.split(b"\r\n", 1)[0].decode())
    writer.close()

async def main():
    conns, step, bad = 32, max(1, per_phase // 4), []
    start = time.monotonic()
    row(0, 0.0)
    for first in range(0, 2 * per_phase, step):
        ids = range(first, min(first + step, 2 * per_phase))
        await asyncio.gather(*(worker(ids[c::conns], bad) for c in range(conns)))
        await asyncio.sleep(0.5)  # let the last responses' buffers go back
        row(ids[-1] + 1, time.monotonic() - start)
    if bad:
        sys.exit(f"{label}: {len(bad)} requests were not 200, e.g. {bad[0]}")

asyncio.run(main())
EOF

run_store() { # store
  local store=$1 cfg="$work/tiergate.$1.toml"
  local backend='backend = "memory"'
  if [ "$store" = redis ]; then
    backend="backend = \"redis\"\nurl = \"redis://127.0.0.1:$redis_port/0\""
    redis-cli -p "$redis_port" FLUSHALL >/dev/null
  fi
  sed -e "s#^listen = .*#listen = \"127.0.0.1:$proxy_port\"#" \
      -e "s#^admin_listen = .*#admin_listen = \"127.0.0.1:$admin_port\"#" \
      -e "s#^upstream = .*#upstream = \"http://127.0.0.1:$echo_port\"#" \
      -e "s#^backend = .*#$backend#" config.toml > "$cfg"
  RUST_LOG=warn "$bin" --workers 1 run --config "$cfg" >/dev/null 2>"$work/tiergate.$store.err" &
  local tg=$!
  pids+=("$tg")
  for _ in $(seq 1 200); do curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break; sleep 0.05; done
  curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" || { tail -5 "$work/tiergate.$store.err" >&2; exit 1; }
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break; sleep 0.05; done
  timeout --kill-after=5 900 python3 "$work/drive.py" "$tg" "$proxy_port" "$users" "$store"
  kill -TERM "$tg"; wait "$tg" || true
}

label=${TIERGATE_BIN:+$bin}
echo "tiergate ${label:-$(git rev-parse --short HEAD)}, $(nproc) cores, $(date -u +%Y-%m-%d); users 0..$users then $users more"
echo
echo "| store | distinct users | VmRSS MiB | VmHWM MiB | seconds |"
echo "|---|---|---|---|---|"
for store in $stores; do run_store "$store"; done
