"""The torch.distributed backend against real jobs: ranks are real processes started by
torchrun or, torchrun-style, by the test itself (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), meeting in the store init_process_group makes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
NOISE = ("USDT:", "ERROR:20", "W12", "*****", "Setting OMP_NUM_THREADS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(ranks: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Bounded below torch's own 30-minute default: a hang fails the test in minutes.
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        + [f"--nproc-per-node={ranks}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


def spawn(ranks: int, script: str, **env: str) -> list[subprocess.Popen[str]]:
    """The ranks of a job, started as torchrun would (without its agent)."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, str(HERE / script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": str(ranks),
                "LOCAL_WORLD_SIZE": str(ranks),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                **env,
            },
        )
        for r in range(ranks)
    ]


def finish(procs: list[subprocess.Popen[str]], timeout: float = 180) -> str:
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=timeout)
        out.append(text)
    return "\n".join(out)


def quiet(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.startswith(NOISE))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_collective_and_type_under_torchrun(ranks: int) -> None:
    out = torchrun(ranks, str(HERE / "torch_worker.py"))
    text = quiet(out.stdout + out.stderr)
    assert out.returncode == 0, text
    for r in range(ranks):
        assert f"ok rank {r}" in text, text


@pytest.mark.parametrize("init", ["tcp", "file"])
def test_init_methods(init: str, tmp_path: Path) -> None:
    procs = spawn(2, "torch_worker.py", INIT=init, INIT_FILE=str(tmp_path / "rendezvous"))
    text = quiet(finish(procs))
    assert [p.returncode for p in procs] == [0, 0], text
    assert "ok rank 0" in text and "ok rank 1" in text, text


def bad(case: str, ranks: int = 2, **env: str) -> str:
    procs = spawn(ranks, "torch_bad.py", CASE=case, **env)
    text = quiet(finish(procs))
    assert all(p.returncode == 0 for p in procs), text
    return text


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("meta", "TypeError", "topoccl runs on CPU tensors"),
        ("strided", "ValueError", "not contiguous"),
        ("dtype", "TypeError", "torch.int16 tensor, which topoccl cannot reduce"),
        ("op", "ValueError", "topoccl does not implement RedOpType.BAND"),
    ],
)
def test_bad_input_raises_at_once(case: str, error: str, words: str) -> None:
    text = bad(case)
    for r in range(2):
        line = next((l for l in text.splitlines() if l.startswith(f"raised rank {r}:")), "")
        assert line.startswith(f"raised rank {r}: {error}:"), text
        assert words in line, line


def test_sizes_that_differ_name_the_ranks() -> None:
    text = bad("sizes", TIMEOUT="20")
    for r in range(2):
        line = next((l for l in text.splitlines() if l.startswith(f"raised rank {r}:")), "")
        # Each names what both ranks entered (told by its own matcher, or by the other
        # rank's abort when that one noticed first).
        assert "TopocclError" in line and "mismatched collectives: rank" in line, text
        assert "rank 0 entered allreduce" in line and "f32×4" in line, line
        assert "rank 1 entered allreduce" in line and "f32×5" in line, line


def test_a_group_used_after_abort_raises() -> None:
    text = bad("aborted")
    for r in range(2):
        line = next((l for l in text.splitlines() if l.startswith(f"raised rank {r}:")), "")
        assert "TopocclError" in line and "abort" in line, text


def test_a_rank_that_dies_is_named_by_the_others() -> None:
    procs = spawn(3, "torch_bad.py", CASE="dies", TIMEOUT="20")
    start = time.monotonic()
    text = quiet(finish(procs))
    assert time.monotonic() - start < 30, text
    assert procs[1].returncode == 7, text
    for r in (0, 2):
        line = next((l for l in text.splitlines() if l.startswith(f"raised rank {r}:")), "")
        assert "TopocclError" in line and "rank 1" in line, text


def test_torchrun_exits_non_zero_naming_the_rank_that_died() -> None:
    out = torchrun(2, str(HERE / "torch_bad.py"), CASE="dies", TIMEOUT="20")
    text = out.stdout + out.stderr
    assert out.returncode != 0, quiet(text)
    assert "rank      : 1 (local_rank: 1)" in text and "exitcode  : 7" in text, quiet(text)


def test_ctrl_c_aborts_a_call_within_a_second() -> None:
    procs = spawn(2, "torch_bad.py", CASE="interrupt", TIMEOUT="60")
    stdout = procs[0].stdout
    assert stdout is not None
    for line in stdout:
        if "waiting" in line:
            break
    time.sleep(1.0)  # rank 0 is in its all_reduce; rank 1 sleeps
    sent = time.monotonic()
    procs[0].send_signal(signal.SIGINT)
    seen = ""
    for line in stdout:
        seen += line
        if "interrupted rank 0" in line:
            break
    took = time.monotonic() - sent
    for p in procs:
        p.kill()
        p.communicate()
    assert "interrupted rank 0" in seen, quiet(seen)
    assert took < 1.0, f"{took:.2f} s from SIGINT to KeyboardInterrupt\n{quiet(seen)}"


@pytest.mark.parametrize("hook", ["none", "fp16", "powersgd"])
def test_ddp_loss_is_bit_identical_to_gloo_on_two_ranks(hook: str, tmp_path: Path) -> None:
    """DDP, with torch's own communication hooks too: PowerSGD starts all-reduces inside
    future callbacks and waits for them there."""
    script = str(ROOT / "examples" / "python" / "train_ddp.py")
    losses = {}
    for backend in ("topoccl", "gloo"):
        dump = tmp_path / f"{backend}.json"
        out = torchrun(
            2, script, "--backend", backend, "--hook", hook, "--steps", "40", "--losses", str(dump)
        )
        assert out.returncode == 0, quiet(out.stdout + out.stderr)
        losses[backend] = json.loads(dump.read_text())["losses"]
    assert len(losses["topoccl"]) == 40
    assert losses["topoccl"] == losses["gloo"]


@pytest.mark.parametrize("codec", ["int8", "1bit", "rp:0.1", "powersgd:2"])
def test_ddp_with_topoccl_compression_learns_with_fewer_bytes(codec: str, tmp_path: Path) -> None:
    """topoccl.torch.hooks: the DDP example with --compress trains (the loss falls about as
    far as uncompressed), every rank ends with the same parameters (DDP checks buffers;
    the loss is all-reduced), and the hook's statistics show the bytes saved."""
    script = str(ROOT / "examples" / "python" / "train_ddp.py")
    runs = {}
    for name, extra in (("plain", []), ("compressed", ["--compress", codec])):
        dump = tmp_path / f"{name}.json"
        out = torchrun(2, script, "--steps", "80", "--losses", str(dump), *extra)
        assert out.returncode == 0, quiet(out.stdout + out.stderr)
        runs[name] = json.loads(dump.read_text())
    plain, comp = runs["plain"]["losses"], runs["compressed"]["losses"]
    first, last = sum(comp[:10]) / 10, sum(comp[-10:]) / 10
    assert last < 0.7 * first, f"{codec}: loss {first:.3f} -> {last:.3f}"
    if codec in ("int8", "1bit"):
        # A 10% projection, and PowerSGD of the whole bucket seen as one matrix (torch's
        # hook takes each layer's), learn more slowly in 80 steps; these keep up.
        assert last < 1.5 * sum(plain[-10:]) / 10 + 0.05, f"{codec}: {last:.3f} vs {plain}"
    stats = runs["compressed"]["compression"]
    assert stats["compressed_calls"] > 0
    assert stats["wire_bytes"] * 3 < stats["raw_bytes"], stats


def test_compression_hook_under_gloo_casts_or_says_it_cannot(tmp_path: Path) -> None:
    script = str(ROOT / "examples" / "python" / "train_ddp.py")
    ok = torchrun(2, script, "--backend", "gloo", "--compress", "fp16", "--steps", "10")
    assert ok.returncode == 0, quiet(ok.stdout + ok.stderr)
    bad = torchrun(2, script, "--backend", "gloo", "--compress", "int8", "--steps", "3")
    assert bad.returncode != 0
    assert "needs the topoccl backend" in bad.stdout + bad.stderr
