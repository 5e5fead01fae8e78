#!/usr/bin/env python3
"""Medians of a compare-allreduce.sh or compare-shm.sh run, as the markdown tables in
docs/benchmarks.md. Output files are SYSTEM_RANKS_ROUND.txt; SYSTEM is topoccl (or
topoccl-VARIANT: the nccl-tests layout of `topoccl bench`), gloo or mpi. OURS (default
topoccl) is the system the ratio columns compare the others with.
Usage: python3 scripts/medians.py OUTDIR [OURS]"""
import glob, os, re, statistics, sys

LABELS = {"topoccl": "topoccl", "topoccl-shm": "topoccl shm", "topoccl-tcp": "topoccl TCP",
          "gloo": "Gloo", "mpi": "Open MPI"}


def rows(path, system):
    """size -> (time µs, busbw GB/s, algorithm) from one output file."""
    kind = system.split("-")[0]
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


def side_figures(d):
    """The iperf3, memcpy and time-split runs beside the tables."""
    for name in ("iperf", "iperf1m"):
        files = sorted(glob.glob(os.path.join(d, f"{name}_*.txt")))
        if files:
            halves = [iperf_half(f) for f in files]
            print(f"{name}: half aggregate GB/s {', '.join(f'{h:.2f}' for h in halves)}; "
                  f"median {statistics.median(halves):.2f}")
    files = sorted(glob.glob(os.path.join(d, "memcpy_*.txt")))
    if files:
        rates = [float(re.search(r"([\d.]+) GB/s", open(f).read()).group(1)) for f in files]
        print(f"memcpy 16 MiB: GB/s {', '.join(f'{r:.2f}' for r in rates)}; "
              f"median {statistics.median(rates):.2f}")
    parts = {}  # rank -> part -> [µs per round]
    pat = r"#\s+split rank (\d+) per call: (.*)"
    for f in sorted(glob.glob(os.path.join(d, "split_*.txt"))):
        for rank, rest in re.findall(pat, open(f).read()):
            for name, us in re.findall(r"(\w+) ([\d.]+) us", rest):
                parts.setdefault(int(rank), {}).setdefault(name, []).append(float(us))
    if parts:
        print("\ntime split, µs per call (median of rounds)\n")
        names = list(next(iter(parts.values())))
        print("| rank | " + " | ".join(names) + " | sum |")
        print("|---:|" + "---:|" * (len(names) + 1))
        for rank, by in sorted(parts.items()):
            med = [statistics.median(by[n]) for n in names]
            print(f"| {rank} | " + " | ".join(f"{m:.0f} ({100 * m / sum(med):.0f}%)" for m in med)
                  + f" | {sum(med):.0f} |")


def main(d, ours):
    side_figures(d)
    runs = {}  # (system, ranks) -> [files]
    for f in sorted(glob.glob(os.path.join(d, "*_*_*.txt"))):
        m = re.fullmatch(r"(.+)_(\d+)_(\d+)\.txt", os.path.basename(f))
        if m and m.group(1) in LABELS:
            runs.setdefault((m.group(1), int(m.group(2))), []).append(f)
    for n in sorted({k[1] for k in runs if k[0] == ours}):
        others = sorted(s for s, k in runs if k == n and s != ours)
        systems = [ours] + others
        data = {s: [rows(f, s) for f in runs[(s, n)]] for s in systems}
        print(f"\n{n} ranks, {len(data[ours])} rounds\n")
        print(f"| size | {LABELS[ours]} µs | busbw | algo | "
              + " | ".join(f"{LABELS[s]} µs | busbw" for s in others) + " | "
              + " | ".join(f"vs {LABELS[s]}" for s in others) + " |")
        print("|---:|---:|---:|---|" + "---:|---:|" * len(others) + "---:|" * len(others))
        for b in sorted(data[ours][0]):
            med = {}
            for s, results in data.items():
                vals = [r[b] for r in results if b in r]
                med[s] = (statistics.median(v[0] for v in vals),
                          statistics.median(v[1] for v in vals)) if vals else None
            algos = "/".join(sorted({r[b][2] for r in data[ours] if b in r}))
            cells, vs = [], []
            for s in others:
                if med[s] is None:
                    cells.append("- | -")
                    vs.append("-")
                    continue
                cells.append(f"{med[s][0]:.1f} | {med[s][1]:.3f}")
                # Small messages compare latency (their time / ours), large ones busbw.
                if b < 65536:
                    vs.append(f"{med[s][0] / med[ours][0]:.2f}× faster")
                else:
                    vs.append(f"{med[ours][1] / med[s][1]:.2f}× busbw")
            print(f"| {human(b)} | {med[ours][0]:.1f} | {med[ours][1]:.2f} | {algos} | "
                  + " | ".join(cells) + " | " + " | ".join(vs) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2] if len(sys.argv) > 2 else "topoccl")
