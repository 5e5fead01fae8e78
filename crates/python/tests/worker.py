"""One rank of the Python tests' jobs (started by `topoccl run`): every collective on numpy
arrays of every type topoccl takes, each result checked; bad input raising the right
exception. Prints `ok rank R` at the end."""

import sys
from collections.abc import Callable

import numpy as np
import topoccl

TYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8]


def check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if not np.array_equal(got, want):
        sys.exit(f"rank {comm.rank}: {name}: got {got[:8]}, want {want[:8]}")


comm = topoccl.Communicator.from_env()
r, p = comm.rank, comm.world
n = 6 * p
for t in TYPES:
    name = np.dtype(t).name
    x = np.arange(n, dtype=t) + r
    want = (np.arange(n, dtype=np.int64) * p + p * (p - 1) // 2).astype(t)

    out = np.zeros(n, dtype=t)
    comm.all_reduce(x, out)
    check(f"all_reduce {name}", out, want)

    y = x.copy()
    comm.all_reduce(y, op="max")
    check(f"all_reduce in place max {name}", y, (np.arange(n) + p - 1).astype(t))

    b = np.full(n, r, dtype=t)
    comm.broadcast(b, root=p - 1)
    check(f"broadcast {name}", b, np.full(n, p - 1, dtype=t))

    g = np.zeros(n * p, dtype=t)
    comm.all_gather(x, g)
    check(f"all_gather {name}", g, np.concatenate([np.arange(n, dtype=t) + q for q in range(p)]))

    rs = np.zeros(n // p, dtype=t)
    comm.reduce_scatter(x, rs)
    check(f"reduce_scatter {name}", rs, want[r * (n // p) : (r + 1) * (n // p)])

    red = np.zeros(n, dtype=t)
    comm.reduce(x, red, root=0)
    if r == 0:
        check(f"reduce {name}", red, want)

    a2a = np.zeros(n, dtype=t)
    comm.all_to_all(x, a2a)
    blk = n // p
    check(
        f"all_to_all {name}",
        a2a,
        np.concatenate([(np.arange(n, dtype=t) + q)[r * blk : (r + 1) * blk] for q in range(p)]),
    )

    gat = np.zeros(n * p, dtype=t)
    comm.gather(x, gat, root=1 % p)
    if r == 1 % p:
        check(f"gather {name}", gat, np.concatenate([np.arange(n, dtype=t) + q for q in range(p)]))

    sc_in = np.arange(n * p, dtype=t)
    sc = np.zeros(n, dtype=t)
    comm.scatter(sc_in, sc, root=0)
    check(f"scatter {name}", sc, np.arange(n * p, dtype=t)[r * n : (r + 1) * n])

if p > 1:
    msg = np.arange(5, dtype=np.float64)
    if r == 0:
        comm.send(msg * 2, 1)
    elif r == 1:
        got = np.zeros(5)
        comm.recv(got, 0)
        check("send/recv", got, msg * 2)
comm.barrier()

# Bad input: a clear exception before anything reaches the wire.
bad: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: comm.all_reduce(np.zeros((4, 4), dtype=np.float32)[:, 0]), TypeError, "contiguous"),
    (lambda: comm.all_reduce(np.zeros(4, dtype=np.int8)), TypeError, "no topoccl type"),
    (lambda: comm.all_reduce(np.zeros(4, dtype=np.float32), op="median"), ValueError, "median"),
    (
        lambda: comm.all_reduce(np.zeros(4, dtype=np.float32), np.zeros(4, dtype=np.float64)),
        ValueError,
        "same type",
    ),
    (
        lambda: comm.all_reduce(np.zeros(4, dtype=np.float32).data.toreadonly()),
        TypeError,
        "writable",
    ),
]
for call, kind, needle in bad:
    try:
        call()
    except kind as e:
        if needle not in str(e):
            sys.exit(f"rank {r}: expected {needle!r} in {e}")
    else:
        sys.exit(f"rank {r}: expected {kind.__name__} containing {needle!r}")
comm.barrier()
print(f"ok rank {r}", flush=True)
