#!/usr/bin/env bash
# Two racks of two hosts, for real: four network namespaces ("hosts"), a bridge per rack
# (in a namespace of its own), veth cables, and tbf rate limits — host cables at HOST_RATE,
# the one inter-rack cable at INTER_RATE. One topoccl rank per host, placed the worst way
# for a ring (racks alternate: rank 0 rack 0, rank 1 rack 1, …).
#
# It runs `topoccl bench allreduce` twice — a flat ring in rank order (TOPOCCL_ALGO), and
# the runtime's own choice given the topology file (TOPOCCL_TOPO) — and `topoccl plan
# compare` on the same file for the prediction, then prints a table and a RESULT line.
#
# Usage: scripts/netns-racks.sh TOPOCCL_BINARY [WORKDIR]
# Env: HOST_RATE (default 800mbit), INTER_RATE (200mbit), SIZE (4M), ITERS (3)
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-racks.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
host_rate=${HOST_RATE:-800mbit}
inter_rate=${INTER_RATE:-200mbit}
size=${SIZE:-4M}
iters=${ITERS:-3}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$inter_rate"
netns_topology "$work/racks.toml" "Written by scripts/netns-racks.sh: 2 racks × 2 hosts, tbf-shaped veth cables." \
  "$host_rate" "$inter_rate"
netns_store

netns_job flat "$size" "$iters" TOPOCCL_ALGO=allreduce:ring || netns_job_failed flat
netns_job aware "$size" "$iters" TOPOCCL_TOPO="$work/racks.toml" || netns_job_failed aware
read -r flat_us _ < <(row "$work/flat.txt")
read -r aware_us aware_algo < <(row "$work/aware.txt")
"$bin" plan compare --topo "$work/racks.toml" --size "$size" --json "$work/compare.json" > "$work/compare.txt"
# The table is sorted fastest first; times in ms.
read -r pred_ring pred_best best_label < <(awk '
  !/^#/ && $1 != "algorithm" { if (!best) { best = $3 * 1000; label = $1 } if ($1 == "ring") ring = $3 * 1000 }
  END { print ring, best, label }' "$work/compare.txt")
cat "$work/compare.txt"
awk -v fr="$flat_us" -v ar="$aware_us" -v pr="$pred_ring" -v pb="$pred_best" -v al="$aware_algo" -v bl="$best_label" \
  -v hr="$host_rate" -v ir="$inter_rate" -v sz="$size" 'BEGIN {
  printf "\n| plan | predicted (ms) | measured (ms) |\n|---|---:|---:|\n"
  printf "| flat ring, worst placement | %.1f | %.1f |\n", pr / 1000, fr / 1000
  printf "| runtime choice with the topology (%s; model best: %s) | %.1f | %.1f |\n", al, bl, pb / 1000, ar / 1000
  printf "| speedup | %.2f× | %.2f× |\n", pr / pb, fr / ar
  printf "RESULT predicted=%.4f measured=%.4f flat_us=%.1f aware_us=%.1f aware_algo=%s size=%s host=%s inter=%s\n",
    pr / pb, fr / ar, fr, ar, al, sz, hr, ir }'
