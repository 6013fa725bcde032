#!/usr/bin/env bash
# What the access log costs per admitted request, in CPU instructions (valgrind callgrind: exact and
# repeatable even on a busy machine), for log.access = none, refused and all. Admitted requests only:
# `refused` should cost nothing on them; `all` writes a line for each.
# Needs: valgrind, nginx (the upstream), curl, a release build. Usage: scripts/access-log-cost.sh [requests=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_cost_run

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
