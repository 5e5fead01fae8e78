#!/usr/bin/env bash
# The re-planning drill: two racks of two hosts (network namespaces, tbf-shaped cables:
# HOST_RATE host cables, INTER_RATE trunk), one rank per host (racks alternate), the job's
# topology file given (TOPOCCL_TOPO), metrics on (the live links are watched while they
# are). The ranks run a long all-reduce loop of SIZE_ELEMS f32, every result checked; once
# rank 0 has done DROP_AT iterations the trunk drops to DROP_RATE (tbf change on both of its
# ends). Every rank's output lines are stamped with the time they arrive.
#
# Prints the timeline (drop, first congestion alert, each rank's re-plan and its call
# number, the plans before and after and their predicted times) and the all-reduce time per
# call before the drop, after it on the old plan, and after the re-plan, then a RESULT line:
#   alert_s (drop → first alert), replan_s (drop → last rank's re-plan), same_call (1 when
#   every rank re-planned after the same call), recovery (the new plan's predicted time per
#   call over the median measured after the re-plan; ≥ 0.8 is the goal), early_replans
#   (re-plans before the drop: false alarms).
#
# Usage: scripts/netns-replan.sh TOPOCCL_BINARY [WORKDIR]
# Env: HOST_RATE (1gbit), INTER_RATE (1gbit), DROP_RATE (50mbit), SIZE_ELEMS (262144: 1 MiB),
#      DROP_AT (300), ITERS (420)
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-replan.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
host_rate=${HOST_RATE:-1gbit}
inter_rate=${INTER_RATE:-1gbit}
drop_rate=${DROP_RATE:-50mbit}
elems=${SIZE_ELEMS:-262144}
drop_at=${DROP_AT:-300}
iters=${ITERS:-420}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$inter_rate"
netns_topology "$work/racks.toml" "Written by scripts/netns-replan.sh: 2 racks × 2 hosts." \
  "$host_rate" "$inter_rate"
netns_store

# Stamps each line read with the time (seconds, bash's EPOCHREALTIME: no process per line).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

start=$EPOCHREALTIME
pids=()
for r in 0 1 2 3; do
  ( ip netns exec "$(ns "h${hosts[$r]}")" env \
      TOPOCCL_STORE=tcp://10.77.0.1:29400 TOPOCCL_JOB_ID="replan-$$" \
      TOPOCCL_RANK="$r" TOPOCCL_WORLD_SIZE=4 TOPOCCL_LOCAL_RANK=0 TOPOCCL_LOCAL_WORLD_SIZE=1 \
      TOPOCCL_TIMEOUT=120s TOPOCCL_TOPO="$work/racks.toml" TOPOCCL_METRICS=127.0.0.1:0 \
      TOPOCCL_LOG=warn \
      "$bin" internal allreduce-loop --count "$elems" --iters "$iters" 2>&1 \
      | stamp > "$work/rank$r.txt" ) &
  pids+=($!)
done

# The drop, once rank 0 is DROP_AT iterations in.
deadline=$((SECONDS + 300))
until grep -q " iteration $drop_at done" "$work/rank0.txt" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "rank 0 never reached iteration $drop_at"; tail "$work"/rank*.txt; exit 1; }
  sleep 0.05
done
for k in 0 1; do
  ip netns exec "$(ns rack$k)" tc qdisc change dev "${tag}x$k" root tbf rate "$drop_rate" \
    burst 128kb latency 200ms
done
drop=$EPOCHREALTIME
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
for r in 0 1 2 3; do
  if ! grep -q " iteration $((iters - 1)) done" "$work/rank$r.txt"; then
    echo "rank $r did not finish:"; tail -n 5 "$work/rank$r.txt"; failed=1
  fi
done
[ $failed = 0 ] || exit 1

python3 - "$work" "$start" "$drop" "$drop_at" <<'EOF'
import re, statistics, sys
work, start, drop, drop_at = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
alert, replans, done, early = None, {}, {}, 0
for r in range(4):
    for line in open(f"{work}/rank{r}.txt"):
        t, _, text = line.rstrip("\n").partition(" ")
        t = float(t)
        if "[FIRING congestion]" in text and t >= drop and (alert is None or t < alert[0]):
            alert = (t, text.split("WARN ", 1)[-1])
        m = re.search(r"re-plan after call #(\d+)", text)
        if m and r not in replans and t >= drop:
            replans[r] = (t, int(m.group(1)), text)
        if m and r == 0 and t < drop:
            early += 1
            print(f"false alarm: re-plan before the drop, {drop - t:.2f} s before it: {text}")
        m = re.match(r"iteration (\d+) done", text)
        if m and r == 0:
            done[int(m.group(1))] = t
iters = sorted(done)
per_call = {i: done[i] - done[i - 1] for i in iters[1:] if i - 1 in done}
def med(xs):
    return statistics.median(xs) * 1e3 if xs else float("nan")
before = [d for i, d in per_call.items() if 20 <= i <= drop_at]
replan_t = max((v[0] for v in replans.values()), default=None)
old_plan = [d for i, d in per_call.items() if done[i - 1] >= drop and (replan_t is None or done[i] <= replan_t)]
after = [d for i, d in per_call.items() if replan_t is not None and done[i - 1] >= replan_t + 2.0]
print("| time after the drop (s) | event |")
print("|---:|---|")
print(f"| {start - drop:.2f} | job started |")
print("| 0.00 | trunk rate dropped (tbf change on both ends) |")
if alert:
    print(f"| {alert[0] - drop:.2f} | first congestion alert: {alert[1]} |")
for r in sorted(replans):
    t, call, text = replans[r]
    print(f"| {t - drop:.2f} | rank {r} re-plans after call #{call} |")
pred = None
if replans:
    text = replans[min(replans)][2]
    print(f"\nre-plan (rank {min(replans)}): {text.split('WARN ', 1)[-1]}")
    m = re.search(r"next calls use \S+ \(([\d.]+) ms\)", text)
    pred = float(m.group(1)) if m else None
print(f"\n| phase | calls | median ms per all-reduce |\n|---|---:|---:|")
print(f"| before the drop | {len(before)} | {med(before):.2f} |")
print(f"| after the drop, old plan | {len(old_plan)} | {med(old_plan):.2f} |")
print(f"| after the re-plan (+2 s) | {len(after)} | {med(after):.2f} |")
calls = {v[1] for v in replans.values()}
alert_s = alert[0] - drop if alert else float("nan")
replan_s = replan_t - drop if replan_t else float("nan")
recovery = pred / med(after) if pred and after else float("nan")
print(f"predicted by the model for the new plan: {pred} ms")
print(f"RESULT alert_s={alert_s:.2f} replan_s={replan_s:.2f} same_call={int(len(replans) == 4 and len(calls) == 1)} "
      f"recovery={recovery:.2f} early_replans={early} before_ms={med(before):.2f} old_plan_ms={med(old_plan):.2f} after_ms={med(after):.2f}")
EOF
