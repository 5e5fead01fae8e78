"""PyTorch's own distributed tests (the test base its wheel ships) against a backend.

    BACKEND=topoccl WORLD_SIZE=2 python run_suite.py [-k PATTERN] [-v]

BACKEND may be ``topoccl`` or ``gloo`` (the reference, run the same way). topoccl's name is
added to the suite's feature sets for what it implements, as a third-party backend does;
every process the suite spawns imports this file, and with it ``topoccl.torch``.
"""

import os
import sys

os.environ.setdefault("BACKEND", "topoccl")
os.environ.setdefault("WORLD_SIZE", "2")
os.environ.setdefault("TEMP_DIR", "/tmp")

import importlib.util
import re
import types

import topoccl.torch  # noqa: F401 - registers the backend in every spawned process
import torch
from torch.testing._internal.common_distributed import DistTestCases
from torch.testing._internal.common_utils import run_tests

SUITE = "torch.testing._internal.distributed.distributed_test"
BACKEND = os.environ["BACKEND"]

# Tests that name the backends they run on instead of asking the feature sets: topoccl
# joins the names for what it implements (DDP and its communication hooks, which need
# `get_future`; the CPU tests gated on Gloo or on the set of GPU-capable backends, which
# Gloo is in for its CPU tests). Each pattern must still be in the suite, so a torch
# upgrade that changes them fails here rather than quietly skipping. Left to Gloo: CUDA
# tensors, sparse all-reduce, Gloo's own timeout messages, its batched send/recv test
# and monitored_barrier (torch implements it for Gloo only).
GATES = [
    (
        re.compile(
            r'@require_backend_is_available\(\{"gloo"\}\)(?=\s+def test_(?!monitored_barrier))'
        ),
        '@require_backend_is_available({"gloo", "topoccl"})',
    ),
    (
        re.compile(r'@require_backend_is_available\(DistTestCases\.backend_feature\["gpu"\]\)'),
        '@require_backend_is_available(DistTestCases.backend_feature["gpu"] | {"topoccl"})',
    ),
]
NAMED = [
    (
        'BACKEND != "mpi" and BACKEND != "nccl" and BACKEND != "gloo"',
        'BACKEND not in ("mpi", "nccl", "gloo", "topoccl")',
    ),
    (
        'BACKEND != "nccl" and BACKEND != "gloo",\n            "Only Nccl & Gloo backend support DistributedDataParallel"',
        'BACKEND not in ("nccl", "gloo", "topoccl"),\n            "Only Nccl & Gloo backend support DistributedDataParallel"',
    ),
    ('if BACKEND == "mpi" or BACKEND == "gloo":', 'if BACKEND in ("mpi", "gloo", "topoccl"):'),
]


def load_suite() -> types.ModuleType:
    """The suite's module, with topoccl in its feature sets and named lists."""
    if BACKEND == "topoccl":
        # Before the suite is imported: its decorators read the sets as they are defined.
        for feature in ("ddp", "subgroup", "plugin"):
            DistTestCases.backend_feature[feature].add("topoccl")
        # ANY_SOURCE receives are not implemented (messages are matched by sender).
        DistTestCases.skip_collective["sendrecv anysource"].add("topoccl")
    spec = importlib.util.find_spec(SUITE)
    assert spec is not None and spec.origin is not None, f"torch ships no {SUITE}"
    with open(spec.origin) as f:
        source = f.read()
    if BACKEND == "topoccl":
        for old, new in NAMED:
            if old not in source:
                raise SystemExit(f"{spec.origin} no longer has {old!r}; update NAMED")
            source = source.replace(old, new)
        for pattern, gate in GATES:
            source, n = pattern.subn(gate, source)
            if n == 0:
                raise SystemExit(f"{spec.origin} no longer has {pattern.pattern!r}; update GATES")
    module = importlib.util.module_from_spec(spec)
    sys.modules[SUITE] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 - torch's own file
    return module


suite = load_suite()
DistributedTest = suite.DistributedTest
TestDistBackend = suite.TestDistBackend


class TestDistBackendWithSpawn(TestDistBackend, DistributedTest._DistTestBase):  # type: ignore[misc,valid-type,name-defined]
    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()
        torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()


if __name__ == "__main__":
    sys.exit(run_tests())  # type: ignore[no-untyped-call]
