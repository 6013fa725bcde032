#!/usr/bin/env bash
# What the access log costs per admitted request, in CPU instructions (valgrind callgrind: exact and
# repeatable even on a busy machine), for log.access = none, refused and all. Admitted requests only:
# `refused` should cost nothing on them; `all` writes a line for each.
# Needs: valgrind, nginx (the upstream), curl, a release build. Usage: scripts/access-log-cost.sh [requests=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in valgrind nginx curl; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x target/release/tiergate ] || cargo build --release
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
use_free_ports
start_upstream
sleep 0.5

run() { # mode count
  write_bench_config 100000 -e "s#^access = .*#access = \"$1\"#"
  callgrind_run "$1" "$2" /api/items -f
}

printf '%-8s %14s %14s %16s\n' "access" "start+stop" "with $n" "instr/request"
for mode in none refused all; do
  base=$(run "$mode" 0)
  with=$(run "$mode" "$n")
  printf '%-8s %14s %14s %16s\n' "$mode" "$base" "$with" "$(( (with - base) / n ))"
done
