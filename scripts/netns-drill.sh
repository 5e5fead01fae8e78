#!/usr/bin/env bash
# The link drills of `topoccl drill` on namespaced hosts (scripts/netns-lib.sh: 2 racks × 2
# hosts, tbf-shaped veth cables, one rank per host), with the drill's rank program (a
# checked all-reduce, `topoccl internal drill-rank`) and TOPOCCL_TIMEOUT=1s:
#
# 1. cable down: once the job runs, `ip link set … down` on the host of rank 2; every
#    other rank must stop with an error naming rank 2 within the deadline + 1 s (2 s).
# 2. rate drop: once the job runs, the tbf of rank 1's host cable drops from HOST_RATE to
#    SLOW_RATE; the job must finish with every result correct, slower.
#
# 3. around a dead route (elastic): `ip route add unreachable` between the hosts of ranks 1
#    and 2, both ways, once the job runs; the ranks shrink, keep all four, and finish
#    around the link.
#
# Prints a RESULT line: detect_ms (cable down → first error seen), named (1 when every
# survivor named rank 2 and no one else), named_any (1 when one did), slowdown (iteration time after / before the
# rate drop), rate_ok (1 when the job finished correct), around_ok (1 when all four ranks
# of the elastic job finished correct), around_dead (1 when rank 0 went on with 4 ranks
# and the link 1-2 dead).
# Usage: scripts/netns-drill.sh TOPOCCL_BINARY [WORKDIR]
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-drill.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
host_rate=${HOST_RATE:-800mbit}
slow_rate=${SLOW_RATE:-50mbit}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$host_rate"
netns_store

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# drill_job NAME ITERS [ENV…]: the rank program on every host, in the background (pids in
# `pids`), with the extra environment given.
drill_job() {
  local name=$1 iters=$2 r
  shift 2
  pids=()
  for r in 0 1 2 3; do
    ip netns exec "$(ns "h${hosts[$r]}")" env "$@" TOPOCCL_STORE=tcp://10.77.0.1:29400 \
      TOPOCCL_JOB_ID="$name-$$" TOPOCCL_RANK="$r" TOPOCCL_WORLD_SIZE=4 TOPOCCL_LOCAL_RANK=0 \
      TOPOCCL_LOCAL_WORLD_SIZE=1 TOPOCCL_TIMEOUT=1s TOPOCCL_ALGO=allreduce:ring TOPOCCL_PROBE=0 \
      "$bin" internal drill-rank --count 65536 --iters "$iters" \
      > "$work/$name.$r.txt" 2> "$work/$name.$r.err" &
    pids+=($!)
  done
}

# waits until rank 0 of job NAME has finished ITER iterations (30 s at most).
wait_iter() {
  local i
  for i in $(seq 1 600); do
    if grep -q "^it $2 " "$work/$1.0.txt" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "job $1 never reached iteration $2:"; tail -n 3 "$work/$1".*.err; exit 1
}

# 1. A host's cable goes down.
drill_job down 1000000
wait_iter down 20
t0=$(now_ms)
ip -n "$(ns "h${hosts[2]}")" link set "${tag}v${hosts[2]}" down
t1=
for _ in $(seq 1 400); do
  if grep -q '^drill-error' "$work"/down.[013].txt; then t1=$(now_ms); break; fi
  sleep 0.01
done
# The survivors end on their own; rank 2 (cut off) is stopped here.
for r in 0 1 3; do
  for _ in $(seq 1 100); do kill -0 "${pids[$r]}" 2>/dev/null || break; sleep 0.05; done
done
kill "${pids[2]}" 2>/dev/null || true
for p in "${pids[@]}"; do wait "$p" || true; done
ip -n "$(ns "h${hosts[2]}")" link set "${tag}v${hosts[2]}" up
detect_ms=${t1:+$((t1 - t0))}
named=1 named_any=0
for r in 0 1 3; do
  if grep -q '^drill-error .*culprits=2 ' "$work/down.$r.txt"; then named_any=1; else named=0; fi
  echo "rank $r: $(grep '^drill-error' "$work/down.$r.txt" || echo 'no error')"
done

# 2. A host cable's rate drops (the ring goes on, slower).
drill_job slow 400
wait_iter slow 100
h=${hosts[1]}
ip netns exec "$(ns "h$h")" tc qdisc change dev "${tag}v$h" root tbf rate "$slow_rate" burst 128kb latency 200ms
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
rate_ok=0
if [ $failed = 0 ] && grep -q '^drill-done' "$work/slow.0.txt" && ! grep -q '^drill-wrong' "$work"/slow.*.txt; then
  rate_ok=1
fi
# Median iteration time (µs) of rank 0 before the drop and over its last 100 iterations.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
before=$(awk '$1 == "it" && $2 < 100 { print $4 / 1000 }' "$work/slow.0.txt" | median)
after=$(awk '$1 == "it" && $2 >= 300 { print $4 / 1000 }' "$work/slow.0.txt" | median)
slowdown=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a / b }')

# 3. Elastic: the route between the hosts of ranks 1 and 2 becomes unreachable both ways
#    (each host still reaches the others and the store). The survivors shrink, keep all
#    four ranks with the link 1-2 dead, and finish around it.
drill_job around 400 TOPOCCL_ELASTIC=1 TOPOCCL_HEARTBEAT=50ms
wait_iter around 100
ip1=10.77.0.$((hosts[1] + 1)) ip2=10.77.0.$((hosts[2] + 1))
ip -n "$(ns "h${hosts[1]}")" route add unreachable "$ip2/32"
ip -n "$(ns "h${hosts[2]}")" route add unreachable "$ip1/32"
around_failed=0
for p in "${pids[@]}"; do wait "$p" || around_failed=1; done
ip -n "$(ns "h${hosts[1]}")" route del unreachable "$ip2/32"
ip -n "$(ns "h${hosts[2]}")" route del unreachable "$ip1/32"
around_ok=0
if [ $around_failed = 0 ] && [ "$(cat "$work"/around.*.txt | grep -c '^drill-done')" = 4 ] \
  && ! grep -q '^drill-wrong' "$work"/around.*.txt; then
  around_ok=1
fi
around_dead=0
if grep -q '^drill-shrunk .*world=4 dead=1-2' "$work/around.0.txt"; then around_dead=1; fi
for r in 0 1 2 3; do
  echo "around, rank $r: $(grep '^drill-shrunk' "$work/around.$r.txt" | tr '\n' ' ')$(grep -c '^drill-done' "$work/around.$r.txt") done"
done

echo "cable down: first error after ${detect_ms:-never} ms; rate drop $host_rate -> $slow_rate: ${before} µs -> ${after} µs per iteration"
echo "RESULT detect_ms=${detect_ms:--1} named=$named named_any=$named_any slowdown=$slowdown rate_ok=$rate_ok around_ok=$around_ok around_dead=$around_dead"
