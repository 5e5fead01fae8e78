"""What torch.distributed adds per call: one rank (no peer), 8-byte all_reduce, through
``dist.all_reduce``, through the process group's ``allreduce(...).wait()``, and (topoccl)
through the communicator underneath.

    python torch_overhead.py topoccl|gloo [CALLS]

Prints the median over 5 blocks of CALLS calls (after 1,000 warm-up calls) per path.
"""

import os
import statistics
import sys
import time
from collections.abc import Callable

import topoccl.torch  # noqa: F401 - registers the backend
import torch
import torch.distributed as dist


def per_call(f: Callable[[], object], calls: int) -> float:
    for _ in range(1000):
        f()
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        blocks.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(blocks)


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "topoccl"
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29777")
    dist.init_process_group(backend, rank=0, world_size=1)
    t = torch.ones(2)
    pg = dist.group.WORLD
    assert pg is not None
    opts = dist.AllreduceOptions()
    paths: dict[str, Callable[[], object]] = {
        "dist.all_reduce": lambda: dist.all_reduce(t),
        "group.allreduce().wait()": lambda: pg.allreduce([t], opts).wait(),
    }
    if backend == "topoccl":
        comm = pg.communicator  # type: ignore[attr-defined]
        paths["Communicator.all_reduce"] = lambda: comm.all_reduce(t)
    for name, f in paths.items():
        print(f"{backend}: {name}: {per_call(f, calls):.1f} us per call", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
