"""torch.distributed all_reduce (float32 sum) on a backend, timed like nccl-tests.

    python torch_allreduce.py BACKEND NRANKS [MINB MAXB ITERS]

BACKEND is topoccl or gloo. Each size: two warm-up calls, a barrier, ITERS calls (a
quarter from 8 MiB up) on fresh copies, the slowest rank's mean time per call.
"""

import os
import sys
import time

import topoccl.torch  # noqa: F401 - registers the backend in each spawned rank
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, backend: str, n: int, minb: int, maxb: int, iters: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=n)
    if rank == 0:
        print(f"# {backend}, {n} ranks", flush=True)
        print(f"{'size(B)':>12} {'time(us)':>12} {'algbw':>10} {'busbw':>10} {'wrong':>6}")
    b = minb
    while b <= maxb:
        t = torch.full((b // 4,), float(rank + 1))
        it = max(2, iters // 4) if b >= (8 << 20) else iters
        for _ in range(2):
            x = t.clone()
            dist.all_reduce(x)
        dist.barrier()
        xs = [t.clone() for _ in range(it)]
        t0 = time.perf_counter()
        for x in xs:
            dist.all_reduce(x)
        el = torch.tensor([(time.perf_counter() - t0) / it], dtype=torch.float64)
        dist.all_reduce(el, op=dist.ReduceOp.MAX)
        wrong = int((xs[-1] != n * (n + 1) / 2).sum())
        tm = el.item()
        algbw = b / tm / 1e9
        if rank == 0:
            print(
                f"{b:12d} {tm * 1e6:12.2f} {algbw:10.3f} {algbw * 2 * (n - 1) / n:10.3f} {wrong:6d}",
                flush=True,
            )
        b *= 2
    dist.destroy_process_group()


if __name__ == "__main__":
    backend, n = sys.argv[1], int(sys.argv[2])
    a = sys.argv[3:]
    minb = int(a[0]) if a else 8
    maxb = int(a[1]) if len(a) > 1 else 64 << 20
    iters = int(a[2]) if len(a) > 2 else 20
    port = 29600 + n + (0 if backend == "gloo" else 50)
    mp.spawn(worker, args=(backend, n, minb, maxb, iters, port), nprocs=n)  # type: ignore[attr-defined,no-untyped-call]
