#!/usr/bin/env bash
# What one refused request costs, in CPU instructions (valgrind callgrind: exact and repeatable even
# on a busy machine): a flood of 429s from one anonymous caller whose `api` window admits nothing
# (memory store), with log.access = none and = refused. Under a 429 flood refusals are the hot path.
# Needs: valgrind, nginx (the upstream), curl, a release build. Usage: scripts/refusal-cost.sh [requests=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
start_cost_run

run() { # mode count: the api window admits nothing
  write_bench_config 100000 -e "s#^access = .*#access = \"$1\"#"
  sed -i 's#^api_calls_per_minute = 1000000000#api_calls_per_minute = 0#' "$work/tiergate.toml"
  RUST_LOG=info callgrind_run "$1" "$2" /api/items
}

printf '%-8s %14s %14s %16s\n' "access" "start+stop" "with $n" "instr/refusal"
for mode in none refused; do
  base=$(run "$mode" 0)
  with=$(run "$mode" "$n")
  printf '%-8s %14s %14s %16s\n' "$mode" "$base" "$with" "$(( (with - base) / n ))"
done
