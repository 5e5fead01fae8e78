#!/usr/bin/env bash
# All-reduce side by side: topoccl bench, torch.distributed Gloo and Open MPI (TCP only),
# alternating systems in every round, plus the loopback TCP ceiling (iperf3 --bidir).
# Usage: scripts/compare-allreduce.sh OUTDIR [ROUNDS] [RANKS...]
#   needs the reference systems from the shared anchors' setup.sh (ANCHORS, SCRIPTS below)
# Then: python3 scripts/medians.py OUTDIR
set -euo pipefail
out=${1:?usage: compare-allreduce.sh OUTDIR [ROUNDS] [RANKS...]}
rounds=${2:-5}
ranks=("${@:3}")
[ ${#ranks[@]} -eq 0 ] && ranks=(2 4)
here=$(cd "$(dirname "$0")/.." && pwd)
anchors=${ANCHORS:-$HOME/.cache/topoccl-anchors}
scripts=${SCRIPTS:-$here/../shared/anchors}
topoccl=${TOPOCCL:-$here/target/release/topoccl}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for n in "${ranks[@]}"; do
    "$topoccl" bench allreduce -N "$n" -a 3 -c 0 -b 8 -e 64M -f 2 > "$out/topoccl_${n}_${round}.txt" 2>&1
    "$anchors/bin/python" "$scripts/gloo_allreduce.py" "$n" 8 67108864 20 > "$out/gloo_${n}_${round}.txt" 2>&1
    mpirun --allow-run-as-root --oversubscribe --mca btl tcp,self -np "$n" \
      "$anchors/bin/mpi_allreduce" 8 67108864 20 > "$out/mpi_${n}_${round}.txt" 2>&1
  done
  iperf3 -s -D -1 -p 5299; sleep 0.5
  iperf3 -c 127.0.0.1 -p 5299 -t 5 --bidir > "$out/iperf_${round}.txt" 2>&1; sleep 1
  iperf3 -s -D -1 -p 5299; sleep 0.5
  iperf3 -c 127.0.0.1 -p 5299 -t 5 --bidir -l 1M > "$out/iperf1m_${round}.txt" 2>&1; sleep 1
done
