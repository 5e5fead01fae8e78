"""One rank of a torch.distributed job on the topoccl backend: every collective PyTorch
routes to a process group, on all seven types, checked against values computed here.

Started by test_torch.py under torchrun-style environments; INIT names the init method
(env, tcp or file). Prints "ok rank R" when every check passed.
"""

import os
import sys
from datetime import timedelta
from typing import Any

import topoccl.torch  # noqa: F401
import torch
import torch.distributed as dist

TYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.uint8,
]


def init() -> None:
    how = os.environ.get("INIT", "env")
    if how == "env":
        dist.init_process_group("topoccl", timeout=timedelta(seconds=60))
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if how == "tcp":
        method = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    else:
        method = f"file://{os.environ['INIT_FILE']}"
    dist.init_process_group(
        "topoccl", init_method=method, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )


def same(got: torch.Tensor, want: Any, what: str) -> None:
    if not torch.equal(got, want.to(got.dtype)):
        raise AssertionError(f"{what}: got {got.tolist()}, want {want.tolist()}")


def check_type(dt: torch.dtype, rank: int, world: int) -> None:
    n = 5
    mine = torch.arange(n) % 3 + rank + 1  # small values: exact in every type
    every = [torch.arange(n) % 3 + r + 1 for r in range(world)]
    stacked = torch.stack(every)
    total = stacked.sum(0)
    t = f"{dt}"

    for op, want in [
        (dist.ReduceOp.SUM, total),
        (dist.ReduceOp.PRODUCT, stacked.prod(0)),
        (dist.ReduceOp.MIN, stacked.min(0).values),
        (dist.ReduceOp.MAX, stacked.max(0).values),
    ]:
        x = mine.to(dt, copy=True)
        dist.all_reduce(x, op=op)
        same(x, want, f"all_reduce {op} {t}")
    if dt.is_floating_point:
        x = mine.to(dt, copy=True)
        dist.all_reduce(x, op=dist.ReduceOp.AVG)
        want = (total.double() / world).to(dt)
        # The mean is rounded once into the type; a third may land one ulp either side.
        if not torch.allclose(x.double(), want.double(), rtol=1e-2 if dt.itemsize == 2 else 1e-6):
            raise AssertionError(f"all_reduce AVG {t}: got {x.tolist()}, want {want.tolist()}")

    xs = [mine.to(dt, copy=True), (mine * 2).to(dt, copy=True)]
    dist.all_reduce_coalesced(xs)
    same(xs[1], total * 2, f"all_reduce_coalesced {t}")

    outs = [torch.empty(n, dtype=dt) for _ in range(world)]
    dist.all_gather(outs, mine.to(dt, copy=True))
    for r in range(world):
        same(outs[r], every[r], f"all_gather {t} block {r}")
    flat = torch.empty(n * world, dtype=dt)
    dist.all_gather_into_tensor(flat, mine.to(dt, copy=True))
    same(flat, torch.cat(every), f"all_gather_into_tensor {t}")

    pieces = [(mine + k).to(dt) for k in range(world)]
    out = torch.empty(n, dtype=dt)
    dist.reduce_scatter(out, pieces)
    same(out, total + world * rank, f"reduce_scatter {t}")
    out = torch.empty(n, dtype=dt)
    dist.reduce_scatter_tensor(out, torch.cat(pieces))
    same(out, total + world * rank, f"reduce_scatter_tensor {t}")

    for root in range(world):
        b = mine.to(dt, copy=True) if rank == root else torch.zeros(n, dtype=dt)
        dist.broadcast(b, root)
        same(b, every[root], f"broadcast {t} from {root}")
        x = mine.to(dt, copy=True)
        dist.reduce(x, root, op=dist.ReduceOp.SUM)
        if rank == root:
            same(x, total, f"reduce {t} to {root}")
        gathered = [torch.empty(n, dtype=dt) for _ in range(world)] if rank == root else None
        dist.gather(mine.to(dt, copy=True), gathered, dst=root)
        if gathered is not None:
            for r in range(world):
                same(gathered[r], every[r], f"gather {t} to {root} block {r}")
        got = torch.empty(n, dtype=dt)
        src = [(every[root] * 0 + r).to(dt) for r in range(world)] if rank == root else None
        dist.scatter(got, src, src=root)
        same(got, torch.full((n,), rank), f"scatter {t} from {root}")

    # all-to-all: block j of rank i is 10 i + j.
    send = torch.tensor([10 * rank + j for j in range(world)]).repeat_interleave(2).to(dt)
    recv = torch.empty(2 * world, dtype=dt)
    dist.all_to_all_single(recv, send)
    same(
        recv,
        torch.tensor([10 * i + rank for i in range(world)]).repeat_interleave(2),
        f"all_to_all_single {t}",
    )
    # uneven splits: rank i sends j + 1 rows to rank j.
    send = torch.cat([torch.full((j + 1,), 10 * rank + j) for j in range(world)]).to(dt)
    recv = torch.empty(world * (rank + 1), dtype=dt)
    dist.all_to_all_single(
        recv,
        send,
        output_split_sizes=[rank + 1] * world,
        input_split_sizes=[j + 1 for j in range(world)],
    )
    want = torch.cat([torch.full((rank + 1,), 10 * i + rank) for i in range(world)])
    same(recv, want, f"all_to_all_single with splits {t}")
    outs = [torch.empty(rank + 1, dtype=dt) for _ in range(world)]
    dist.all_to_all(outs, [torch.full((j + 1,), 10 * rank + j).to(dt) for j in range(world)])
    for i in range(world):
        same(outs[i], torch.full((rank + 1,), 10 * i + rank), f"all_to_all {t} from {i}")

    if world > 1:
        peer = (rank + 1) % world
        prev = (rank - 1) % world
        got = torch.empty(n, dtype=dt)
        reqs = [dist.isend(mine.to(dt, copy=True), peer), dist.irecv(got, prev)]
        for q in reqs:
            assert q is not None
            q.wait()
        same(got, every[prev], f"isend/irecv {t}")
        if rank == 0:
            dist.send(mine.to(dt, copy=True), 1)
        elif rank == 1:
            got = torch.empty(n, dtype=dt)
            dist.recv(got, 0)
            same(got, every[0], f"send/recv {t}")


def check_moved_types(rank: int, world: int) -> None:
    """Types topoccl does not reduce still move: collectives that only move data take
    any type, as bytes."""
    for dt in (torch.int8, torch.bool, torch.int16, torch.complex64):
        mine = (torch.arange(6) + rank).to(dt)
        outs = [torch.empty(6, dtype=dt) for _ in range(world)]
        dist.all_gather(outs, mine)
        for r in range(world):
            same(outs[r], (torch.arange(6) + r).to(dt), f"all_gather {dt} block {r}")
        b = mine.clone() if rank == 0 else torch.zeros(6, dtype=dt)
        dist.broadcast(b, 0)
        same(b, torch.arange(6).to(dt), f"broadcast {dt}")
        send = torch.cat([torch.full((j + 1,), 10 * rank + j) for j in range(world)]).to(dt)
        recv = torch.empty(world * (rank + 1), dtype=dt)
        dist.all_to_all_single(recv, send, [rank + 1] * world, [j + 1 for j in range(world)])
        want = torch.cat([torch.full((rank + 1,), 10 * i + rank) for i in range(world)])
        same(recv, want, f"all_to_all_single with splits {dt}")


def main() -> None:
    init()
    rank, world = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "topoccl", dist.get_backend()
    for dt in TYPES:
        check_type(dt, rank, world)
    check_moved_types(rank, world)

    # Async: a future completed by the progress thread, chained as DDP's hooks do.
    x = torch.full((1000,), float(rank + 1))
    work = dist.all_reduce(x, async_op=True)
    doubled = work.get_future().then(lambda f: f.value()[0] * 2)
    work.wait()
    same(doubled.wait(), torch.full((1000,), float(world * (world + 1))), "future.then")
    # Many in flight at once, completed in order.
    xs = [torch.full((100,), float(k)) for k in range(50)]
    works = [dist.all_reduce(v, async_op=True) for v in xs]
    for k, (v, w) in enumerate(zip(xs, works)):
        w.wait()
        same(v, torch.full((100,), float(k * world)), f"async all_reduce {k}")
    dist.barrier()

    # A subgroup: ranks 0 and the last.
    members = sorted({0, world - 1})
    sub = dist.new_group(members)
    if rank in members:
        assert isinstance(sub, dist.ProcessGroup)
        y = torch.ones(3)
        dist.all_reduce(y, group=sub)
        same(y, torch.full((3,), float(len(members))), "subgroup all_reduce")

    # An empty tensor is a valid no-op.
    dist.all_reduce(torch.empty(0))
    dist.destroy_process_group()
    print(f"ok rank {rank}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"rank {os.environ.get('RANK')} failed: {type(e).__name__}: {e}", flush=True)
        raise
    sys.exit(0)
