#!/usr/bin/env bash
# The simulator against the runtime on real (namespaced) hosts: the two racks of
# netns-lib.sh, tbf-shaped cables, one rank per host placed the worst way for a ring. For
# each size it measures `topoccl bench allreduce` for a flat ring in rank order and for
# the runtime's own choice given the topology file (TOPOCCL_TOPO), simulates the same two
# plans with `topoccl sim` on that file, and prints a markdown table of simulated time,
# measured median (over RUNS jobs, each timing ITERS calls) and the error.
#
# Same plan on both sides: `sim --algo LABEL` builds LABEL without pipelining, which a
# TOPOCCL_RULES rule naming LABEL (and no chunk_bytes) makes the runtime run too. Ranks 1–3
# of every measured job are pinned to LABEL that way while rank 0 picks for itself, and the
# runtime aborts a call whose ranks run different plans (algorithm, pipelining and
# channels are in every message's fingerprint): a job that completes proves rank 0's own
# choice is LABEL's plan. LABEL is found by trying `plan compare`'s candidates in order,
# and, where the runtime pipelines its choice in N pieces, LABEL/N (`sim --pipeline-chunks
# N`, a rule's chunk_bytes for the same N).
#
# Cables carrying TCP both ways at once lose part of each direction's rate; the script
# measures that share (a 2-rank broadcast against a 2-rank all-to-all moving the same bytes
# each way) and gives it to the simulator as each cable's `duplex`.
#
# Usage: scripts/netns-sim-check.sh TOPOCCL_BINARY [WORKDIR]
# Env: SIZES ("4M 16M 64M"), ITERS (5), RUNS (3), HOST_RATE (800mbit), INTER_RATE (200mbit)
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-sim-check.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
work=$(realpath "$work")
host_rate=${HOST_RATE:-800mbit}
inter_rate=${INTER_RATE:-200mbit}
read -r -a sizes <<< "${SIZES:-4M 16M 64M}"
iters=${ITERS:-5}
runs=${RUNS:-3}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$inter_rate"

# tbf meters what leaves a veth: whole Ethernet frames from the MAC header on (skb->len; no
# preamble, FCS or inter-frame gap on a veth, and GSO packets are metered as the frames
# they will become). A full TCP segment is MTU + 14 bytes of frame for MTU − 20 (IPv4) − 20
# (TCP) − 12 (the timestamp option, on by default) bytes of payload: with MTU 1500, 1448
# of every 1514 bytes, so a 200mbit tbf carries 200 × 1448/1514 = 191.3 Mbit/s of data.
# The topology file gives each cable that payload rate, the rate the plans' bytes really
# cross it at. ACKs and the handshake are left out: a bulk stream through the 200mbit
# cable moved 1.0456× its payload in wire bytes (1514/1448 = 1.0456) and reached
# 191.6 Mbit/s (the tbf burst lends the extra 0.2%).
mtus=$(for n in "${made[@]}"; do ip -n "$n" -o link show; done |
  sed -n "s/^[0-9]*: ${tag}[vsx][0-9].* mtu \([0-9]*\) .*/\1/p" | sort -u)
if [ -z "$mtus" ] || [ "$(echo "$mtus" | wc -l)" != 1 ]; then
  echo "cannot tell the cables' MTU (${mtus:-none found})"; exit 1
fi
stamps=$(ip netns exec "$(ns h0)" sysctl -n net.ipv4.tcp_timestamps)
payload=$((mtus - 20 - 20 - (stamps != 0 ? 12 : 0)))
frame=$((mtus + 14))
factor=$(awk -v p="$payload" -v f="$frame" 'BEGIN { printf "%.6f", p / f }')
echo "# MTU $mtus, TCP timestamps $stamps: $payload payload bytes per $frame-byte frame;" \
  "links at $factor × the tbf rate"

netns_store

# median of the numbers on stdin
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END {
  printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# duplex NAME HOST_A HOST_B SIZE TWICE_SIZE: the share of one direction's rate the path
# between two hosts keeps while it carries data both ways: RUNS jobs of a 2-rank broadcast
# of SIZE (one way) against RUNS of a 2-rank all-to-all of TWICE_SIZE (SIZE each way, at
# once), the ratio of the median times, at most 1.
duplex() {
  local name=$1 pair="$2 $3" size=$4 twice=$5 run one=() both=() us
  for run in $(seq "$runs"); do
    JOB_HOSTS=$pair JOB_COLLECTIVE=broadcast netns_job "duplex-$name-one-$run" "$size" \
      "$iters" || netns_job_failed "duplex-$name-one-$run"
    read -r us _ < <(row "$work/duplex-$name-one-$run.txt"); one+=("$us")
    JOB_HOSTS=$pair JOB_COLLECTIVE=alltoall netns_job "duplex-$name-both-$run" "$twice" \
      "$iters" || netns_job_failed "duplex-$name-both-$run"
    read -r us _ < <(row "$work/duplex-$name-both-$run.txt"); both+=("$us")
  done
  local m1 m2
  m1=$(echo "${one[*]}" | median); m2=$(echo "${both[*]}" | median)
  echo "# duplex of the $name path (h$2 - h$3): broadcast of $size ${one[*]} µs (median $m1)," \
    "all-to-all of $twice ${both[*]} µs (median $m2)" >&2
  awk -v a="$m1" -v b="$m2" 'BEGIN { d = a / b; printf "%.3f", (d > 1 ? 1 : d) }'
}
# Inside a rack (h0 - leaf0 - h1: host cables only) and across racks (h0 - h2: the
# inter-rack cable is the slowest link on the way), each moving about 0.7 s of data.
host_duplex=$(duplex host 0 1 64M 128M)
inter_duplex=$(duplex inter-rack 0 2 16M 32M)
echo "# duplex: host cables $host_duplex, inter-rack cable $inter_duplex"

netns_topology "$work/racks.toml" \
  "Written by scripts/netns-sim-check.sh: 2 racks × 2 hosts, tbf-shaped veth cables at their TCP payload rate ($host_rate and $inter_rate × $payload/$frame), duplex as measured." \
  "$host_rate" "$inter_rate" "$factor" "$host_duplex" "$inter_duplex"
# The same cables as full duplex: what the duplex share changes.
netns_topology "$work/racks-full.toml" \
  "Written by scripts/netns-sim-check.sh: the payload rates, full duplex." \
  "$host_rate" "$inter_rate" "$factor"

# The bytes of a SIZE all-reduce as the runtime and the simulator size it (rounded down to
# what splits evenly): plan compare's first line says it, "# allreduce of N B …".
bytes() { awk 'NR == 1 { print $4; exit }' "$work/compare.$1.txt"; }

# pin FILE SIZE LABEL[/N]: a TOPOCCL_RULES file that runs LABEL for all-reduces of SIZE
# only (the runtime's own small all-reduces stay its choice on every rank): unpipelined, or
# in N pieces (chunk_bytes: a rank's quarter of the buffer over N).
pin() {
  local b piece='' label=$3; b=$(bytes "$2")
  if [[ $3 =~ ^(.*)/([0-9]+)$ ]]; then
    label=${BASH_REMATCH[1]}
    piece=", \"chunk_bytes\": $((b / 4 / BASH_REMATCH[2]))"
  fi
  printf '[{"collective": "allreduce", "min_bytes": %d, "max_bytes": %d, "algo": "%s"%s}]\n' \
    "$b" "$((b + 1))" "$label" "$piece" > "$1"
}

# simulated FILE SIZE LABEL[/N]: the simulated time (ms) of LABEL (in N pieces), after
# checking that the simulator ran it.
simulated() {
  local out algo=(--algo "$3")
  [[ $3 =~ ^(.*)/([0-9]+)$ ]] && algo=(--algo "${BASH_REMATCH[1]}" --pipeline-chunks "${BASH_REMATCH[2]}")
  out="$work/sim.$(basename "$1" .toml).$2.$(echo "$3" | tr -c 'a-z0-9\n' '_').json"
  "$bin" sim --topo "$1" --collective allreduce --size "$2" "${algo[@]}" --json "$out" \
    > "$out.txt"
  grep -qF "plan $3," "$out.txt" || { echo "sim did not run $3:"; cat "$out.txt"; exit 1; }
  awk '/^  "total_s":/ { gsub(/,/, "", $2); printf "%.1f", $2 * 1000 }' "$out"
}

# measure NAME SIZE ENV... [-- ENV...]: one job (netns_job); prints "TIME_MS ALGORITHM" of
# rank 0's report. Returns 2 when the ranks ran different plans, 1 on other failures.
measure() {
  local name=$1 us a
  if netns_job "$1" "$2" "$iters" "${@:3}"; then
    read -r us a < <(row "$work/$name.txt")
    awk -v u="$us" -v a="$a" 'BEGIN { printf "%.1f %s\n", u / 1000, a }'
  elif grep -qh "mismatched collectives" "$work/$name".*.txt; then
    return 2
  else
    return 1
  fi
}

# row SIZE WHAT SIM_LABEL MS...: a table row; SIM_LABEL "-" where the simulator cannot run
# the plan.
row_of() {
  local size=$1 what=$2 plan=$3 med sim=- sim_full=- err=- full=- all; shift 3
  all="$*"
  med=$(echo "$all" | median)
  if [ "$plan" != - ]; then
    sim=$(simulated "$work/racks.toml" "$size" "$plan")
    sim_full=$(simulated "$work/racks-full.toml" "$size" "$plan")
    err=$(awk -v s="$sim" -v m="$med" 'BEGIN { printf "%+.1f%%", (s / m - 1) * 100 }')
    full=$(awk -v s="$sim_full" -v m="$med" 'BEGIN { printf "%s (%+.1f%%)", s, (s / m - 1) * 100 }')
    errors+=("$(awk -v s="$sim" -v m="$med" 'BEGIN { e = (s / m - 1) * 100
      printf "%.1f", e < 0 ? -e : e }') $size $plan")
  fi
  table+=("| $size | ${what//|/\\|} | $sim | $med | $err | ${all// / / } | $full |")
}

# attempt NAME SIZE RULES LABEL RANK0_ENV: one job with ranks 1–3 pinned to LABEL and rank
# 0 free, timed into WORK/NAME.ms; returns 2 when rank 0 picked another plan.
attempt() {
  local rc=0
  pin "$3" "$2" "$4"
  measure "$1" "$2" "$5" -- TOPOCCL_RULES="$3" > "$work/$1.ms" || rc=$?
  [ $rc = 0 ] || [ $rc = 2 ] || netns_job_failed "$1"
  return $rc
}

# first_of LABEL...: tries each LABEL not tried yet in this run (plan_rows' `tried`), in
# order, until rank 0 turns out to run it; sets `found` (empty if none) and `name` (the
# matching job).
first_of() {
  local l
  found=''
  for l in "$@"; do
    [ -z "${tried[$l]:-}" ] || continue
    tried[$l]=1
    name=$kind-$size-$run-$(echo "$l" | tr -c 'a-z0-9\n' '_')
    if attempt "$name" "$size" "$rules" "$l" "$env0"; then
      found=$l
      return
    fi
  done
}

# plan_rows SIZE KIND WHAT RANK0_ENV LABEL...: RUNS measurements of the plan rank 0 picks
# with RANK0_ENV, each against the first LABEL it turns out to be, a row per LABEL found.
# The runtime picks again in every job, from figures its probe measured then, so near
# ties (hier(ring|rd) against hier(ring|ring)) can go either way from one job to the next.
# In a job where it is none of them, a job of its own says what it runs: pipelined in N
# pieces, LABEL/N is tried for every LABEL. Where it is still none of them (over several
# channels, which `topoccl sim` cannot build), that job's time stands, and the first LABEL,
# pinned on every rank, stands in for it against the simulator.
plan_rows() {
  local size=$1 kind=$2 what=$3 env0=$4 l name run ms algo found own=() same=() own_algo=''
  shift 4
  local labels=("$@") seen=() rules="$work/pin.$size.$kind.json" piped
  local -A times=() algos=() tried=() owns=()
  for run in $(seq "$runs"); do
    tried=()
    first_of "${seen[@]}" "${labels[@]}"
    if [ -z "$found" ]; then
      name=$kind-$size-$run-own
      measure "$name" "$size" "$env0" > "$work/$name.ms" || netns_job_failed "$name"
      read -r ms algo < "$work/$name.ms"
      if [[ $algo =~ /([0-9]+)$ ]]; then
        piped=()
        for l in "${labels[@]}"; do piped+=("$l/${BASH_REMATCH[1]}"); done
        first_of "${piped[@]}"
      fi
    fi
    if [ -n "$found" ]; then
      read -r ms algo < "$work/$name.ms"
      [ -n "${times[$found]:-}" ] || seen+=("$found")
      times[$found]="${times[$found]:-} $ms"
      algos[$found]=$algo
      continue
    fi
    own+=("$ms")
    [ -n "${owns[$algo]:-}" ] || own_algo+="${own_algo:+, }$algo"
    owns[$algo]=1
    name=$kind-$size-$run-pinned
    pin "$rules" "$size" "${labels[0]}"
    measure "$name" "$size" "$env0" TOPOCCL_RULES="$rules" > "$work/$name.ms" ||
      netns_job_failed "$name"
    read -r ms _ < "$work/$name.ms"
    same+=("$ms")
  done
  for l in "${seen[@]}"; do
    # shellcheck disable=SC2086 # the runs' times, one word each
    row_of "$size" "$what (runtime: ${algos[$l]} = $l)" "$l" ${times[$l]}
  done
  if [ ${#own[@]} -gt 0 ]; then
    row_of "$size" "$what (runtime: $own_algo, none of the simulator's plans)" - "${own[@]}"
    row_of "$size" "$what, pinned to ${labels[0]}" "${labels[0]}" "${same[@]}"
  fi
}

start=$SECONDS
table=() errors=()
for size in "${sizes[@]}"; do
  "$bin" plan compare --topo "$work/racks.toml" --size "$size" > "$work/compare.$size.txt"
  mapfile -t labels < <(awk '!/^#/ && $1 != "algorithm" { print $1 }' "$work/compare.$size.txt")
  # The flat ring as netns-racks.sh runs it (TOPOCCL_ALGO); the runtime's choice against
  # plan compare's candidates, cheapest first.
  plan_rows "$size" flat "flat ring, worst placement" TOPOCCL_ALGO=allreduce:ring ring
  plan_rows "$size" aware "runtime's choice with the topology" TOPOCCL_TOPO="$work/racks.toml" \
    "${labels[@]}"
done

echo
echo "| size | plan | simulated (ms) | measured median (ms) | error | measured runs (ms) | simulated with full-duplex cables (ms, error) |"
echo "|---|---|---:|---:|---:|---|---:|"
printf '%s\n' "${table[@]}"
echo
read -r worst worst_size worst_plan < <(printf '%s\n' "${errors[@]}" | sort -g | tail -n 1)
echo "worst |error| $worst% ($worst_size, $worst_plan); $runs runs of $iters calls per plan" \
  "and size, in $((SECONDS - start)) s"
