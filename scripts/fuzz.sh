#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (FUZZ_SECONDS, default 20).
# Needs the nightly toolchain; installs cargo-fuzz (crates.io) when it is missing. Without nightly it
# says so and exits 0: fuzzing is a bounded extra in the suite, and runs longer by hand:
#   FUZZ_PROFILE=release FUZZ_SECONDS=600 ./scripts/fuzz.sh             # every target, 10 minutes each
#   FUZZ_PROFILE=release FUZZ_SECONDS=600 ./scripts/fuzz.sh path token  # some targets
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
# The suite's short runs build in the dev profile (about 1.5 min instead of 4 on 2 cores); long runs
# by hand should use FUZZ_PROFILE=release, which executes several times faster.
profile=()
[ "${FUZZ_PROFILE:-dev}" = "dev" ] && profile=(--dev)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: SKIPPED: no nightly toolchain (rustup toolchain install nightly), so no fuzzing ran"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (crates.io)"
  if ! cargo install cargo-fuzz --locked --quiet; then
    echo "fuzz.sh: SKIPPED: cargo-fuzz could not be installed, so no fuzzing ran"
    exit 0
  fi
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi
# Debug assertions stay on (they check the properties); no sanitizer: the crate forbids unsafe code,
# and the build is several times faster.
cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none --debug-assertions "${profile[@]}"
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  rm -rf "fuzz/artifacts/$t"
  echo "fuzz.sh: $t for ${seconds}s"
  # Committed seeds (fuzz/seeds/TARGET), when a target has them, start it past what random bytes
  # take minutes to find; new inputs go to fuzz/corpus/TARGET only.
  corpora=("fuzz/corpus/$t")
  [ -d "fuzz/seeds/$t" ] && corpora+=("fuzz/seeds/$t")
  cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none --debug-assertions "${profile[@]}" "$t" "${corpora[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|thread|SUMMARY)|panicked|Done' || true
  # cargo fuzz exits non-zero on a crash; the pipeline above hides it, so check for artifacts.
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "fuzz.sh: $t FOUND A CRASH: see fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each: no crash"
