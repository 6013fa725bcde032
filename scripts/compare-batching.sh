#!/usr/bin/env bash
# Quota batching end to end, in one run: nginx `limit_req`, then tiergate on the memory store, on the
# Redis store without batching, and on the Redis store with `quota_batch`, all proxying to the same
# nginx upstream: scripts/bench.sh with those four targets (see there for what is measured). One
# heavy caller (every wrk connection is the same anonymous identity), the case batching is for; see
# scripts/mixed-batching.sh for many light callers.
# Usage: scripts/compare-batching.sh [seconds=10] [connections=32] [quota_batch=20]
set -euo pipefail
QUOTA_BATCH=${3:-20} exec "$(dirname "$0")/bench.sh" --only nginx,tiergate-memory,tiergate-redis,tiergate-redis-batch \
  "${1:-10}" "${2:-32}"
