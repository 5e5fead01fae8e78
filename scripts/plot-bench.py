#!/usr/bin/env python3
"""Plot bus bandwidth against message size from `topoccl bench --json FILE` outputs.

Usage:
  scripts/plot-bench.py [-o busbw.png] [--collective NAME] [--title TEXT] FILE[=LABEL] ...
  scripts/plot-bench.py --series FILE[=LABEL] ...   # print the data, no plot

Each FILE is the JSON `topoccl bench --json` writes: a list of rows, one per collective
and size, with `size_bytes` and `out_of_place` / `in_place` timings (`busbw_gbps`).
Every file (named LABEL, or after the file) and collective gets one line for out-of-place
calls (solid) and one for in-place calls (dashed, where the collective has them). The x
axis is the message size in bytes, logarithmic with binary units; the y axis busbw in
GB/s. `--collective` keeps one collective (`all_reduce`, or as `topoccl bench` spells it:
`allreduce`). The plot needs matplotlib (`python3 -m pip install matplotlib`); `--series`
does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

PLACEMENTS = (("out_of_place", "out of place", "-"), ("in_place", "in place", "--"))


class InputError(Exception):
    """A file that is not what `topoccl bench --json` writes."""


@dataclass
class Series:
    """One line of the plot: a file's collective in one placement."""

    label: str
    collective: str
    placement: str
    style: str
    sizes: list[int] = field(default_factory=list)
    busbw: list[float] = field(default_factory=list)

    def name(self, several_collectives: bool) -> str:
        what = f"{self.label} {self.collective}" if several_collectives else self.label
        return f"{what}, {self.placement}"


def normalise(name: str) -> str:
    """`allreduce`, `all_reduce`, `AllReduce` -> `allreduce`."""
    return name.replace("_", "").replace("-", "").lower()


def split_spec(spec: str) -> tuple[str, str]:
    """`FILE=LABEL` -> (FILE, LABEL); a bare FILE is labelled by its name."""
    path, sep, label = spec.partition("=")
    if not sep or not label:
        base = spec.rsplit("/", 1)[-1]
        return spec, base.removesuffix(".json")
    return path, label


def load(path: str, label: str, collective: str | None) -> list[Series]:
    """The series of one file, in the order its rows come."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}:{e.lineno}:{e.colno}: not JSON ({e.msg}); expected the output of "
            "`topoccl bench --json FILE`"
        ) from e
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a list of rows (`topoccl bench --json FILE`)")
    series: dict[tuple[str, str], Series] = {}
    for i, row in enumerate(rows):
        try:
            name = str(row["collective"])
            size = int(row["size_bytes"])
            timings = [(p, row.get(p)) for p, _, _ in PLACEMENTS]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(
                f"{path}: row {i} is not a bench row (needs collective, size_bytes, "
                f"out_of_place): {e!r}"
            ) from e
        if collective is not None and normalise(name) != normalise(collective):
            continue
        for (key, timing), (_, placement, style) in zip(timings, PLACEMENTS):
            if timing is None:
                continue  # no in-place form
            try:
                busbw = float(timing["busbw_gbps"])
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}: row {i}: {key} has no busbw_gbps") from e
            s = series.setdefault((name, key), Series(label, name, placement, style))
            s.sizes.append(size)
            s.busbw.append(busbw)
    if not series:
        what = f"no rows of {collective}" if collective else "no rows"
        raise InputError(f"{path}: {what}")
    return list(series.values())


def human_bytes(x: float, _pos: object = None) -> str:
    """Axis label: 8 B, 4 KiB, 64 MiB, 1 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= scale:
            return f"{x / scale:g} {unit}"
    return f"{x:g} B"


def plot(all_series: list[Series], output: str, title: str | None) -> None:
    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "plot-bench.py: drawing needs the Python package matplotlib, which this Python "
            f"({sys.executable}) does not have; install it (python3 -m pip install "
            "matplotlib) or print the data with --series"
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    several = len({s.collective for s in all_series}) > 1
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours: dict[tuple[str, str], str] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for s in all_series:
        colour = colours.setdefault((s.label, s.collective), cycle[len(colours) % len(cycle)])
        ax.plot(
            s.sizes,
            s.busbw,
            linestyle=s.style,
            marker="o",
            markersize=3,
            color=colour,
            label=s.name(several),
        )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(human_bytes))
    ax.set_xlabel("message size")
    ax.set_ylabel("busbw (GB/s)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title or "topoccl bench: bus bandwidth")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    print(f"plot-bench.py: wrote {output}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="plot-bench.py",
        description="Plot busbw against message size from `topoccl bench --json` files.",
    )
    p.add_argument("files", nargs="+", metavar="FILE[=LABEL]")
    p.add_argument("-o", "--output", default="busbw.png", help="PNG to write")
    p.add_argument("--collective", help="keep only this collective")
    p.add_argument("--title", help="title of the plot")
    p.add_argument("--series", action="store_true", help="print the series instead of plotting")
    args = p.parse_args(argv)
    try:
        all_series = [s for spec in args.files for s in load(*split_spec(spec), args.collective)]
    except InputError as e:
        print(f"plot-bench.py: {e}", file=sys.stderr)
        return 2
    if args.series:
        for s in all_series:
            points = " ".join(f"{b}:{w:.4g}" for b, w in zip(s.sizes, s.busbw))
            print(f"{s.label}\t{s.collective}\t{s.placement}\t{points}")
        return 0
    plot(all_series, args.output, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
