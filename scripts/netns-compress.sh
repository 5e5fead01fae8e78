#!/usr/bin/env bash
# Compressed all-reduce between two hosts joined by a slow link: network namespaces as
# hosts (netns-lib.sh's racks; rank 0 on h0, rank 1 on h2, so the one inter-rack cable
# carries every byte), shaped with tbf to RATE. For each codec, `topoccl bench allreduce
# --compress CODEC` times the compressed call beside the plain one in the same job, and a
# memcpy rate measured here gives each codec's limit on this machine: the wire time of its
# compressed bytes plus its encode/decode memory passes.
#
# Usage: scripts/netns-compress.sh TOPOCCL_BINARY [WORKDIR]
# Env: RATE (default 1gbit), SIZE (64M), ITERS (5), CODECS (int8 1bit rp:0.02 fp16 topk:0.01)
# Exit 77 (skip) when network namespaces cannot be made here; needs root and iproute2.
set -euo pipefail
bin=$(realpath "${1:?usage: netns-compress.sh TOPOCCL_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d)}
mkdir -p "$work"
rate=${RATE:-1gbit}
size=${SIZE:-64M}
iters=${ITERS:-5}
codecs=${CODECS:-int8 1bit rp:0.02 fp16 topk:0.01}
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
. "$here/netns-lib.sh"

netns_up "$rate" "$rate"
netns_store
export JOB_HOSTS="0 2"
# memcpy rate of this machine (bytes/s), for the limits.
memcpy=$(python3 -c '
import time
n = 256 << 20
a = bytearray(n); b = bytearray(n)
best = 0.0
for _ in range(5):
    t = time.perf_counter(); b[:] = a; d = time.perf_counter() - t
    best = max(best, n / d)
print(f"{best:.6g}")')
echo "# memcpy: $(awk -v m="$memcpy" 'BEGIN { printf "%.2f GB/s", m / 1e9 }'); link: $rate"
printf '# %-11s %12s %9s %9s %9s %9s %8s %9s\n' codec wire_B time_ms plain_ms speedup limit_ms of_limit rel_err
for codec in $codecs; do
  name=c-${codec//[:.]/_}
  if ! JOB_ARGS="--compress $codec" netns_job "$name" "$size" "$iters"; then
    netns_job_failed "$name"
  fi
  awk -v m="$memcpy" -v rate="$rate" -v codec="$codec" '
    function bits(r,  n, u) { n = r + 0; u = r; sub(/^[0-9.]+/, "", u);
      return n * (u == "gbit" ? 1e9 : u == "mbit" ? 1e6 : u == "kbit" ? 1e3 : 1) }
    $1 ~ /^[0-9]+$/ && NF >= 12 {
      size = $1; wire = $4; t = $6 / 1e3; plain = $10 / 1e3; err = $9; passes = $12
      # Limit: each rank sends its compressed bytes over the link (both ways at once on
      # a full-duplex cable) plus the codec'"'"'s passes over the gradient at memcpy speed.
      limit = (wire * 8 / bits(rate) + passes * size / m) * 1e3
      printf "  %-11s %12d %9.1f %9.1f %8.2fx %9.1f %7.0f%% %9s\n",
        codec, wire, t, plain, plain / t, limit, 100 * limit / t, err
    }' "$work/$name.txt"
done
