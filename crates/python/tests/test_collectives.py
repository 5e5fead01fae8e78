"""The Python package against real jobs: `topoccl run` starts the ranks (real processes,
real sockets and shared memory) and each checks its results."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


def topoccl_bin() -> str:
    found = os.environ.get("TOPOCCL_BIN") or shutil.which("topoccl")
    if found:
        return found
    built = ROOT / "target" / "release" / "topoccl"
    if not built.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "topoccl-cli"], cwd=ROOT, check=True)
    return str(built)


def run(ranks: int, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            topoccl_bin(),
            "run",
            "-n",
            str(ranks),
            "--timeout",
            "120s",
            "--",
            sys.executable,
            str(HERE / script),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=180,
    )


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_every_collective_and_type_is_right(ranks: int, transport: str) -> None:
    out = run(ranks, "worker.py", TOPOCCL_TRANSPORT=transport)
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(ranks):
        assert f"ok rank {r}" in out.stdout, out.stdout + out.stderr


def test_ranks_that_disagree_raise_naming_each_other() -> None:
    out = run(2, "mismatch.py", TOPOCCL_TIMEOUT="5s")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [l for l in out.stdout.splitlines() if "raised rank" in l]
    assert len(lines) == 2, out.stdout + out.stderr
    for line in lines:
        # A disagreement has no single culprit: the message names both calls' ranks.
        assert "mismatched collectives" in line, line
        assert "rank 0 entered" in line or "rank 1 entered" in line, line


def test_the_error_survives_pickling_with_its_culprits() -> None:
    # torch's futures pickle the exception a failed call raises (DDP's error path): it
    # must name an importable class (it was `_topoccl.TopocclError`, which is not).
    import pickle

    import topoccl

    e = topoccl.TopocclError("allreduce #3: rank 2 failed")
    e.culprits = [2]
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is topoccl.TopocclError
    assert str(back) == str(e)
    assert back.culprits == [2]
