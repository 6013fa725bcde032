#!/usr/bin/env bash
# What one admitted request costs, in CPU instructions (valgrind callgrind: exact and repeatable even
# on a busy machine), for one or more builds of tiergate side by side: the memory store, an anonymous
# caller on the bench tier (three windows and a concurrency cap), log.access = none, keep-alive.
# Use it to compare two builds of the hot path: copy the old binary away, rebuild, pass both.
# Needs: valgrind, nginx (the upstream), curl, a release build.
# Usage: scripts/request-cost.sh [BINARY...]   (default target/release/tiergate; N=2000 requests)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-2000}
work=$(mktemp -d)
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
[ $# -gt 0 ] || set -- target/release/tiergate
start_cost_run
write_bench_config 100000 -e 's#^access = .*#access = "none"#'
printf '%-40s %16s\n' "build" "instr/request"
for bin in "$@"; do
  base=$(TIERGATE_BIN=$bin callgrind_run cost 0 /api/items)
  with=$(TIERGATE_BIN=$bin callgrind_run cost "$n" /api/items)
  printf '%-40s %16s\n' "$bin" "$(( (with - base) / n ))"
done
