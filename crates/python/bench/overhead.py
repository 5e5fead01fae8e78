"""The Python layer's cost per call: all_reduce of 8 bytes (two float32) through
topoccl.Communicator, to set beside `topoccl bench allreduce -b 8 -e 8` (the Rust call).

    topoccl run -n 2 -- python overhead.py [CALLS] [ROUNDS]

Prints the median over ROUNDS of the mean time per call, numpy array and torch tensor.
"""

import statistics
import sys
import time

import numpy as np
import topoccl


def timed(comm: topoccl.Communicator, buf: object, calls: int) -> float:
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        comm.all_reduce(buf)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    comm = topoccl.Communicator.from_env()
    kinds: dict[str, object] = {"numpy": np.ones(2, dtype=np.float32)}
    try:
        import torch

        kinds["torch"] = torch.ones(2)
    except ImportError:
        pass
    for name, buf in kinds.items():
        timed(comm, buf, calls // 10)
        per = [timed(comm, buf, calls) for _ in range(rounds)]
        if comm.rank == 0:
            print(
                f"{name}: 8 B all_reduce, {comm.world} ranks: median {statistics.median(per) * 1e6:.2f} us"
                f" per call ({', '.join(f'{p * 1e6:.2f}' for p in per)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
