#!/usr/bin/env bash
# Side-by-side: tiergate (memory store) vs nginx limit_req, and the upstream alone, behind the same
# nginx upstream on loopback: scripts/bench.sh with those three targets (see there for what is
# measured, and for the other peers). Writes target/bench/results-*.tsv and .svg like bench.sh.
# Usage: scripts/compare-nginx.sh [seconds=10] [connections=32]
set -euo pipefail
exec "$(dirname "$0")/bench.sh" --only direct,nginx,tiergate-memory "${1:-10}" "${2:-32}"
