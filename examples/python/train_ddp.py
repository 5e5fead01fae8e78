"""Data-parallel training with torch's DistributedDataParallel on topoccl (or Gloo).

    torchrun --nproc-per-node 4 examples/python/train_ddp.py --backend topoccl
    torchrun --nproc-per-node 4 examples/python/train_ddp.py --backend gloo --model wide

The data set is scikit-learn's handwritten digits (1,797 images of 8×8 pixels, shipped with
the package: nothing is downloaded). Every step takes one global batch, split evenly across
the ranks, so the averaged gradient -- and the loss -- do not depend on the rank count
beyond the order of summation. Rank 0 prints the loss and test accuracy per epoch, and
with ``--losses FILE`` writes every step's loss (for comparing backends) and the step times.

``--model wide`` has 21 M parameters (84 MB of gradients per step), so that communication
dominates the step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import topoccl.torch  # noqa: F401 - registers the "topoccl" backend
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
from torch.nn.parallel import DistributedDataParallel


def model_for(kind: str) -> nn.Module:
    if kind == "small":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if kind == "wide":
        return nn.Sequential(
            nn.Linear(64, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )
    raise SystemExit(f"--model {kind}: choose small or wide")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="topoccl", help="topoccl (default) or gloo")
    ap.add_argument("--model", default="small", choices=["small", "wide"])
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    ap.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--hook",
        default="none",
        choices=["none", "fp16", "bf16", "powersgd"],
        help="a DDP communication hook of torch's (default: none, DDP's own all-reduce)",
    )
    ap.add_argument(
        "--compress",
        metavar="CODEC",
        help="compress gradients with topoccl's DDP hook: int8, int4, 1bit, topk:R, randk:R, "
        "rp:R, powersgd:RANK, fp16, bf16 (error feedback on; with gloo only fp16/bf16)",
    )
    ap.add_argument("--losses", metavar="FILE", help="write every step's loss and time (JSON)")
    args = ap.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {world} ranks")

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    train, test = order[:1500], order[1500:]
    per_epoch = len(train) // args.batch

    torch.manual_seed(args.seed)
    model = DistributedDataParallel(model_for(args.model))
    if args.hook in ("fp16", "bf16"):
        hook = (
            default_hooks.fp16_compress_hook
            if args.hook == "fp16"
            else default_hooks.bf16_compress_hook
        )
        model.register_comm_hook(None, hook)
    elif args.hook == "powersgd":
        state = powerSGD.PowerSGDState(
            process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=10
        )
        model.register_comm_hook(state, powerSGD.powerSGD_hook)
    compression = None
    if args.compress:
        if args.hook != "none":
            ap.error("--compress replaces --hook: give one of them")
        from topoccl.torch.hooks import CompressionState, compression_hook

        compression = CompressionState(args.compress)
        model.register_comm_hook(compression, compression_hook)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(
            f"{args.backend}: {world} ranks, model {args.model} ({params / 1e6:.2f} M "
            f"parameters), {args.steps} steps of {args.batch}, hook {args.hook}",
            flush=True,
        )

    losses: list[float] = []
    times: list[float] = []
    shuffle = torch.Generator().manual_seed(args.seed)
    epoch_order = train[torch.randperm(len(train), generator=shuffle)]
    for step in range(args.steps):
        k = step % per_epoch
        if k == 0 and step:
            epoch_order = train[torch.randperm(len(train), generator=shuffle)]
        batch = epoch_order[k * args.batch : (k + 1) * args.batch]
        mine = batch[rank::world]
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x[mine]), y[mine])
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        times.append(time.perf_counter() - start)
        # The global batch's loss: the mean of the ranks' (equal-sized) shares.
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)
        if k == per_epoch - 1 or step == args.steps - 1:
            with torch.no_grad():
                correct = (model.module(x[test]).argmax(1) == y[test]).float().mean().item()
            if rank == 0:
                print(
                    f"epoch {step // per_epoch + 1}: step {step + 1} loss {losses[-1]:.4f} "
                    f"test accuracy {correct * 100:.2f}%",
                    flush=True,
                )
    if rank == 0:
        steady = times[len(times) // 10 :] or times
        print(f"median step time {statistics.median(steady) * 1e3:.1f} ms", flush=True)
        if compression:
            s = compression.stats()
            if s["ratio"] is None:
                print(
                    f"compression {s['codec']}: {s['uncompressed_bytes']} bytes all-reduced "
                    "by the backend (its casts; no topoccl call)",
                    flush=True,
                )
            else:
                print(
                    f"compression {s['codec']}: {s['wire_bytes']} bytes on the wire for "
                    f"{s['raw_bytes']} ({s['ratio']:.4f})",
                    flush=True,
                )
        if args.losses:
            with open(args.losses, "w") as f:
                json.dump(
                    {
                        "backend": args.backend,
                        "world": world,
                        "model": args.model,
                        "losses": losses,
                        "step_seconds": times,
                        "accuracy": correct,
                        "compression": compression.stats() if compression else None,
                    },
                    f,
                )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
