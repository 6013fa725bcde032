#!/usr/bin/env bash
# CPU per request against nginx's, on a noisy machine: runs scripts/bench.sh ROUNDS times over nginx
# and the given targets, in order (nginx first) in odd rounds and in reverse (nginx last) in even ones,
# so a drift in the host's speed favours no target over another, and prints each round's CPU µs per
# request with its ratio to nginx's in that same round, then the median ratio per target. One bench.sh run measures its targets one after
# another, so a host whose speed changes from minute to minute (this one's nginx row varied by 25 %
# between runs) moves a single run's ratio; the median over rounds is the figure to quote. With two
# or more targets it also prints each later target's requests per second as a share of the first
# target's in the same round (e.g. the batched Redis store against the memory store), and its median.
#
# Usage: scripts/bench-rounds.sh ROUNDS TARGET[,TARGET...] [SECS [CONNS]]
#   e.g. QUOTA_BATCH=100 scripts/bench-rounds.sh 7 tiergate-memory,tiergate-redis-batch 5
#   Environment as for scripts/bench.sh (QUOTA_BATCH, TIERGATE_BIN, BENCH_OUT, ...). Each round's
#   results file stays where scripts/bench.sh writes it; their names are printed at the end.
# Needs: what scripts/bench.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '/^# Usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' | sed '$d'; }
[ $# -ge 2 ] || { usage >&2; exit 64; }
rounds=$1 targets=$2; shift 2
case $rounds in '' | *[!0-9]* | 0) echo "ROUNDS is a whole number above 0" >&2; exit 64 ;; esac
case ",$targets," in *,nginx,*) echo "nginx is always measured; name only the others" >&2; exit 64 ;; esac
files=()
for r in $(seq 1 "$rounds"); do
  order="nginx,$targets"
  [ $((r % 2)) = 1 ] || order=$(tr ',' '\n' <<<"$order" | tac | paste -sd, -)
  echo "round $r/$rounds: $order" >&2
  results=$(./scripts/bench.sh --only "$order" "$@" | awk '/^results: / {print $2}')
  [ -n "$results" ] || { echo "round $r: scripts/bench.sh wrote no results" >&2; exit 1; }
  files+=("$results")
done
python3 - "$targets" "${files[@]}" <<'EOF'
import statistics, sys
targets = sys.argv[1].split(",")
ratios, cpus, shares = {}, {}, {}
print(f"{'round':<6} {'target':<24} {'CPU µs/req':>10} {'÷ nginx':>8} {'Redis/req':>9}")
for i, path in enumerate(sys.argv[2:], 1):
    rows = {}
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if not l.startswith("#")]
    head = lines[0]
    for cols in lines[1:]:
        rows[cols[0]] = dict(zip(head, cols))
    if "nginx" not in rows:
        print(f"{i:<6} (no nginx row: see the skipped lines in {path})")
        continue
    nginx = float(rows["nginx"]["cpu_us_per_request"])
    for t, row in rows.items():
        cpu = float(row["cpu_us_per_request"])
        ratio = cpu / nginx
        cpus.setdefault(t, []).append(cpu)
        ratios.setdefault(t, []).append(ratio)
        print(f"{i:<6} {t:<24} {cpu:>10.1f} {ratio:>7.2f}× {row['redis_trips_per_request']:>9}")
    first = rows.get(targets[0])
    for t in targets[1:]:
        if first and t in rows and float(first["requests_per_s"]) > 0:
            shares.setdefault(t, []).append(float(rows[t]["requests_per_s"]) / float(first["requests_per_s"]))
print()
print(f"{'median':<6} {'target':<24} {'CPU µs/req':>10} {'÷ nginx':>8}   range of ÷ nginx")
for t in ratios:
    r = ratios[t]
    print(f"{'':<6} {t:<24} {statistics.median(cpus[t]):>10.1f} {statistics.median(r):>7.2f}×   {min(r):.2f}–{max(r):.2f}")
if shares:
    print()
    print(f"{'median':<6} {'requests/s ÷ ' + targets[0]:<35}   per round")
    for t, r in shares.items():
        rounds = " ".join(f"{x:.2f}" for x in r)
        print(f"{'':<6} {t:<24} {statistics.median(r):>10.2f}   {rounds}")
print()
print("results files:", " ".join(sys.argv[2:]))
EOF
