#!/usr/bin/env bash
# The simulator's speed goals, measured: `topoccl sim` of a 16 MiB all-reduce with each
# algorithm on the 16,384- and 131,072-GPU fat-trees, RUNS times each, one after another
# (never in parallel: the machine has two cores and the runs would time each other).
# Prints one markdown row per case: median and range of wall time, the largest peak
# resident size, and the simulated time (the same every run: the simulator is
# deterministic).
#
# Usage: scripts/sim-speed.sh TOPOCCL_BINARY [RUNS]
# Env: TOPOS (default: the two example fat-trees), ALGOS (ring rhd tree hier(direct|rhd) hier)
set -euo pipefail
bin=$(realpath "${1:?usage: sim-speed.sh TOPOCCL_BINARY [RUNS]}")
runs=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
topos=${TOPOS:-"$here/examples/topologies/fat-tree-16k.toml $here/examples/topologies/fat-tree-128k.toml"}
read -r -a algos <<< "${ALGOS:-ring rhd tree hier(direct|rhd) hier}"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time)"; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "| topology | --algo | wall s, median (min–max) | peak RSS MiB | simulated ms |"
echo "|---|---|---|---:|---:|"
for topo in $topos; do
  for algo in "${algos[@]}"; do
    walls=()
    rss=0
    sim=""
    for _ in $(seq "$runs"); do
      /usr/bin/time -f "%e %M" -o "$out.time" "$bin" sim --topo "$topo" --size 16M \
        --algo "$algo" > "$out" 2>&1
      read -r wall kb < "$out.time"
      walls+=("$wall")
      [ "$kb" -gt "$rss" ] && rss=$kb
      sim=$(awk '/^time / { print $2 }' "$out")
    done
    stats=$(printf '%s\n' "${walls[@]}" | sort -g | awk '
      { v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
        printf "%.2f (%.2f–%.2f)", m, v[1], v[NR] }')
    printf '| %s | %s | %s | %d | %s |\n' "$(basename "$topo" .toml)" "${algo//|/\\|}" "$stats" \
      $((rss / 1024)) "$sim"
  done
done
rm -f "$out.time"
