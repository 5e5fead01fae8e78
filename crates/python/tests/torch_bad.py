"""One rank of a job that gives the topoccl backend bad input (CASE names which); each
rank prints "raised rank R: TYPE: MESSAGE" for what it raised, or "no error rank R"."""

import os
import signal
import sys
import time
from datetime import timedelta

import topoccl.torch  # noqa: F401
import torch
import torch.distributed as dist


def case(name: str, rank: int) -> None:
    if name == "meta":
        # A tensor that is not on the CPU (CUDA is not here; the meta device stands in).
        dist.all_reduce(torch.empty(4, device="meta"))
    elif name == "strided":
        dist.all_reduce(torch.ones(4, 4).t())
    elif name == "dtype":
        dist.all_reduce(torch.ones(4, dtype=torch.int16))
    elif name == "op":
        dist.all_reduce(torch.ones(4, dtype=torch.int32), op=dist.ReduceOp.BAND)
    elif name == "sizes":
        dist.all_reduce(torch.ones(4 + rank))
    elif name == "aborted":
        dist.all_reduce(torch.ones(4))
        dist.distributed_c10d._get_default_group().abort()
        dist.all_reduce(torch.ones(4))
    elif name == "dies":
        for step in range(1000):
            if rank == 1 and step == 3:
                os._exit(7)
            dist.all_reduce(torch.ones(1000))
    elif name == "interrupt":
        print(f"pid {os.getpid()} rank {rank} waiting", flush=True)
        if rank == 1:
            time.sleep(60)
        start = time.monotonic()
        try:
            dist.all_reduce(torch.ones(4))
        except KeyboardInterrupt:
            print(f"interrupted rank {rank} after {time.monotonic() - start:.2f} s", flush=True)
            sys.exit(0)
    else:
        raise SystemExit(f"unknown CASE {name}")


def main() -> None:
    # Ctrl-C as at a terminal even when the test command runs with SIGINT ignored (nohup,
    # a background job of a non-interactive shell): children inherit that, and topoccl
    # leaves a program that ignores SIGINT ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    timeout = float(os.environ.get("TIMEOUT", "60"))
    dist.init_process_group("topoccl", timeout=timedelta(seconds=timeout))
    rank = dist.get_rank()
    try:
        case(os.environ["CASE"], rank)
    except Exception as e:  # noqa: BLE001 - what it raised is the result
        print(f"raised rank {rank}: {type(e).__name__}: {e}", flush=True)
        sys.exit(0)
    print(f"no error rank {rank}", flush=True)


if __name__ == "__main__":
    main()
