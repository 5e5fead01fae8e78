#!/usr/bin/env python3
"""Medians of a compare-allreduce.sh run, as the markdown tables in docs/benchmarks.md.
Usage: python3 scripts/medians.py OUTDIR"""
import glob, os, re, statistics, sys


def rows(path, kind):
    """size -> (time µs, busbw GB/s, algorithm) from one output file."""
    out = {}
    for line in open(path):
        p = line.split()
        if not p or not p[0].isdigit():
            continue
        if kind == "topoccl":  # out-of-place columns of the nccl-tests layout
            out[int(p[0])] = (float(p[5]), float(p[7]), p[-1])
        elif kind == "gloo":
            out[int(p[0])] = (float(p[1]), float(p[3]), "")
        else:
            out[int(p[0])] = (float(p[2]), float(p[4]), "")
    return out


def human(b):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale and b % scale == 0:
            return f"{b // scale} {unit}"
    return f"{b} B"


def iperf_half(path):
    """Half the aggregate of an iperf3 --bidir run (both directions' sender totals), GB/s."""
    text = open(path).read()
    pat = r"0\.00-(\d+\.\d+)\s+sec\s+([\d.]+) (G|M)Bytes\s+[\d.]+ [GM]bits/sec\s+\d*\s*sender"
    rates = [float(v) * (1 << 30 if u == "G" else 1 << 20) / float(secs)
             for secs, v, u in re.findall(pat, text)]
    return sum(rates) / 1e9 / 2


def main(d):
    for name in ("iperf", "iperf1m"):
        files = sorted(glob.glob(os.path.join(d, f"{name}_*.txt")))
        if files:
            halves = [iperf_half(f) for f in files]
            print(f"{name}: half aggregate GB/s {', '.join(f'{h:.2f}' for h in halves)}; "
                  f"median {statistics.median(halves):.2f}")
    ranks = sorted({int(f.split("_")[-2]) for f in glob.glob(os.path.join(d, "topoccl_*_*.txt"))})
    for n in ranks:
        data = {k: [rows(f, k) for f in sorted(glob.glob(os.path.join(d, f"{k}_{n}_*.txt")))]
                for k in ("topoccl", "gloo", "mpi")}
        print(f"\n{n} ranks, {len(data['topoccl'])} rounds\n")
        print("| size | topoccl µs | busbw | algo | Gloo µs | busbw | Open MPI µs | busbw "
              "| vs Gloo | vs Open MPI |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for b in sorted(data["topoccl"][0]):
            med = {}
            for k, runs in data.items():
                vals = [r[b] for r in runs if b in r]
                med[k] = (statistics.median(v[0] for v in vals),
                          statistics.median(v[1] for v in vals))
            algos = "/".join(sorted({r[b][2] for r in data["topoccl"] if b in r}))
            # Small messages compare latency (their time / ours), large ones busbw.
            if b < 65536:
                vs = [f"{med[k][0] / med['topoccl'][0]:.2f}× faster" for k in ("gloo", "mpi")]
            else:
                vs = [f"{med['topoccl'][1] / med[k][1]:.2f}× busbw" for k in ("gloo", "mpi")]
            print(f"| {human(b)} | {med['topoccl'][0]:.1f} | {med['topoccl'][1]:.2f} | {algos} "
                  f"| {med['gloo'][0]:.1f} | {med['gloo'][1]:.3f} | {med['mpi'][0]:.1f} "
                  f"| {med['mpi'][1]:.3f} | {vs[0]} | {vs[1]} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
