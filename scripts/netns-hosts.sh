#!/usr/bin/env bash
# Two hosts of two ranks each, for real: network namespaces as hosts (the racks of
# netns-lib.sh, ranks 0 and 1 on host h0, ranks 2 and 3 on host h2). The transport each
# pair of ranks takes is the runtime's own choice: shared memory within a host, TCP between
# hosts. Three jobs:
#
#  1. `topoccl bench allreduce --check` under TOPOCCL_TRANSPORT=auto: the report's
#     `# transport:` line must show shm for the 4 same-host pairs, tcp for the 8 others,
#     and no wrong element.
#  2. `topoccl bench allgather --check`, same checks (another collective, other traffic).
#  3. the same all-reduce under TOPOCCL_TRANSPORT=shm: every rank must fail with an error
#     naming itself and the ranks on the other host, and saying to use auto.
#
# Prints one `CHECK name ok|FAIL: why` line per check and `RESULT ok` or `RESULT fail`.
# Usage: scripts/netns-hosts.sh TOPOCCL_BINARY [WORKDIR]
# Env: HOST_RATE (default 2gbit), INTER_RATE (2gbit), SIZE (4M), ITERS (3)
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-hosts.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
host_rate=${HOST_RATE:-2gbit}
inter_rate=${INTER_RATE:-2gbit}
size=${SIZE:-4M}
iters=${ITERS:-3}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$host_rate" "$inter_rate"
netns_store
export JOB_HOSTS="0 0 2 2"
failed=0
check() { # check NAME CONDITION-TEXT: prints the verdict, remembers a failure
  if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL: $2"; failed=1; fi
}

# check_report NAME: the transport line and the #wrong columns of job NAME's report.
check_report() {
  local report=$work/$1.txt line wrong
  line=$(grep -m1 '^# transport: same host' "$report" || true)
  echo "$1: ${line:-no transport line}"
  case $line in
    "# transport: same host shm (4 directed pairs); other hosts tcp (8 directed pairs); 2 host(s): [0-1] [2-3]")
      check "$1-transport" ok ;;
    *) check "$1-transport" "expected shm within hosts and tcp between them, got '${line}'" ;;
  esac
  if grep -q '^# transport: rank .* uses tcp' "$report"; then
    check "$1-no-fallback" "a same-host pair fell back to tcp: $(grep '^# transport: rank' "$report")"
  else
    check "$1-no-fallback" ok
  fi
  wrong=$(awk '$1 ~ /^[0-9]+$/ && NF >= 14 { w += $9 + $13; n++ } END { print (n ? w : "none") }' "$report")
  if [ "$wrong" = 0 ]; then check "$1-correct" ok; else check "$1-correct" "#wrong $wrong"; fi
}

if netns_job allreduce "$size" "$iters" TOPOCCL_TRANSPORT=auto; then
  check_report allreduce
else
  check allreduce-ran "the job failed: $(tail -n 3 "$work"/allreduce.*.txt | tr '\n' ' ')"
fi
if JOB_COLLECTIVE=allgather netns_job allgather "$size" "$iters" TOPOCCL_TRANSPORT=auto; then
  check_report allgather
else
  check allgather-ran "the job failed: $(tail -n 3 "$work"/allgather.*.txt | tr '\n' ' ')"
fi

# Shared memory only, across hosts: a configuration error on every rank, naming the far ranks.
if netns_job shmonly "$size" 1 TOPOCCL_TRANSPORT=shm TOPOCCL_INIT_TIMEOUT=20s; then
  check shm-across-hosts "TOPOCCL_TRANSPORT=shm across hosts succeeded"
else
  for r in 0 1 2 3; do
    out=$work/shmonly.$r.txt
    if [ "$r" -lt 2 ]; then far="rank 2 .*rank 3"; else far="rank 0 .*rank 1"; fi
    if grep -q "TOPOCCL_TRANSPORT=shm but rank $r .*shares no memory with $far.*TOPOCCL_TRANSPORT=auto" "$out"; then
      check "shm-across-hosts-rank$r" ok
    else
      check "shm-across-hosts-rank$r" "unexpected error: $(tail -n 2 "$out" | tr '\n' ' ')"
    fi
  done
fi

if [ $failed = 0 ]; then echo "RESULT ok"; else echo "RESULT fail"; exit 1; fi
