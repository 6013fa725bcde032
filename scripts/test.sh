#!/usr/bin/env bash
# Runs tiergate's whole test suite: formatting, lints, unit and integration tests.
# Installs what the tests need when it is missing (redis-server, chromium, iproute2, iptables from
# Debian packages).
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "test.sh: need root to run: $*" >&2; return 1; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server (Debian package)"
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq redis-server >/dev/null
fi
# The packaged service is not needed: tests start their own redis-server processes on free ports.
if ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing chromium (Debian package; the status page is tested in a headless browser)"
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq chromium >/dev/null 2>&1 || {
    need_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq chromium >/dev/null
  }
fi

# The multi-host fault tests (tests/netns.rs) build hosts from network namespaces (iproute2's `ip`)
# and drop packets with iptables inside them. They run only as root (elsewhere they say SKIPPED and
# pass), so only root installs these.
if [ "$(id -u)" -eq 0 ] && ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  echo "test.sh: installing iproute2 (Debian package; tests/netns.rs runs hosts in network namespaces)"
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq iproute2 >/dev/null 2>&1 || {
    need_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq iproute2 >/dev/null
  }
fi
if [ "$(id -u)" -eq 0 ] && ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
  echo "test.sh: installing iptables (Debian package; tests/netns.rs drops packets inside network namespaces)"
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq iptables >/dev/null 2>&1 || {
    need_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq iptables >/dev/null
  }
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "test.sh: cargo test"
cargo test --all-targets "$@"
echo "test.sh: fuzzing, bounded (scripts/fuzz.sh; skipped with a message where nightly is missing)"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" ./scripts/fuzz.sh
echo "test.sh: deployment assets (Dockerfile, k8s/, monitoring/)"
TIERGATE_BIN=target/debug/tiergate ./scripts/check-deploy.sh
echo "test.sh: k6 smoke test against tiergate demo (+ promtool check metrics on its live scrape)"
TIERGATE_BIN=target/debug/tiergate ./scripts/k6-smoke.sh
echo "test.sh: 60 s soak on the Redis store (scripts/soak.sh: RSS, descriptors, key TTLs)"
DURATION="${SOAK_SECONDS:-60}" TIERGATE_BIN=target/debug/tiergate ./scripts/soak.sh
