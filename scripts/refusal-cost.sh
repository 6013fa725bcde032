#!/usr/bin/env bash
# What one refused request costs, in CPU instructions (valgrind callgrind: exact and repeatable even
# on a busy machine): a flood of 429s from one anonymous caller whose `api` window admits nothing
# (memory store), with log.access = none and = refused. Under a 429 flood refusals are the hot path.
# Needs: valgrind, nginx (the upstream), curl, a release build. Usage: scripts/refusal-cost.sh [requests=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in valgrind nginx curl; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x target/release/tiergate ] || cargo build --release
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_upstream
sleep 0.5

# Instructions for one run of tiergate (start, `count` refused requests over keep-alive, SIGTERM).
run() {
  local mode=$1 count=$2 out="$work/cg.$1.$2"
  write_bench_config 100000 -e "s#^access = .*#access = \"$mode\"#"
  sed -i 's#^api_calls_per_minute = 1000000000#api_calls_per_minute = 0#' "$work/tiergate.toml"
  JWT_SECRET_KEY=cost-secret-0123456789abcdef RUST_LOG=info \
    valgrind --tool=callgrind --callgrind-out-file="$out" target/release/tiergate --workers 1 --config "$work/tiergate.toml" \
    >/dev/null 2>"$work/stderr.$mode" &
  local pid=$!
  for _ in $(seq 1 300); do curl -fs -o /dev/null http://127.0.0.1:19901/readyz && break; sleep 0.1; done
  if [ "$count" -gt 0 ]; then
    curl -s -o /dev/null "http://127.0.0.1:18080/api/items?[1-$count]"
  fi
  kill -TERM "$pid"; wait "$pid" || true
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

printf '%-8s %14s %14s %16s\n' "access" "start+stop" "with $n" "instr/refusal"
for mode in none refused; do
  base=$(run "$mode" 0)
  with=$(run "$mode" "$n")
  printf '%-8s %14s %14s %16s\n' "$mode" "$base" "$with" "$(( (with - base) / n ))"
done
