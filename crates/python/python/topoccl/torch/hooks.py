"""DDP communication hooks that compress gradients with topoccl's codecs.

``model.register_comm_hook(CompressionState("int8"), compression_hook)``: every gradient
bucket is all-reduced compressed (int8 or int4 with a scale per block, 1-bit, top-k,
random-k, random projection, PowerSGD, fp16/bf16), with error feedback per bucket, after
``start_step`` uncompressed steps (a warm-up). With the ``topoccl`` backend every codec
runs through ``Communicator.all_reduce_compressed``; with another backend (Gloo) only the
casts can run (``fp16``, ``bf16``: the bucket is all-reduced in that type) and other
codecs are refused with that advice. ``state.stats()`` says what went on the wire.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .._topoccl import Compression
from . import ProcessGroupTopoccl, _Outcome

__all__ = ["CompressionState", "compression_hook"]

_CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CompressionState:
    """What the hook keeps between steps.

    ``codec`` as topoccl spells it (``int8``, ``1bit``, ``rp:0.02``, ``powersgd:4``, …);
    ``feedback``: error feedback (1-bit always has it); ``decay``: the share of the residual
    carried to the next step; ``start_step``: steps all-reduced uncompressed first;
    ``process_group``: the group DDP uses (default: the world).
    """

    codec: str = "int8"
    feedback: bool = True
    decay: float = 0.8
    start_step: int = 0
    process_group: Any = None
    step: int = 0
    uncompressed_bytes: int = 0
    _compression: Compression = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compression = Compression(self.codec, feedback=self.feedback, decay=self.decay)

    def stats(self) -> dict[str, Any]:
        """Steps, compressed calls, bytes on the wire and what they would have been."""
        c = self._compression
        return {
            "codec": c.codec,
            "steps": self.step,
            "compressed_calls": c.calls,
            "wire_bytes": c.wire_bytes,
            "raw_bytes": c.raw_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "ratio": c.wire_bytes / c.raw_bytes if c.raw_bytes else None,
        }


def _backend(group: Any) -> Any:
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        return pg._get_backend(torch.device("cpu"))
    except RuntimeError:
        return pg


def _plain(
    state: CompressionState, buf: torch.Tensor, world: int
) -> torch.futures.Future[torch.Tensor]:
    state.uncompressed_bytes += buf.numel() * buf.element_size()
    work = dist.all_reduce(buf, group=state.process_group, async_op=True)
    assert work is not None
    return work.get_future().then(lambda f: f.value()[0].div_(world))


def compression_hook(
    state: CompressionState,
    bucket: dist.GradBucket,  # type: ignore[name-defined]  # DDP compares the annotation
) -> torch.futures.Future[torch.Tensor]:
    """All-reduces ``bucket`` compressed as ``state`` says; returns the mean."""
    buf = bucket.buffer()
    world = dist.get_world_size(state.process_group)
    # Steps count from 0; a step's buckets all compress or none does.
    compress = state.step >= state.start_step and buf.dtype == torch.float32
    if bucket.is_last():
        state.step += 1
    if not compress:
        return _plain(state, buf, world)
    backend = _backend(state.process_group)
    if isinstance(backend, ProcessGroupTopoccl):
        outcome = _Outcome()
        work = backend.communicator.all_reduce_compressed(
            buf, state._compression, key=bucket.index(), async_op=True
        )
        assert work is not None

        def done() -> None:
            error = work.exception()
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(buf.div_(world))

        work.add_done_callback(done)
        fut: torch.futures.Future[torch.Tensor] = outcome.future
        return fut
    cast = _CASTS.get(state._compression.codec)
    if cast is None:
        raise ValueError(
            f"codec {state._compression.codec} needs the topoccl backend "
            f"(dist.init_process_group('topoccl')); with {dist.get_backend(state.process_group)} "
            "only fp16 and bf16 can compress"
        )
    half = buf.to(cast).div_(world)
    state.uncompressed_bytes += half.numel() * half.element_size()
    cast_work = dist.all_reduce(half, group=state.process_group, async_op=True)
    assert cast_work is not None
    out: torch.futures.Future[torch.Tensor] = cast_work.get_future().then(
        lambda f: buf.copy_(f.value()[0])
    )
    return out
