# Two racks of two hosts out of network namespaces, for the scripts that measure topoccl on
# them (netns-racks.sh, netns-sim-check.sh); sourced, not run. Four host namespaces, a
# bridge per rack (in a namespace of its own), veth cables, and tbf rate limits — host
# cables at HOST_RATE, the one inter-rack cable at INTER_RATE. One topoccl rank per host,
# placed the worst way for a ring (racks alternate: rank 0 rack 0, rank 1 rack 1, …).
#
# The caller sets `bin` (the topoccl binary) and `work` (a directory), then calls
# netns_up HOST_RATE INTER_RATE; everything made here goes away when the caller exits.
# shellcheck shell=bash

: "${bin:?set bin before sourcing netns-lib.sh}" "${work:?set work before sourcing netns-lib.sh}"
tag=tr$$
ns() { echo "${tag}$1"; }
made=()
store_pid=
# Ranks alternate racks: rank 0 on h0 (rack 0), rank 1 on h2 (rack 1), rank 2 on h1, rank 3 on h3.
hosts=(0 2 1 3)

netns_cleanup() {
  for n in "${made[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  if [ -n "$store_pid" ]; then kill "$store_pid" 2>/dev/null || true; fi
}

skip() { echo "SKIP: $*"; exit 77; }

# rate-limits the egress of DEV in namespace NS (tbf: netem is not available here).
shape() {
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$3" burst 128kb latency 200ms
}

# netns_up HOST_RATE INTER_RATE: the namespaces, cables and shaping; exits 77 (skip) where
# network namespaces cannot be made.
netns_up() {
  local host_rate=$1 inter_rate=$2 h k n r
  trap netns_cleanup EXIT
  [ "$(id -u)" = 0 ] || skip "network namespaces need root"
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    skip "iproute2 (ip, tc) is not installed"
  fi
  ip netns add "$(ns probe)" 2>/dev/null || skip "cannot create a network namespace here"
  made+=("$(ns probe)")

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
}

# A tc rate (800mbit, 1gbit, …; tc's units are decimal) times FACTOR, in the topology
# format's units.
gbps() { awk -v r="$1" -v f="${2:-1}" 'BEGIN { n = r + 0; u = r; sub(/^[0-9.]+/, "", u);
  m = (u == "gbit") ? 1 : (u == "mbit") ? 1e-3 : (u == "kbit") ? 1e-6 : 1e-9; printf "%gGbps", n * m * f }'; }

# netns_topology FILE HEADER HOST_RATE INTER_RATE [FACTOR [HOST_DUPLEX INTER_DUPLEX]]: the
# topology file of the racks, each cable's bandwidth its tc rate times FACTOR (default 1),
# and the host and inter-rack cables' `duplex` (default 1: none written).
netns_topology() {
  local file=$1 header=$2 host_rate=$3 inter_rate=$4 factor=${5:-1} h
  local host_duplex=${6:-1} inter_duplex=${7:-1}
  cat > "$file" <<EOF
# $header
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
EOF
  netns_cable leaf0 leaf1 "$inter_rate" "$factor" "$inter_duplex" >> "$file"
  for h in 0 1 2 3; do
    cat >> "$file" <<EOF

[[node]]
name = "h$h"
kind = "host"
zone = "rack$((h / 2))"
EOF
    netns_cable "h$h" "leaf$((h / 2))" "$host_rate" "$factor" "$host_duplex" >> "$file"
  done
}

# netns_cable A B RATE FACTOR DUPLEX: the [[link]] entry of a cable (20 µs each way), its
# bandwidth RATE × FACTOR, its duplex written unless 1.
netns_cable() {
  printf '\n[[link]]\na = "%s"\nb = "%s"\nbandwidth = "%s"\nlatency = "20us"\n' \
    "$1" "$2" "$(gbps "$3" "$4")"
  [ "$5" = 1 ] || echo "duplex = $5"
}

# The rendezvous store, in host h0's namespace.
netns_store() {
  ip netns exec "$(ns h0)" "$bin" store --listen 10.77.0.1:29400 > "$work/store.log" 2>&1 &
  store_pid=$!
  sleep 0.5
}

# netns_job NAME SIZE ITERS [ENV...] [-- ENV...]: `topoccl bench allreduce` of SIZE with
# one rank per host namespace, each with the first ENV; the ENV after `--` is for ranks
# other than 0 only. Rank 0's report goes to WORK/NAME.txt. Returns non-zero when a rank
# failed (its output is in WORK/NAME.R.txt). JOB_HOSTS (rank r on host JOB_HOSTS[r];
# default: every host, as `hosts` places them) and JOB_COLLECTIVE (default allreduce) pick
# other jobs; JOB_ARGS adds bench arguments (split into words).
netns_job() {
  local name=$1 size=$2 iters=$3; shift 3
  local all=() others=() pids=() r p failed=0
  local on=("${hosts[@]}") collective=${JOB_COLLECTIVE:-allreduce}
  [ -z "${JOB_HOSTS:-}" ] || read -r -a on <<< "$JOB_HOSTS"
  while [ $# -gt 0 ] && [ "$1" != -- ]; do all+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  others=("$@")
  for r in "${!on[@]}"; do
    local mine=("${all[@]}")
    [ "$r" = 0 ] || mine+=("${others[@]}")
    ip netns exec "$(ns "h${on[$r]}")" env "${mine[@]}" \
      TOPOCCL_STORE=tcp://10.77.0.1:29400 TOPOCCL_JOB_ID="$name-$$" \
      TOPOCCL_RANK="$r" TOPOCCL_WORLD_SIZE="${#on[@]}" TOPOCCL_LOCAL_RANK=0 \
      TOPOCCL_LOCAL_WORLD_SIZE=1 TOPOCCL_TIMEOUT=120s \
      "$bin" bench "$collective" -b "$size" -e "$size" --iters "$iters" --warmup 1 -a 3 --check \
      ${JOB_ARGS:-} \
      > "$work/$name.$r.txt" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [ $failed = 0 ] || return 1
  cp "$work/$name.0.txt" "$work/$name.txt"
}

# Says how job NAME failed and stops the caller.
netns_job_failed() {
  echo "job $1 failed:"; tail -n 5 "$work/$1".*.txt; exit 1
}

# time (µs, out of place) and algorithm of the single row of a bench report (rows start
# with the size; log lines that ranks print on stderr do not)
row() { awk '$1 ~ /^[0-9]+$/ && NF >= 14 { print $6, $NF }' "$1"; }
