#!/usr/bin/env bash
# The console's live browser test on namespaced hosts: two racks of two hosts (network
# namespaces, tbf-shaped cables, scripts/netns-lib.sh), one rank per host (racks
# alternate, so every hop of the ring crosses the trunk), the job's topology file given
# (TOPOCCL_TOPO) and every rank's exporter on its host's address. The ranks run a paced
# all-reduce loop (SIZE_ELEMS f32, COMPUTE_MS of "compute" between calls: a training
# step's rhythm, the trunk far from full). `topoccl console --topo racks.toml --job
# <the four exporters>` runs in host h0's namespace, and console/web/test/live.mjs drives
# Debian's Chromium there: once the trunk's link shows live figures (and is not red), it
# drops the trunk to DROP_RATE (tbf change on both of its ends) and waits for the trunk's
# link to turn red in the page, which must happen within LIVE_MAX_S (5) seconds.
#
# Prints the page's colours before and after and a RESULT line (red_s: throttle → red in
# the page); saves a screenshot under CONSOLE_OUT (default target/console).
#
# Usage: scripts/netns-console.sh TOPOCCL_BINARY [WORKDIR]
# Env: HOST_RATE (1gbit), INTER_RATE (1gbit), DROP_RATE (20mbit), SIZE_ELEMS (131072: 512 KiB),
#      COMPUTE_MS (100), LIVE_MAX_S (5), WARMUP_S (120), CHROMIUM (/usr/bin/chromium)
# Exit 77 (skip) without root, network namespaces, iproute2, node or Chromium.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-console.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
host_rate=${HOST_RATE:-1gbit}
inter_rate=${INTER_RATE:-1gbit}
drop_rate=${DROP_RATE:-20mbit}
elems=${SIZE_ELEMS:-131072}
compute_ms=${COMPUTE_MS:-100}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
web=$(realpath "$here/../console/web")
browser=${CHROMIUM:-/usr/bin/chromium}
command -v node >/dev/null || { echo "SKIP: node is not installed"; exit 77; }
[ -x "$browser" ] || { echo "SKIP: no Chromium at $browser (apt-get install chromium)"; exit 77; }
[ -d "$web/node_modules/playwright-core" ] \
  || { echo "SKIP: console/web/node_modules is missing (run scripts/build-console.sh)"; exit 77; }
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$inter_rate"
netns_topology "$work/racks.toml" "Written by scripts/netns-console.sh: 2 racks × 2 hosts." \
  "$host_rate" "$inter_rate"
netns_store

pids=()
stop_job() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  netns_cleanup
}
trap stop_job EXIT
port=9464
job=()
for r in 0 1 2 3; do
  h=${hosts[$r]}
  job+=("10.77.0.$((h + 1)):$port")
  ip netns exec "$(ns "h$h")" env \
    TOPOCCL_STORE=tcp://10.77.0.1:29400 TOPOCCL_JOB_ID="console-$$" \
    TOPOCCL_RANK="$r" TOPOCCL_WORLD_SIZE=4 TOPOCCL_LOCAL_RANK=0 TOPOCCL_LOCAL_WORLD_SIZE=1 \
    TOPOCCL_TIMEOUT=120s TOPOCCL_TOPO="$work/racks.toml" \
    TOPOCCL_METRICS="10.77.0.$((h + 1)):$port" TOPOCCL_LOG=warn \
    "$bin" internal allreduce-loop --count "$elems" --iters 1000000 --compute-ms "$compute_ms" \
    > "$work/rank$r.txt" 2>&1 &
  pids+=($!)
done
job_list=$(IFS=,; echo "${job[*]}")

throttle=""
for k in 0 1; do
  throttle+="ip netns exec $(ns rack$k) tc qdisc change dev ${tag}x$k root tbf rate $drop_rate burst 128kb latency 200ms; "
done

status=0
ip netns exec "$(ns h0)" env \
  TOPOCCL_BIN="$bin" TOPO="$work/racks.toml" JOB="$job_list" THROTTLE="$throttle" \
  CHROMIUM="$browser" CONSOLE_OUT="${CONSOLE_OUT:-$(realpath "$here/..")/target/console}" \
  LIVE_MAX_S="${LIVE_MAX_S:-5}" WARMUP_S="${WARMUP_S:-120}" \
  bash -c "cd '$web' && node test/live.mjs" || status=$?
if [ "$status" != 0 ]; then
  for r in 0 1 2 3; do echo "rank $r:"; tail -n 3 "$work/rank$r.txt"; done
fi
exit "$status"
