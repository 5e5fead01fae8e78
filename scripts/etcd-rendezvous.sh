#!/usr/bin/env bash
# Communicator creation of N local ranks meeting in etcd (`topoccl run --store etcd://…`)
# and in the store `topoccl run` hosts, alternating in every round; prints each run's
# "created in" figure (rank 0's report: the slowest rank's rendezvous, connections and
# probe) and the medians.
# Usage: scripts/etcd-rendezvous.sh [ROUNDS] [RANKS]          (default: 7 rounds, 16 ranks)
#   needs Debian's etcd-server (or ETCD=/path/to/etcd) and a built topoccl
#   (TOPOCCL=…, default target/debug/topoccl from `cargo test -p topoccl-cli --test etcd_run`).
set -euo pipefail
rounds=${1:-7}
ranks=${2:-16}
here=$(cd "$(dirname "$0")/.." && pwd)
topoccl=${TOPOCCL:-$here/target/debug/topoccl}
etcd=${ETCD:-etcd}
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=127.0.0.1:$(free_port)
peer=http://127.0.0.1:$(free_port)
"$etcd" --name bench --data-dir "$dir/data" --listen-client-urls "http://$client" \
  --advertise-client-urls "http://$client" --listen-peer-urls "$peer" \
  --initial-advertise-peer-urls "$peer" --initial-cluster "bench=$peer" > "$dir/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -fs "http://$client/health" | grep -q '"health":"true"' && break
  sleep 0.1
done
created() { grep -o 'created in [0-9.]* ms' | grep -o '[0-9.]*'; }
bench=(bench allreduce -b 8 -e 8 --iters 1 --warmup 0)
etcd_ms=() tcp_ms=()
for round in $(seq 1 "$rounds"); do
  e=$("$topoccl" run -n "$ranks" --store "etcd://$client" -- "$topoccl" "${bench[@]}" 2>&1 | created)
  t=$("$topoccl" run -n "$ranks" -- "$topoccl" "${bench[@]}" 2>&1 | created)
  echo "round $round: etcd $e ms, embedded TCP store $t ms"
  etcd_ms+=("$e") tcp_ms+=("$t")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median of $rounds, $ranks ranks: etcd $(median "${etcd_ms[@]}") ms, embedded TCP store $(median "${tcp_ms[@]}") ms"
