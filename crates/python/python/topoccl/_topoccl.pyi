"""Type stubs of the compiled module (see src/lib.rs)."""

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

__version__: str

class TopocclError(RuntimeError):
    """A collective, or creating a communicator, failed."""

    culprits: list[int]
    """The ranks the runtime blames (may be empty)."""
    kind: str
    """The failure's kind: ``timeout``, ``peer_failed``, ``aborted``, ``evicted`` (the
    survivors of a failure went on without this rank: exit or rejoin), … (``other`` for
    failures outside the runtime)."""

# A CPU torch tensor, or anything with the buffer protocol, C-contiguous: numpy arrays,
# bytearray, memoryview.
Buffer: TypeAlias = Any

class Work:
    """A call started with ``async_op=True``."""

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until the call ends (Ctrl-C aborts it); raises what it raised."""
    def is_completed(self) -> bool: ...
    def is_success(self) -> bool: ...
    def exception(self) -> TopocclError | None: ...
    def add_done_callback(self, callback: Callable[[], object]) -> None:
        """Calls ``callback()`` once the call has ended (on the progress thread)."""

class Compression:
    """A codec with its state across calls (error feedback, warm starts) and statistics."""

    def __init__(self, codec: str, feedback: bool = True, decay: float = 0.8) -> None: ...
    @property
    def codec(self) -> str: ...
    @property
    def wire_bytes(self) -> int: ...
    @property
    def raw_bytes(self) -> int: ...
    @property
    def calls(self) -> int: ...

class Communicator:
    @staticmethod
    def from_env() -> Communicator:
        """This rank's communicator, from the launcher's environment and TOPOCCL_* settings."""
    @staticmethod
    def from_store(
        store: Any,
        rank: int,
        world: int,
        timeout: float,
        name: str,
        reach: str | None = None,
        local_world: int | None = None,
    ) -> Communicator:
        """A communicator meeting in a torch.distributed store (the torch backend's)."""
    @property
    def rank(self) -> int: ...
    @property
    def world(self) -> int: ...
    def all_reduce(
        self, input: Buffer, output: Buffer | None = None, op: str = "sum", async_op: bool = False
    ) -> Work | None:
        """output = op over ranks of input; without output, in place. op: sum, prod, min, max, avg."""
    def all_reduce_many(
        self, bufs: Sequence[Buffer], op: str = "sum", async_op: bool = False
    ) -> Work | None: ...
    def all_reduce_compressed(
        self, buf: Buffer, compression: Compression, key: int = 0, async_op: bool = False
    ) -> Work | None:
        """buf (float32) replaced by its sum over ranks, compressed by ``compression``."""
    def broadcast(self, buf: Buffer, root: int = 0, async_op: bool = False) -> Work | None: ...
    def reduce(
        self,
        input: Buffer,
        output: Buffer | None = None,
        root: int = 0,
        op: str = "sum",
        async_op: bool = False,
    ) -> Work | None: ...
    def all_gather(self, input: Buffer, output: Buffer, async_op: bool = False) -> Work | None: ...
    def reduce_scatter(
        self, input: Buffer, output: Buffer, op: str = "sum", async_op: bool = False
    ) -> Work | None: ...
    def gather(
        self, input: Buffer, output: Buffer, root: int = 0, async_op: bool = False
    ) -> Work | None: ...
    def scatter(
        self, input: Buffer, output: Buffer, root: int = 0, async_op: bool = False
    ) -> Work | None: ...
    def all_to_all(self, input: Buffer, output: Buffer, async_op: bool = False) -> Work | None: ...
    def all_to_all_v(
        self,
        input: Buffer,
        output: Buffer,
        send_counts: Sequence[int],
        recv_counts: Sequence[int],
        async_op: bool = False,
    ) -> Work | None: ...
    def barrier(self, async_op: bool = False) -> Work | None: ...
    def send(self, buf: Buffer, peer: int, async_op: bool = False) -> Work | None: ...
    def recv(self, buf: Buffer, peer: int, async_op: bool = False) -> Work | None: ...
    def shrink(self) -> tuple[Communicator, list[int], int]: ...
    def grow(self) -> Communicator | None: ...
    @property
    def dead_links(self) -> list[tuple[int, int]]: ...
    @property
    def epoch(self) -> int: ...
    @property
    def world_rank(self) -> int: ...
    def abort(self, reason: str = "aborted from Python") -> None: ...
    def close(self) -> None:
        """Waits for the calls started, then ends the communicator; later calls raise."""
