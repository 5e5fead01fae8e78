"""topoccl as a torch.distributed backend.

``import topoccl.torch`` registers the backend ``topoccl`` for CPU tensors::

    import torch.distributed as dist
    import topoccl.torch  # noqa: F401

    dist.init_process_group("topoccl")  # torchrun, env://, tcp:// or file://

Each process group is a ``ProcessGroupTopoccl``: a topoccl communicator that meets in the
store ``init_process_group`` (or ``new_group``) hands it, so no second port is needed.
Every collective runs on the communicator's progress thread and returns a ``Work`` whose
``get_future()`` is a ``torch.futures.Future`` completed from there, as DDP and its
communication hooks expect. Where PyTorch's signature gives lists of tensors that are not
one buffer (``all_gather`` into a list, ``reduce_scatter`` from one, ``gather``,
``scatter``, ``alltoall``), the backend goes through one contiguous buffer and copies,
as Gloo does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore
from torch.distributed import ReduceOp

from .._topoccl import Communicator, TopocclError
from .._topoccl import Work as _Call

__all__ = ["BACKEND", "ProcessGroupTopoccl", "grow_group", "shrink_group"]

BACKEND = "topoccl"

# torch's reduction types that topoccl has.
_OPS: dict[Any, str] = {
    ReduceOp.SUM: "sum",
    ReduceOp.PRODUCT: "prod",
    ReduceOp.MIN: "min",
    ReduceOp.MAX: "max",
    ReduceOp.AVG: "avg",
}


def _op(reduce_op: Any) -> str:
    kind = getattr(reduce_op, "op", reduce_op)
    name = _OPS.get(kind)
    if name is None:
        raise ValueError(
            f"topoccl does not implement {kind}; it reduces with SUM, PRODUCT, MIN, MAX and AVG"
        )
    return name


class _Outcome:
    """A ``torch.futures.Future`` that C++ readers (DDP's reducer) see failed as an error.

    ``Future.set_exception`` stores the exception as the future's *value* (with a Python
    function that raises it on ``wait``): DDP's reducer then reads that value as tensors,
    and crashed the process (SIGSEGV in backward) once ``TopocclError`` could be pickled.
    Here a source future completes with ``None`` and the returned future is chained from it
    with a callback that raises the failure, which torch records as an error of the future
    (a ``RuntimeError`` naming ``TopocclError`` and its message, as for any backend's).
    """

    def __init__(self) -> None:
        self._source: torch.futures.Future[None] = torch.futures.Future()
        self._failure: BaseException | None = None
        self._value: Any = None
        self.future: torch.futures.Future[Any] = self._source.then(self._outcome)

    def _outcome(self, source: torch.futures.Future[None]) -> Any:
        source.value()
        if self._failure is not None:
            raise self._failure
        return self._value

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def set_result(self, value: Any) -> None:
        self._value = value
        self._source.set_result(None)

    def set_exception(self, failure: BaseException) -> None:
        self._failure = failure
        self._source.set_result(None)


class _Work(dist.Work):
    """Calls started on the progress thread, done when all of them are.

    ``finish`` (copies out of a staging buffer) runs once every call has succeeded, before
    the future completes with ``result``: on the thread that waits, or else on a finishing
    thread when the last call ends (whichever comes first; the other finds it done).
    """

    def __init__(
        self,
        calls: Sequence[_Call | None],
        result: list[torch.Tensor],
        finish: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._calls = [c for c in calls if c is not None]
        self._result = result
        self._finish = finish
        self._outcome = _Outcome()
        self._future: torch.futures.Future[list[torch.Tensor]] = self._outcome.future
        # Finishing threads and the waiter may race (the GIL switches between bytecodes).
        self._lock = threading.Lock()
        self._left = len(self._calls)
        self._completed = False
        if not self._calls:
            self._complete()
        for c in self._calls:
            c.add_done_callback(self._one_done)

    def _one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._complete()

    def _complete(self) -> None:
        with self._lock:
            if self._completed:
                return
            self._completed = True
        for c in self._calls:
            failure = c.exception()
            if failure is not None:
                self._outcome.set_exception(failure)
                return
        try:
            if self._finish is not None:
                self._finish()
        except Exception as e:  # noqa: BLE001 - handed to whoever waits
            self._outcome.set_exception(e)
            return
        self._outcome.set_result(self._result)

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        seconds = timeout.total_seconds() if timeout else None
        for c in self._calls:
            # Interruptible (Ctrl-C aborts), bounded by the communicator's deadline, and
            # run right here when nothing else is pending.
            c.wait(seconds)
        self._complete()
        if self._outcome.failure is not None:
            # The failure itself (the future holds torch's RuntimeError wrapping it).
            raise self._outcome.failure
        self._future.wait()
        return True

    def is_completed(self) -> bool:
        return self._future.done()

    def is_success(self) -> bool:
        if not self._future.done():
            return False
        try:
            self._future.value()
        except Exception:  # noqa: BLE001
            return False
        return True

    def exception(self) -> Any:
        for c in self._calls:
            failure = c.exception()
            if failure is not None:
                return failure
        return None

    def get_future(self) -> torch.futures.Future[list[torch.Tensor]]:
        return self._future

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._result


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous tensor of ``tensors`` back to back."""
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.empty(0)


def _copy_out(flat: torch.Tensor, outputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    def finish() -> None:
        offset = 0
        for t in outputs:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    return finish


T = TypeVar("T")


def _one(items: Sequence[T], what: str) -> T:
    if len(items) != 1:
        raise ValueError(f"topoccl's {what} takes one tensor per process, not {len(items)}")
    return items[0]


def _rows(t: torch.Tensor, splits: Sequence[int], world: int, what: str) -> list[int]:
    """Element counts per rank of ``t`` split along dim 0 (evenly when ``splits`` is empty)."""
    rows = t.shape[0] if t.dim() > 0 else t.numel()
    per_row = t.numel() // rows if rows else 0
    if not splits:
        if rows % world:
            raise ValueError(
                f"{what} has {rows} rows, which {world} ranks cannot share evenly; give split sizes"
            )
        return [rows // world * per_row] * world
    if len(splits) != world or sum(splits) != rows:
        raise ValueError(
            f"{what} split sizes {list(splits)} must have one entry per rank ({world}) adding "
            f"up to its {rows} rows"
        )
    return [s * per_row for s in splits]


class ProcessGroupTopoccl(dist.ProcessGroup):
    """A torch.distributed process group on a topoccl communicator (CPU tensors)."""

    def __init__(self, store: Any, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        local = os.environ.get("LOCAL_WORLD_SIZE")
        world = os.environ.get("WORLD_SIZE")
        self._comm = Communicator.from_store(
            store,
            rank,
            size,
            timeout.total_seconds(),
            "pg",
            reach=_where(store),
            # torchrun's ranks per host speak for the world group only.
            local_world=int(local) if local and world == str(size) else None,
        )

    @classmethod
    def of(cls, comm: Communicator) -> ProcessGroupTopoccl:
        """A process group on an existing communicator: one that ``Communicator.from_env``
        (a replacement joining with ``TOPOCCL_JOIN=1`` included), ``shrink`` or ``grow``
        made. Wrap a model in it with ``DistributedDataParallel(model, process_group=pg)``."""
        pg = cls.__new__(cls)
        dist.ProcessGroup.__init__(pg, comm.rank, comm.world)
        pg._comm = comm
        return pg

    # torch keeps a group's name and description on its C++ backends, which a Python
    # process group has none of: they live here.
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:  # type: ignore[override]
        return getattr(self, "_group_name", "")

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_desc(self) -> str:
        return getattr(self, "_group_desc", "")

    def getBackendName(self) -> str:  # torch's name
        return BACKEND

    @property
    def communicator(self) -> Communicator:
        return self._comm

    # --- reductions -------------------------------------------------------------------

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> _Work:  # type: ignore[override]
        op = _op(opts.reduceOp) if opts is not None else "sum"
        return _Work([self._comm.all_reduce_many(tensors, op=op, async_op=True)], tensors)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> _Work:
        return self.allreduce(tensors, opts)

    def reduce(self, tensors: list[torch.Tensor], opts: Any) -> _Work:  # type: ignore[override]
        t = _one(tensors, "reduce")
        call = self._comm.reduce(t, root=opts.rootRank, op=_op(opts.reduceOp), async_op=True)
        return _Work([call], tensors)

    def reduce_scatter(  # type: ignore[override]
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any
    ) -> _Work:
        out = _one(outputs, "reduce_scatter")
        flat = _flat(_one(inputs, "reduce_scatter"))
        call = self._comm.reduce_scatter(flat, out, op=_op(opts.reduceOp), async_op=True)
        return _Work([call], outputs)

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any) -> _Work:
        call = self._comm.reduce_scatter(input, output, op=_op(opts.reduceOp), async_op=True)
        return _Work([call], [output])

    _reduce_scatter_base = reduce_scatter_single  # type: ignore[assignment]

    def reduce_scatter_tensor_coalesced(  # type: ignore[override]
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any
    ) -> _Work:
        op = _op(opts.reduceOp)
        calls = [
            self._comm.reduce_scatter(i, o, op=op, async_op=True) for o, i in zip(outputs, inputs)
        ]
        return _Work(calls, outputs)

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced  # type: ignore[assignment]

    # --- gathers and scatters -----------------------------------------------------------

    def allgather(  # type: ignore[override]
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> _Work:
        out, t = _one(outputs, "allgather"), _one(inputs, "allgather")
        flat = torch.empty(t.numel() * self.size(), dtype=t.dtype)
        call = self._comm.all_gather(t, flat, async_op=True)
        return _Work([call], out, _copy_out(flat, out))

    def all_gather_single(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> _Work:
        return _Work([self._comm.all_gather(input, output, async_op=True)], [output])

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> _Work:
        calls = [self._comm.all_gather(i, o, async_op=True) for o, i in zip(outputs, inputs)]
        return _Work(calls, outputs)

    all_gather_single_coalesced = allgather_into_tensor_coalesced  # type: ignore[assignment]

    def allgather_coalesced(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> _Work:
        # outputs[r][k] receives rank r's inputs[k].
        works = [
            self.allgather([[per_rank[k] for per_rank in outputs]], [t], opts)
            for k, t in enumerate(inputs)
        ]
        calls = [c for w in works for c in w._calls]
        finishes = [w._finish for w in works if w._finish is not None]

        def finish() -> None:
            for f in finishes:
                f()

        return _Work(calls, [t for o in outputs for t in o], finish)

    def gather(  # type: ignore[override]
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any
    ) -> _Work:
        t, root = _one(inputs, "gather"), opts.rootRank
        if self.rank() == root:
            out = _one(outputs, "gather")
            flat = torch.empty(t.numel() * self.size(), dtype=t.dtype)
            call = self._comm.gather(t, flat, root=root, async_op=True)
            return _Work([call], out, _copy_out(flat, out))
        call = self._comm.gather(t, torch.empty(0, dtype=t.dtype), root=root, async_op=True)
        return _Work([call], [])

    def scatter(  # type: ignore[override]
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any
    ) -> _Work:
        out, root = _one(outputs, "scatter"), opts.rootRank
        src = _flat(_one(inputs, "scatter")) if self.rank() == root else torch.empty(0)
        call = self._comm.scatter(src.to(out.dtype), out, root=root, async_op=True)
        return _Work([call], outputs)

    def all_to_all_single(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: Any = None,
    ) -> _Work:
        world = self.size()
        if not output_split_sizes and not input_split_sizes:
            call = self._comm.all_to_all(input, output, async_op=True)
        else:
            send = _rows(input, input_split_sizes, world, "the input")
            recv = _rows(output, output_split_sizes, world, "the output")
            call = self._comm.all_to_all_v(input, output, send, recv, async_op=True)
        return _Work([call], [output])

    alltoall_base = all_to_all_single  # type: ignore[assignment]

    def alltoall(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> _Work:
        src = _flat(inputs)
        flat = torch.empty(sum(t.numel() for t in outputs), dtype=src.dtype)
        send = [t.numel() for t in inputs]
        recv = [t.numel() for t in outputs]
        call = self._comm.all_to_all_v(src, flat, send, recv, async_op=True)
        return _Work([call], outputs, _copy_out(flat, outputs))

    # --- the rest -----------------------------------------------------------------------

    def broadcast(self, tensors: list[torch.Tensor], opts: Any) -> _Work:  # type: ignore[override]
        calls = [self._comm.broadcast(t, root=opts.rootRank, async_op=True) for t in tensors]
        return _Work(calls, tensors)

    def barrier(self, opts: Any = None) -> _Work:
        return _Work([self._comm.barrier(async_op=True)], [])

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int = 0) -> _Work:
        # Messages between two ranks are matched in the order sent; tags are not used.
        return _Work([self._comm.send(t, dst, async_op=True) for t in tensors], tensors)

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int = 0) -> _Work:
        return _Work([self._comm.recv(t, src, async_op=True) for t in tensors], tensors)

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> _Work:
        raise TopocclError("topoccl matches messages by sender; give recv a src rank")

    recvAnysource = recv_anysource  # torch's name

    def abort(self) -> None:
        self._comm.abort("the process group was aborted")

    def shutdown(self) -> None:
        self._comm.close()


def shrink_group(pg: ProcessGroupTopoccl) -> tuple[ProcessGroupTopoccl, list[int], int]:
    """After a failed call: the survivors' process group, the failed ranks (world ranks)
    and the membership epoch. Every survivor calls it; the old group is revoked. A rank the
    others decided without raises ``TopocclError`` with ``kind == "evicted"``.

    Wrap the model again on the new group (``DistributedDataParallel(model,
    process_group=new_pg)``), after making every rank's model and optimizer state equal
    (a step may have completed on some ranks only): broadcast them from rank 0.
    """
    comm, failed, epoch = pg.communicator.shrink()
    return ProcessGroupTopoccl.of(comm), failed, epoch


def grow_group(pg: ProcessGroupTopoccl) -> ProcessGroupTopoccl | None:
    """At a step boundary, on every member: the group grown by the replacements waiting to
    join (they keep their ranks; replacements follow), or ``None`` when nobody waits."""
    comm = pg.communicator.grow()
    return None if comm is None else ProcessGroupTopoccl.of(comm)


def _where(store: Any) -> str | None:
    """Where the store that ``init_process_group`` made lives, as ``tcp://HOST:PORT``."""
    while isinstance(store, PrefixStore):
        store = store.underlying_store
    if isinstance(store, TCPStore):
        return f"tcp://{store.host}:{store.port}"
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return f"tcp://{addr}:{port}" if addr and port else None


def _create(store: Any, rank: int, size: int, timeout: timedelta) -> ProcessGroupTopoccl:
    return ProcessGroupTopoccl(store, rank, size, timeout)


if not hasattr(dist.Backend, BACKEND.upper()):
    dist.Backend.register_backend(BACKEND, _create, devices=["cpu"])
