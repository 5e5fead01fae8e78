#!/usr/bin/env bash
# All-reduce on one host: topoccl over shared memory, topoccl over TCP and Open MPI's
# shared-memory transport (vader), alternating in every round, plus the machine's memcpy
# bandwidth and a `--time-split` run of 2 ranks at 16 MiB in the same session.
# Usage: scripts/compare-shm.sh OUTDIR [ROUNDS] [RANKS...]       (default: 5 rounds, 2 4 8)
#   needs Open MPI and mpi_allreduce from the shared anchors' setup.sh (ANCHORS below),
#   and a release build: cargo build --release -p topoccl-cli && cargo build --release -p topoccl --examples
# Then: python3 scripts/medians.py OUTDIR topoccl-shm
set -euo pipefail
out=${1:?usage: compare-shm.sh OUTDIR [ROUNDS] [RANKS...]}
rounds=${2:-5}
ranks=("${@:3}")
[ ${#ranks[@]} -eq 0 ] && ranks=(2 4 8)
here=$(cd "$(dirname "$0")/.." && pwd)
anchors=${ANCHORS:-$HOME/.cache/topoccl-anchors}
topoccl=${TOPOCCL:-$here/target/release/topoccl}
memcpy=${MEMCPY:-$here/target/release/examples/memcpy}
max=${MAX:-16M}
max_bytes=$(numfmt --from=iec "$max")
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for n in "${ranks[@]}"; do
    TOPOCCL_TRANSPORT=shm "$topoccl" bench allreduce -N "$n" -a 3 -c 0 -b 8 -e "$max" -f 2 \
      > "$out/topoccl-shm_${n}_${round}.txt" 2>&1
    TOPOCCL_TRANSPORT=tcp "$topoccl" bench allreduce -N "$n" -a 3 -c 0 -b 8 -e "$max" -f 2 \
      > "$out/topoccl-tcp_${n}_${round}.txt" 2>&1
    mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np "$n" \
      "$anchors/bin/mpi_allreduce" 8 "$max_bytes" 20 > "$out/mpi_${n}_${round}.txt" 2>&1
  done
  "$memcpy" 16777216 50 > "$out/memcpy_${round}.txt"
  TOPOCCL_TRANSPORT=shm "$topoccl" bench allreduce -N 2 -a 3 -c 0 -b 16M -e 16M --time-split \
    > "$out/split_${round}.txt" 2>&1
done
