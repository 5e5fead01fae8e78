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

Surviving failures (docs/reliability.md)::

    topoccl run -n 4 --elastic --max-restarts 1 -- python examples/python/train_ddp.py \
        --elastic --checkpoint /tmp/ckpt

``--elastic`` runs on topoccl's own communicator (from ``topoccl run``'s environment): when
a rank dies, the survivors shrink the process group, make their model and optimizer equal
to rank 0's, wrap the model in DDP again and go on, the global batch re-sharded over the
ranks left; every ``--grow-every`` steps they admit a replacement the launcher restarted
(``TOPOCCL_JOIN=1``), waiting up to ``--rejoin-wait`` seconds for one while the world is
smaller than it started (rank 0 decides, so every member calls ``grow`` as often). ``--checkpoint DIR`` writes model, optimizer, step and data position
atomically every ``--checkpoint-every`` steps and resumes from there when restarted (after
the whole job was killed, or by torchrun's ``--max-restarts``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import topoccl
import topoccl.torch  # registers the "topoccl" backend
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powerSGD
from torch.nn.parallel import DistributedDataParallel

CHECKPOINT = "checkpoint.pt"


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


def signature(kind: str, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must match: the model's kind and its parameters' shapes."""
    return {"model": kind, "shapes": [list(p.shape) for p in model.parameters()]}


def checkpoint_dir(path: str) -> Path:
    """The checkpoint directory, made if missing; a clear error (before training) when it
    cannot be read or written."""
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--checkpoint {path}: cannot create the directory: {e}") from e
    if not d.is_dir() or not os.access(d, os.R_OK | os.W_OK | os.X_OK):
        raise SystemExit(
            f"--checkpoint {path}: not a directory this process can read and write; "
            "give another one or fix its permissions"
        )
    return d


def load_checkpoint(d: Path, kind: str, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restores model and optimizer from ``d`` if it holds a checkpoint; the step to go
    on from (0 without one)."""
    f = d / CHECKPOINT
    if not f.exists():
        return 0
    try:
        state = torch.load(f, weights_only=True)
    except Exception as e:  # any unreadable file gets the same answer
        raise SystemExit(f"--checkpoint {d}: {f.name} is unreadable ({e}); remove it") from e
    want = signature(kind, model)
    if state.get("signature") != want:
        raise SystemExit(
            f"--checkpoint {d}: {f.name} is of another model ({state.get('signature')}, "
            f"not {want}); give an empty directory or the same --model"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def save_checkpoint(
    d: Path, kind: str, model: nn.Module, opt: torch.optim.Optimizer, step: int
) -> None:
    """Writes the checkpoint atomically: a temporary file, flushed, then renamed."""
    tmp = d / f".{CHECKPOINT}.{os.getpid()}.tmp"
    state = {
        "signature": signature(kind, model),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        # The data position: the batch order is replayed from the seed up to this step.
        "step": step,
    }
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / CHECKPOINT)


def resync(
    comm: topoccl.Communicator, model: nn.Module, opt: torch.optim.Optimizer, step: int
) -> int:
    """Makes every rank's model, optimizer state and step rank 0's (a step may have
    completed on some ranks only before a failure; a replacement has none of them)."""
    at = torch.tensor([step], dtype=torch.int64)
    comm.broadcast(at, root=0)
    for p in model.parameters():
        comm.broadcast(p.data, root=0)
        state = opt.state[p]
        if "momentum_buffer" not in state or state["momentum_buffer"] is None:
            state["momentum_buffer"] = torch.zeros_like(p.data)
        comm.broadcast(state["momentum_buffer"], root=0)
    return int(at.item())


def batch_order(train: torch.Tensor, seed: int, per_epoch: int, step: int) -> torch.Tensor:
    """The order of the epoch holding ``step``: the same shuffles replayed from the seed."""
    shuffle = torch.Generator().manual_seed(seed)
    order = train[torch.randperm(len(train), generator=shuffle)]
    for _ in range(step // per_epoch):
        order = train[torch.randperm(len(train), generator=shuffle)]
    return order


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
    ap.add_argument(
        "--elastic",
        action="store_true",
        help="survive failed ranks (under `topoccl run --elastic`): shrink and go on, "
        "admit replacements",
    )
    ap.add_argument("--grow-every", type=int, default=10, help="steps between admissions")
    ap.add_argument(
        "--rejoin-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="at an admission, wait this long for a replacement while ranks are missing",
    )
    ap.add_argument("--checkpoint", metavar="DIR", help="checkpoint here and resume from it")
    ap.add_argument("--checkpoint-every", type=int, default=20)
    ap.add_argument(
        "--die-at-step",
        type=int,
        help="a drill: world rank --die-rank kills itself (SIGKILL) before this step",
    )
    ap.add_argument("--die-rank", type=int, default=1, help="-1: every rank")
    args = ap.parse_args()
    if args.elastic:
        if args.hook != "none" or args.compress:
            ap.error("--elastic trains with DDP's own all-reduce: leave out --hook/--compress")
        elastic(args)
        return

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
    net = model_for(args.model)
    ckpt = checkpoint_dir(args.checkpoint) if args.checkpoint else None
    # Every rank reads the same checkpoint; the optimizer is made on the plain module
    # so that its state loads before DDP wraps it.
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    first = load_checkpoint(ckpt, args.model, net, opt) if ckpt else 0
    if rank == 0 and first:
        print(f"resumed from step {first} ({ckpt})", flush=True)
    model = DistributedDataParallel(net)
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
    params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(
            f"{args.backend}: {world} ranks, model {args.model} ({params / 1e6:.2f} M "
            f"parameters), {args.steps} steps of {args.batch}, hook {args.hook}",
            flush=True,
        )

    losses: list[float] = []
    times: list[float] = []
    epoch_order = batch_order(train, args.seed, per_epoch, first)
    # torchrun counts its restarts: a drill's rank dies in the first attempt only.
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    correct = 0.0
    for step in range(first, args.steps):
        k = step % per_epoch
        if k == 0 and step > first:
            epoch_order = batch_order(train, args.seed, per_epoch, step)
        if step == args.die_at_step and args.die_rank in (rank, -1) and attempt == 0:
            os.kill(os.getpid(), signal.SIGKILL)
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
        if ckpt and rank == 0 and (step + 1) % args.checkpoint_every == 0:
            save_checkpoint(ckpt, args.model, net, opt, step + 1)
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


def admit(pg: Any, start_world: int, wait_s: float) -> Any:
    """Admits the replacements waiting to join (``grow_group``); while the world is smaller
    than ``start_world``, tries again for up to ``wait_s`` seconds. Rank 0's clock decides
    when to stop, told to all with an all-reduce, so every member calls ``grow`` equally
    often (it is collective)."""
    from topoccl.torch import grow_group

    since = time.monotonic()
    while True:
        grown = grow_group(pg)
        if grown is not None:
            return grown
        more = pg.size() < start_world and time.monotonic() - since < wait_s
        flag = torch.tensor([1.0 if pg.rank() == 0 and more else 0.0])
        pg.communicator.all_reduce(flag)
        if flag.item() == 0.0:
            return None
        time.sleep(0.1)


def elastic(args: argparse.Namespace) -> None:
    """Training that survives failed ranks on topoccl's communicator (see the module doc)."""
    from topoccl.torch import ProcessGroupTopoccl, shrink_group

    ckpt = checkpoint_dir(args.checkpoint) if args.checkpoint else None
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    train, test = order[:1500], order[1500:]
    per_epoch = len(train) // args.batch

    torch.manual_seed(args.seed)
    net = model_for(args.model)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    step = load_checkpoint(ckpt, args.model, net, opt) if ckpt else 0

    comm = topoccl.Communicator.from_env()
    me = comm.world_rank
    # The world to wait for replacements up to (a replacement: the grown one it joined).
    start_world = comm.world
    pg = ProcessGroupTopoccl.of(comm)
    # Every rank starts from rank 0's state (a replacement: from the members').
    step = resync(comm, net, opt, step)
    model = DistributedDataParallel(net, process_group=pg)
    if comm.rank == 0:
        print(f"elastic: {comm.world} ranks from step {step}", flush=True)

    losses: dict[int, float] = {}
    correct = 0.0
    # The step whose grow this rank took part in (a replacement: the one it joined at).
    grown_at = step if comm.epoch > 0 else -1
    while step < args.steps:
        dies = args.die_rank in (me, -1)
        if step == args.die_at_step and dies and pg.communicator.epoch == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if step and step % args.grow_every == 0 and step != grown_at:
            grown_at = step
            grown = admit(pg, start_world, args.rejoin_wait)
            if grown is not None:
                pg = grown
                step = resync(pg.communicator, net, opt, step)
                model = DistributedDataParallel(net, process_group=pg)
                if pg.rank() == 0:
                    print(f"step {step}: grew to {pg.size()} ranks", flush=True)
        rank, world = pg.rank(), pg.size()
        k = step % per_epoch
        batch = batch_order(train, args.seed, per_epoch, step)[
            k * args.batch : (k + 1) * args.batch
        ]
        mine = batch[rank::world]
        try:
            opt.zero_grad()
            # The global batch's mean, whatever the shares: DDP averages over `world`.
            loss = F.cross_entropy(model(x[mine]), y[mine], reduction="sum") * world / len(batch)
            loss.backward()  # type: ignore[no-untyped-call]
            total = loss.detach().clone()
            pg.communicator.all_reduce(total)
        except (topoccl.TopocclError, RuntimeError) as e:
            print(f"step {step}: a call failed ({str(e).splitlines()[0]}); shrinking", flush=True)
            pg, failed, epoch = shrink_group(pg)
            step = resync(pg.communicator, net, opt, step)
            model = DistributedDataParallel(net, process_group=pg)
            print(
                f"step {step}: ranks {failed} failed; {pg.size()} ranks go on (epoch {epoch})",
                flush=True,
            )
            continue
        opt.step()
        losses[step] = total.item() / world
        step += 1
        if ckpt and pg.rank() == 0 and step % args.checkpoint_every == 0:
            save_checkpoint(ckpt, args.model, net, opt, step)
        if step % per_epoch == 0 or step == args.steps:
            with torch.no_grad():
                correct = (net(x[test]).argmax(1) == y[test]).float().mean().item()
            if pg.rank() == 0:
                print(
                    f"epoch {step // per_epoch + (step % per_epoch > 0)}: step {step} "
                    f"loss {losses.get(step - 1, float('nan')):.4f} "
                    f"test accuracy {correct * 100:.2f}%",
                    flush=True,
                )
    if pg.rank() == 0 and args.losses:
        with open(args.losses, "w") as f:
            json.dump(
                {"world": pg.size(), "model": args.model, "losses": losses, "accuracy": correct},
                f,
            )


if __name__ == "__main__":
    main()
