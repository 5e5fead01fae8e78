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
tag=tr$$
ns() { echo "${tag}$1"; }
made=()

cleanup() {
  for n in "${made[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "${store_pid:-}" ]; then kill "$store_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "network namespaces need root"
command -v ip >/dev/null && command -v tc >/dev/null || skip "iproute2 (ip, tc) is not installed"
ip netns add "$(ns probe)" 2>/dev/null || skip "cannot create a network namespace here"
made+=("$(ns probe)")

# rate-limits the egress of DEV in namespace NS (tbf: netem is not available here).
shape() {
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$3" burst 128kb latency 200ms
}

for k in 0 1; do
  r=$(ns rack$k); ip netns add "$r"; made+=("$r")
  ip -n "$r" link add br0 type bridge
  ip -n "$r" link set br0 up
done
for h in 0 1 2 3; do
  k=$((h / 2)); n=$(ns h$h); r=$(ns rack$k)
  ip netns add "$n"; made+=("$n")
  ip link add "${tag}v$h" type veth peer name "${tag}s$h"
  ip link set "${tag}v$h" netns "$n"
  ip link set "${tag}s$h" netns "$r"
  ip -n "$n" link set lo up
  ip -n "$n" addr add "10.77.0.$((h + 1))/24" dev "${tag}v$h"
  ip -n "$n" link set "${tag}v$h" up
  ip -n "$r" link set "${tag}s$h" master br0
  ip -n "$r" link set "${tag}s$h" up
  shape "$n" "${tag}v$h" "$host_rate"
  shape "$r" "${tag}s$h" "$host_rate"
done
ip link add "${tag}x0" type veth peer name "${tag}x1"
for k in 0 1; do
  r=$(ns rack$k)
  ip link set "${tag}x$k" netns "$r"
  ip -n "$r" link set "${tag}x$k" master br0
  ip -n "$r" link set "${tag}x$k" up
  shape "$r" "${tag}x$k" "$inter_rate"
done

# Ranks alternate racks: rank 0 on h0 (rack 0), rank 1 on h2 (rack 1), rank 2 on h1, rank 3 on h3.
hosts=(0 2 1 3)
gbps() { awk -v r="$1" 'BEGIN { n = r + 0; u = r; sub(/^[0-9.]+/, "", u);
  m = (u == "gbit") ? 1 : (u == "mbit") ? 1e-3 : (u == "kbit") ? 1e-6 : 1e-9; printf "%gGbps", n * m }'; }
cat > "$work/racks.toml" <<EOF
# Written by scripts/netns-racks.sh: 2 racks × 2 hosts, tbf-shaped veth cables.
name = "netns-racks"
ranks = ["h0", "h2", "h1", "h3"]

[[node]]
name = "leaf0"
kind = "switch"
tier = "leaf"

[[node]]
name = "leaf1"
kind = "switch"
tier = "leaf"

[[link]]
a = "leaf0"
b = "leaf1"
bandwidth = "$(gbps "$inter_rate")"
latency = "20us"
EOF
for h in 0 1 2 3; do
  cat >> "$work/racks.toml" <<EOF

[[node]]
name = "h$h"
kind = "host"
zone = "rack$((h / 2))"

[[link]]
a = "h$h"
b = "leaf$((h / 2))"
bandwidth = "$(gbps "$host_rate")"
latency = "20us"
EOF
done

ip netns exec "$(ns h0)" "$bin" store --listen 10.77.0.1:29400 > "$work/store.log" 2>&1 &
store_pid=$!
sleep 0.5

# run_job NAME ENV...: one rank per host namespace; rank 0's report goes to WORK/NAME.txt.
run_job() {
  local name=$1; shift
  local pids=()
  for r in 0 1 2 3; do
    ip netns exec "$(ns h${hosts[$r]})" env "$@" \
      TOPOCCL_STORE=tcp://10.77.0.1:29400 TOPOCCL_JOB_ID="$name-$$" \
      TOPOCCL_RANK=$r TOPOCCL_WORLD_SIZE=4 TOPOCCL_LOCAL_RANK=0 TOPOCCL_LOCAL_WORLD_SIZE=1 \
      TOPOCCL_TIMEOUT=120s \
      "$bin" bench allreduce -b "$size" -e "$size" --iters "$iters" --warmup 1 --check \
      > "$work/$name.$r.txt" 2>&1 &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  if [ $failed = 1 ]; then
    echo "job $name failed:"; tail -n 5 "$work/$name".*.txt; exit 1
  fi
  cp "$work/$name.0.txt" "$work/$name.txt"
}

# time (µs, out of place) and algorithm of the single row of a bench report
row() { awk '!/^#/ && NF >= 14 { print $6, $NF }' "$1"; }

run_job flat TOPOCCL_ALGO=allreduce:ring
run_job aware TOPOCCL_TOPO="$work/racks.toml"
read -r flat_us flat_algo < <(row "$work/flat.txt")
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
