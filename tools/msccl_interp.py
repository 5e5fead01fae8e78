#!/usr/bin/env python3
"""Independent interpreter / checker for MSCCL's XML algorithm format.

Why this exists: an exporter elsewhere in the project writes MSCCL algorithm
XML (the "old" format written by msccl-tools' ``ir_to_xml`` and read by
msccl-executor-nccl).  This tool checks such a file without trusting the
exporter's own model of it: it validates the structure against the rules the
executor enforces when loading, then *runs* the algorithm on random integer
data under many random interleavings and compares the result with the
collective's definition.  It is deliberately written from the format
description alone, so that a misunderstanding in the exporter is not silently
shared by the checker.

Usage::

    python3 tools/msccl_interp.py FILE.xml [--trials T] [--seed S] [--slots K]
                                  [--placement auto|in|out] [--strict] [--verbose]

FILE may be ``-`` for stdin.  Exit status: 0 when every check passes (one
``ok: ...`` line on stdout), 1 when the algorithm is invalid or computes the
wrong thing (one ``error: ...`` line on stderr naming the gpu/tb/step), 2 when
the input is not well-formed XML of this format or the command line is wrong.

Semantics decided here where the format leaves room (details in the
docstrings of the functions named):

* Memory is modelled per element, ``ELEMS_PER_CHUNK`` elements per chunk;
  input, output and scratch start out as distinct random integers, so reading
  memory nobody wrote shows up as a wrong result (`Program.make_memory`).
* The size of the user's buffers comes from ``nchunksperloop`` (the executor
  divides the user's data into that many chunks): allreduce/alltoall use N
  chunks in and out, allgather N/P in and N out, reduce_scatter N in and N/P
  out.  Declared ``i_chunks``/``o_chunks``/``s_chunks`` bound the offsets the
  steps may use and may not exceed those sizes (in-place programs legitimately
  declare 0 for the aliased buffer) (`buffer_shape`).
* A step is atomic.  A send copies its data into the connection FIFO when it
  runs; a receive takes the head message; a step that both receives and sends
  needs a message and a free slot at once, so cycles of forwarding steps need
  --slots >= 2.  A step with a ``depid`` may only start once the named step
  has completed (`Program.run_trial`).
* Dependencies must additionally survive msccl-executor-nccl's own
  bookkeeping: it drops ``nop`` steps, fuses runs of ``re`` steps, and signals
  completion with a per-tb counter.  Constructs for which that counter would not
  match the XML step numbers, or that its parser rejects, are errors
  (`executor_signals`).
* ``--placement auto`` tests in-place when inplace="1", out-of-place when
  inplace="0", and both when inplace="1" outofplace="1" (`placements_for`).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import reduce
from operator import add

# --------------------------------------------------------------------------
# Limits of msccl-executor-nccl (src/include/msccl/msccl_struct.h and
# msccl_parser.h).  Some executor versions use 64 steps; the brief asks for 256.
MSCCL_MAX_NUM_STEPS = 256
MSCCL_MAX_COUNT = 72                      # cnt must be < this (uint8 field + table size)
MSCCL_MAX_NUM_THREAD_BLOCKS_PER_CHANNEL = 32
MSCCL_MAX_REDUCE_FUSION = 16
# Parser limits, checked only with --strict.
PARSER_MAX_NODES = 4096                   # nodes loaded per rank
PARSER_MAX_SUBS = 1024                    # children per node
PARSER_MAX_ATTR_COUNT = 16
PARSER_MAX_STR_LEN = 255

ELEMS_PER_CHUNK = 2   # > 1 so that a value landing in the wrong half of a chunk is visible
BUFFERS = ("i", "o", "s")
PROTOCOLS = ("Simple", "LL", "LL128")
# Collective name -> canonical name.  msccl-tools writes "reduce_scatter",
# msccl-executor-nccl's parser only accepts "reducescatter"; --strict insists
# on the executor's spelling.
COLLECTIVES = {
    "allreduce": "allreduce",
    "allgather": "allgather",
    "reduce_scatter": "reduce_scatter",
    "reducescatter": "reduce_scatter",
    "alltoall": "alltoall",
}
EXECUTOR_COLL_NAMES = {"allreduce", "allgather", "reducescatter", "alltoall"}


class FormatError(Exception):
    """The input is not a well-formed instance of the format (exit status 2)."""


class AlgoError(Exception):
    """The algorithm is invalid, would hang, or computes a wrong result (exit status 1)."""


# --------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class StepKind:
    """What a step type does; one table instead of per-type special cases."""

    receives: bool    # takes a message from the tb's recv connection
    sends: bool       # puts a message on the tb's send connection
    reads_src: bool   # reads local (srcbuf, srcoff)
    writes_dst: bool  # writes local (dstbuf, dstoff)


STEP_KINDS = {
    "s": StepKind(receives=False, sends=True, reads_src=True, writes_dst=False),
    "r": StepKind(receives=True, sends=False, reads_src=False, writes_dst=True),
    "rcs": StepKind(receives=True, sends=True, reads_src=False, writes_dst=True),
    "rrc": StepKind(receives=True, sends=False, reads_src=True, writes_dst=True),
    "rrs": StepKind(receives=True, sends=True, reads_src=True, writes_dst=False),
    "rrcs": StepKind(receives=True, sends=True, reads_src=True, writes_dst=True),
    "cpy": StepKind(receives=False, sends=False, reads_src=True, writes_dst=True),
    "re": StepKind(receives=False, sends=False, reads_src=True, writes_dst=True),
    "nop": StepKind(receives=False, sends=False, reads_src=False, writes_dst=False),
}


@dataclass
class Step:
    s: int
    type: str
    srcbuf: str
    srcoff: int
    dstbuf: str
    dstoff: int
    cnt: int
    depid: int
    deps: int
    hasdep: int

    @property
    def kind(self) -> StepKind:
        return STEP_KINDS[self.type]


@dataclass
class ThreadBlock:
    gpu: int
    id: int
    send: int
    recv: int
    chan: int
    steps: list[Step] = field(default_factory=list)


@dataclass
class Gpu:
    id: int
    i_chunks: int
    o_chunks: int
    s_chunks: int
    tbs: list[ThreadBlock] = field(default_factory=list)


@dataclass
class Algo:
    name: str
    proto: str
    nchannels: int
    nchunksperloop: int
    ngpus: int
    coll_attr: str           # as written
    inplace: int
    outofplace: int | None   # None when the attribute is absent
    attrs: dict[str, str]
    gpus: list[Gpu]          # indexed by gpu id once validated

    @property
    def coll(self) -> str:
        return COLLECTIVES[self.coll_attr]

    def all_tbs(self):
        for gpu in self.gpus:
            yield from gpu.tbs


def where(tb: ThreadBlock, step: Step | None = None) -> str:
    """The 'gpu G tb T step S (type)' prefix every message starts with."""
    text = f"gpu {tb.gpu} tb {tb.id}"
    if step is not None:
        text += f" step {step.s} ({step.type})"
    return text


# --------------------------------------------------------------------------
# Parsing


_REQUIRED = object()


def _int_attr(elem: ET.Element, name: str, ctx: str, default=_REQUIRED) -> int:
    value = elem.get(name)
    if value is None:
        if default is _REQUIRED:
            raise FormatError(f"{ctx}: missing attribute {name!r}")
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise FormatError(f"{ctx}: attribute {name}={value!r} is not an integer") from None


def _str_attr(elem: ET.Element, name: str, ctx: str) -> str:
    value = elem.get(name)
    if value is None:
        raise FormatError(f"{ctx}: missing attribute {name!r}")
    return value


def _children(elem: ET.Element, tag: str, ctx: str) -> list[ET.Element]:
    """Children named `tag`; anything else is a format error rather than being
    skipped, because an exporter that writes unknown elements is confused."""
    kids = list(elem)
    for kid in kids:
        if kid.tag != tag:
            raise FormatError(f"{ctx}: unexpected element <{kid.tag}> (expected <{tag}>)")
    return kids


def parse_algo(text: str) -> Algo:
    """Parse XML text into the data model.  Only shape is checked here (tags,
    required attributes, integers); meaning is checked by `validate`."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FormatError(f"not well-formed XML: {exc}") from None
    if root.tag != "algo":
        raise FormatError(f"root element is <{root.tag}>, expected <algo>")
    ctx = "algo"
    algo = Algo(
        name=root.get("name", ""),
        proto=_str_attr(root, "proto", ctx),
        nchannels=_int_attr(root, "nchannels", ctx),
        nchunksperloop=_int_attr(root, "nchunksperloop", ctx),
        ngpus=_int_attr(root, "ngpus", ctx),
        coll_attr=_str_attr(root, "coll", ctx),
        inplace=_int_attr(root, "inplace", ctx),
        outofplace=_int_attr(root, "outofplace", ctx, default=None),
        attrs=dict(root.attrib),
        gpus=[],
    )
    for gpu_el in _children(root, "gpu", ctx):
        gctx = f"gpu {gpu_el.get('id', '?')}"
        gpu = Gpu(
            id=_int_attr(gpu_el, "id", gctx),
            i_chunks=_int_attr(gpu_el, "i_chunks", gctx),
            o_chunks=_int_attr(gpu_el, "o_chunks", gctx),
            s_chunks=_int_attr(gpu_el, "s_chunks", gctx),
        )
        for tb_el in _children(gpu_el, "tb", gctx):
            tctx = f"{gctx} tb {tb_el.get('id', '?')}"
            tb = ThreadBlock(
                gpu=gpu.id,
                id=_int_attr(tb_el, "id", tctx),
                send=_int_attr(tb_el, "send", tctx),
                recv=_int_attr(tb_el, "recv", tctx),
                chan=_int_attr(tb_el, "chan", tctx),
            )
            for step_el in _children(tb_el, "step", tctx):
                sctx = f"{tctx} step {step_el.get('s', '?')}"
                tb.steps.append(Step(
                    s=_int_attr(step_el, "s", sctx),
                    type=_str_attr(step_el, "type", sctx),
                    srcbuf=_str_attr(step_el, "srcbuf", sctx),
                    srcoff=_int_attr(step_el, "srcoff", sctx),
                    dstbuf=_str_attr(step_el, "dstbuf", sctx),
                    dstoff=_int_attr(step_el, "dstoff", sctx),
                    cnt=_int_attr(step_el, "cnt", sctx),
                    depid=_int_attr(step_el, "depid", sctx),
                    deps=_int_attr(step_el, "deps", sctx),
                    hasdep=_int_attr(step_el, "hasdep", sctx),
                ))
            gpu.tbs.append(tb)
        algo.gpus.append(gpu)
    return algo


# --------------------------------------------------------------------------
# --strict: what msccl-executor-nccl's hand-written XML parser can digest.

_TAG_PATTERNS = [
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r'<[A-Za-z_][\w.-]*(?: [A-Za-z_][\w.-]*="[^"\n\r]*")*(?: ?/)?>'),
    re.compile(r"</[A-Za-z_][\w.-]*>"),
]


def check_executor_syntax(text: str, algo: Algo) -> None:
    """Reject files the executor's own parser would refuse or misread.

    Why: that parser is not a real XML parser.  It only skips ' ', '\\n' and
    '\\r' between tags (a tab or an ``<?xml ...?>`` declaration is an error),
    needs each start tag on one line with single spaces before attributes and
    double-quoted values, requires minBytes/maxBytes/outofplace, spells the
    reduce-scatter collective "reducescatter", and has fixed-size tables.
    """
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \n\r":
            pos += 1
        if pos >= len(text):
            break
        for pattern in _TAG_PATTERNS:
            m = pattern.match(text, pos)
            if m:
                pos = m.end()
                break
        else:
            line = text.count("\n", 0, pos) + 1
            snippet = text[pos:pos + 30].split("\n")[0]
            raise AlgoError(f"strict: line {line}: msccl-executor-nccl's XML parser cannot read {snippet!r} "
                            "(only ' ', '\\n', '\\r' between tags; start tags on one line, "
                            "single spaces, double quotes; no <?xml?> declaration)")
    for name in ("minBytes", "maxBytes", "outofplace"):
        if name not in algo.attrs:
            raise AlgoError(f"strict: algo lacks attribute {name!r}, which msccl-executor-nccl requires")
    if algo.coll_attr not in EXECUTOR_COLL_NAMES:
        raise AlgoError(f"strict: coll={algo.coll_attr!r} is not accepted by msccl-executor-nccl "
                        f"(it expects one of {sorted(EXECUTOR_COLL_NAMES)})")
    root = ET.fromstring(text)
    for elem in root.iter():
        if len(elem.attrib) > PARSER_MAX_ATTR_COUNT:
            raise AlgoError(f"strict: <{elem.tag}> has {len(elem.attrib)} attributes; "
                            f"the executor's parser keeps only {PARSER_MAX_ATTR_COUNT}")
        for key, value in elem.attrib.items():
            if len(value) > PARSER_MAX_STR_LEN:
                raise AlgoError(f"strict: <{elem.tag}> attribute {key} is {len(value)} characters; "
                                f"the executor's parser buffer holds {PARSER_MAX_STR_LEN}")
        if len(elem) > PARSER_MAX_SUBS:
            raise AlgoError(f"strict: <{elem.tag}> has {len(elem)} children; "
                            f"the executor's parser allows {PARSER_MAX_SUBS}")
    for gpu in algo.gpus:
        nodes = 1 + len(algo.gpus) + len(gpu.tbs) + sum(len(tb.steps) for tb in gpu.tbs)
        if nodes > PARSER_MAX_NODES:
            raise AlgoError(f"strict: gpu {gpu.id}: rank {gpu.id} would load {nodes} XML nodes; "
                            f"the executor's parser is limited to {PARSER_MAX_NODES}")


# --------------------------------------------------------------------------
# Static validation


@dataclass(frozen=True)
class Shape:
    """Sizes of the user's buffers in chunks, per gpu."""

    n_in: int
    n_out: int


def buffer_shape(algo: Algo) -> Shape:
    """Derive the user's buffer sizes from nchunksperloop.

    Why nchunksperloop and not i_chunks/o_chunks: the executor splits the
    user's (larger) buffer into nchunksperloop chunks and ignores the declared
    input/output sizes, while msccl-tools declares only what the steps touch
    (an in-place allreduce declares o_chunks=0)."""
    n, p = algo.nchunksperloop, algo.ngpus
    if n <= 0:
        raise AlgoError(f"algo: nchunksperloop={n} must be positive")
    coll = algo.coll
    if coll == "allreduce":
        return Shape(n, n)
    if n % p:
        raise AlgoError(f"algo: nchunksperloop={n} is not a multiple of ngpus={p}, as {coll} needs")
    if coll == "allgather":
        return Shape(n // p, n)
    if coll == "reduce_scatter":
        return Shape(n, n // p)
    return Shape(n, n)  # alltoall: N = P * (chunks per peer)


def validate(algo: Algo) -> Shape:
    """Check everything that does not need running the algorithm.  Reorders
    algo.gpus by id.  Raises AlgoError with the first problem found."""
    if algo.proto not in PROTOCOLS:
        raise AlgoError(f"algo: proto={algo.proto!r} is not one of {', '.join(PROTOCOLS)}")
    if algo.coll_attr not in COLLECTIVES:
        raise AlgoError(f"algo: coll={algo.coll_attr!r} is not one of {', '.join(COLLECTIVES)}")
    if algo.inplace not in (0, 1):
        raise AlgoError(f"algo: inplace={algo.inplace} must be 0 or 1")
    if algo.outofplace not in (None, 0, 1):
        raise AlgoError(f"algo: outofplace={algo.outofplace} must be 0 or 1")
    if algo.ngpus < 1:
        raise AlgoError(f"algo: ngpus={algo.ngpus} must be positive")
    if algo.nchannels < 1:
        raise AlgoError(f"algo: nchannels={algo.nchannels} must be positive")
    shape = buffer_shape(algo)

    by_id: dict[int, Gpu] = {}
    for gpu in algo.gpus:
        if not 0 <= gpu.id < algo.ngpus:
            raise AlgoError(f"gpu {gpu.id}: id out of range for ngpus={algo.ngpus}")
        if gpu.id in by_id:
            raise AlgoError(f"gpu {gpu.id}: appears twice")
        by_id[gpu.id] = gpu
    missing = [g for g in range(algo.ngpus) if g not in by_id]
    if missing:
        raise AlgoError(f"gpu {missing[0]}: missing (ngpus={algo.ngpus})")
    algo.gpus = [by_id[g] for g in range(algo.ngpus)]

    for gpu in algo.gpus:
        _validate_gpu(algo, gpu, shape)
    _validate_connections(algo)
    for gpu in algo.gpus:
        _validate_dependencies(gpu)
    return shape


def _validate_gpu(algo: Algo, gpu: Gpu, shape: Shape) -> None:
    sizes = {"i": gpu.i_chunks, "o": gpu.o_chunks, "s": gpu.s_chunks}
    for buf, size in sizes.items():
        if size < 0:
            raise AlgoError(f"gpu {gpu.id}: {buf}_chunks={size} is negative")
    for buf, limit in (("i", shape.n_in), ("o", shape.n_out)):
        if sizes[buf] > limit:
            raise AlgoError(f"gpu {gpu.id}: {buf}_chunks={sizes[buf]} exceeds the {limit} chunks of the user's "
                            f"{'input' if buf == 'i' else 'output'} buffer implied by "
                            f"nchunksperloop={algo.nchunksperloop} for {algo.coll}")
    for index, tb in enumerate(gpu.tbs):
        if tb.id != index:
            raise AlgoError(f"gpu {gpu.id} tb {tb.id}: tb ids must be 0..n-1 in document order "
                            f"(expected {index})")
        for peer, role in ((tb.send, "send"), (tb.recv, "recv")):
            if peer == gpu.id:
                raise AlgoError(f"{where(tb)}: {role} peer is the gpu itself")
            if not -1 <= peer < algo.ngpus:
                raise AlgoError(f"{where(tb)}: {role}={peer} is not -1 or a gpu id < {algo.ngpus}")
        if not 0 <= tb.chan < algo.nchannels:
            raise AlgoError(f"{where(tb)}: chan={tb.chan} is outside 0..{algo.nchannels - 1} (nchannels)")
        if len(tb.steps) > MSCCL_MAX_NUM_STEPS:
            raise AlgoError(f"{where(tb)}: {len(tb.steps)} steps; MSCCL allows at most "
                            f"{MSCCL_MAX_NUM_STEPS} (MSCCL_MAX_NUM_STEPS)")
        for index_s, step in enumerate(tb.steps):
            _validate_step(tb, step, index_s, sizes)


def _validate_step(tb: ThreadBlock, step: Step, index: int, sizes: dict[str, int]) -> None:
    loc = where(tb, step)
    if step.s != index:
        raise AlgoError(f"{loc}: step numbers must be 0..m-1 in order (expected s={index})")
    if step.type not in STEP_KINDS:
        raise AlgoError(f"{loc}: unknown step type {step.type!r}")
    for name in ("srcbuf", "dstbuf"):   # the executor parses both on every step
        if getattr(step, name) not in BUFFERS:
            raise AlgoError(f"{loc}: {name}={getattr(step, name)!r} is not one of i, o, s")
    if step.hasdep not in (0, 1):
        raise AlgoError(f"{loc}: hasdep={step.hasdep} must be 0 or 1")
    if step.depid < -1 or (step.depid == -1) != (step.deps == -1) or step.deps < -1:
        raise AlgoError(f"{loc}: depid={step.depid} deps={step.deps}: both must be -1 (no dependency) "
                        "or both non-negative")
    kind = step.kind
    if step.type == "nop":
        return
    if not 1 <= step.cnt < MSCCL_MAX_COUNT:
        raise AlgoError(f"{loc}: cnt={step.cnt} must be in 1..{MSCCL_MAX_COUNT - 1} (MSCCL_MAX_COUNT)")
    if kind.sends and tb.send < 0:
        raise AlgoError(f"{loc}: sends, but the tb has send=-1")
    if kind.receives and tb.recv < 0:
        raise AlgoError(f"{loc}: receives, but the tb has recv=-1")
    operands = []
    if kind.reads_src:
        operands.append(("src", step.srcbuf, step.srcoff))
    if kind.writes_dst:
        operands.append(("dst", step.dstbuf, step.dstoff))
    for role, buf, off in operands:
        if off < 0 or off + step.cnt > sizes[buf]:
            raise AlgoError(f"{loc}: {role} {buf}[{off}:{off + step.cnt}] is outside the "
                            f"{sizes[buf]} chunks declared by {buf}_chunks")


def _validate_connections(algo: Algo) -> None:
    """Each side of a (src gpu -> dst gpu, channel) connection has at most one
    owning tb, and a tb that actually sends or receives needs a partner tb on
    the other side (otherwise the executor never sets the connection up)."""
    send_owner: dict[tuple[int, int, int], ThreadBlock] = {}
    recv_owner: dict[tuple[int, int, int], ThreadBlock] = {}
    per_channel: Counter = Counter()
    for tb in algo.all_tbs():
        if tb.send >= 0:
            key = (tb.gpu, tb.send, tb.chan)
            if key in send_owner:
                raise AlgoError(f"{where(tb)}: tb {send_owner[key].id} already owns the sending side of "
                                f"gpu {tb.gpu} -> gpu {tb.send} channel {tb.chan}")
            send_owner[key] = tb
            per_channel[(tb.gpu, tb.chan, "send")] += 1
        if tb.recv >= 0:
            key = (tb.recv, tb.gpu, tb.chan)
            if key in recv_owner:
                raise AlgoError(f"{where(tb)}: tb {recv_owner[key].id} already owns the receiving side of "
                                f"gpu {tb.recv} -> gpu {tb.gpu} channel {tb.chan}")
            recv_owner[key] = tb
            per_channel[(tb.gpu, tb.chan, "recv")] += 1
    for (gpu, chan, role), count in per_channel.items():
        if count > MSCCL_MAX_NUM_THREAD_BLOCKS_PER_CHANNEL:
            raise AlgoError(f"gpu {gpu}: {count} tbs with a {role} peer on channel {chan}; MSCCL allows "
                            f"{MSCCL_MAX_NUM_THREAD_BLOCKS_PER_CHANNEL} (MSCCL_MAX_NUM_THREAD_BLOCKS_PER_CHANNEL)")
    for tb in algo.all_tbs():
        if any(s.kind.sends for s in tb.steps) and (tb.gpu, tb.send, tb.chan) not in recv_owner:
            raise AlgoError(f"{where(tb)}: sends to gpu {tb.send} on channel {tb.chan}, but no tb of gpu "
                            f"{tb.send} has recv={tb.gpu} chan={tb.chan}")
        if any(s.kind.receives for s in tb.steps) and (tb.recv, tb.gpu, tb.chan) not in send_owner:
            raise AlgoError(f"{where(tb)}: receives from gpu {tb.recv} on channel {tb.chan}, but no tb of "
                            f"gpu {tb.recv} has send={tb.gpu} chan={tb.chan}")


def _validate_dependencies(gpu: Gpu) -> None:
    """Dependency targets exist, are marked hasdep="1", and are signalled by
    msccl-executor-nccl under the same step number the XML uses."""
    signals = {tb.id: executor_signals(tb) for tb in gpu.tbs}
    for tb in gpu.tbs:
        for step in tb.steps:
            if step.depid < 0:
                continue
            loc = where(tb, step)
            if step.depid >= len(gpu.tbs):
                raise AlgoError(f"{loc}: depends on tb {step.depid}, but gpu {gpu.id} has {len(gpu.tbs)} tbs")
            target_tb = gpu.tbs[step.depid]
            if step.deps >= len(target_tb.steps):
                raise AlgoError(f"{loc}: depends on tb {step.depid} step {step.deps}, but that tb has "
                                f"{len(target_tb.steps)} steps")
            target = target_tb.steps[step.deps]
            tloc = f"tb {step.depid} step {step.deps} ({target.type})"
            if not target.hasdep:
                raise AlgoError(f"{loc}: depends on {tloc}, which does not have hasdep=\"1\" "
                                "(the executor only signals steps marked hasdep)")
            if target_tb is tb and step.deps >= step.s:
                raise AlgoError(f"{loc}: depends on its own tb's step {step.deps}, which cannot have "
                                "completed yet (would hang)")
            if target.type == "nop":
                raise AlgoError(f"{loc}: depends on {tloc}; msccl-executor-nccl drops nops and never "
                                "signals them")
            signalled_as = signals[step.depid].get(step.deps)
            if signalled_as != step.deps:
                raise AlgoError(f"{loc}: depends on {tloc}, but msccl-executor-nccl signals that step as "
                                f"step {signalled_as} (a nop without a dependency earlier in tb "
                                f"{step.depid} is not counted), so the wait would not match")


def executor_signals(tb: ThreadBlock) -> dict[int, int]:
    """Mirror how msccl-executor-nccl lowers a tb's steps, and return, for each
    XML step that signals completion, the step number its kernel writes to the
    tb's flag.

    Why: the executor does not run the XML steps one by one.  Its parser drops
    nops (a nop's dependency is attached to the next real step), fuses a run of
    ``re`` steps with the same destination into one transmission, and its
    kernel recomputes XML step numbers from those counts.  Where that lowering
    rejects the file or changes when a step may run, the algorithm would not
    behave on the executor as the XML says, so it is an error here too."""
    groups: list[dict] = []      # one per executor transmission
    pending: list[int] = []      # nops whose dependency waits for the next transmission
    fusable = None               # (dstbuf, dstoff, srcbuf) a following re may join
    total_reductions = 0
    for step in tb.steps:
        if step.type == "nop":
            if step.depid >= 0:
                pending.append(step.s)
            continue             # nops leave the fusion state alone, like the parser
        loc = where(tb, step)
        if step.type == "re" and step.depid < 0 and fusable == (step.dstbuf, step.dstoff, step.srcbuf):
            group = groups[-1]
            if pending:
                raise AlgoError(f"{loc}: msccl-executor-nccl fuses this re with step {group['first']} and "
                                f"runs it before the dependency carried by nop step {pending[0]}")
            if step.cnt != group["cnt"]:
                raise AlgoError(f"{loc}: msccl-executor-nccl fuses this re with step {group['first']}, "
                                f"but their cnt differ ({group['cnt']} vs {step.cnt})")
            group["last"] = step.s
            group["reductions"] += 1
            group["hasdep"] = step.hasdep
        else:
            if pending and step.depid < 0:
                raise AlgoError(f"{loc}: follows nop step {pending[0]}, which carries a dependency, but has "
                                "no dependency itself; msccl-executor-nccl rejects this (a chain of nops "
                                "must end in a step with its own depid)")
            groups.append({"first": step.s, "last": step.s, "cnt": step.cnt, "reductions": 1,
                           "deps": len(pending) + (step.depid >= 0), "hasdep": step.hasdep})
            pending = []
        if step.type == "re":
            total_reductions += 1
            fusable = None if step.hasdep or total_reductions == MSCCL_MAX_REDUCE_FUSION \
                else (step.dstbuf, step.dstoff, step.srcbuf)
        else:
            fusable = None
    signals = {}
    counter = 0                  # the kernel's `step` variable
    for group in groups:
        if group["deps"]:
            counter += group["deps"] - 1
        counter += group["reductions"] - 1
        if group["hasdep"]:
            signals[group["last"]] = counter
        counter += 1
    return signals


# --------------------------------------------------------------------------
# Simulation


class Memory:
    """One gpu's buffers as flat element lists.

    Each buffer letter maps to (storage list, first element).  In-place
    placements map input and output onto one storage list the way NCCL callers
    pass them (allgather: input = output + g*n_in; reduce_scatter: output =
    input + g*n_out; allreduce/alltoall: the same buffer)."""

    def __init__(self, views: dict[str, tuple[list, int]]):
        self.views = views

    def span(self, buf: str, off: int, cnt: int) -> tuple[int, int, int]:
        """(storage identity, first element, end element) for overlap checks."""
        storage, base = self.views[buf]
        start = base + off * ELEMS_PER_CHUNK
        return id(storage), start, start + cnt * ELEMS_PER_CHUNK

    def read(self, buf: str, off: int, cnt: int) -> list:
        storage, base = self.views[buf]
        start = base + off * ELEMS_PER_CHUNK
        return storage[start:start + cnt * ELEMS_PER_CHUNK]

    def write(self, buf: str, off: int, values: list) -> None:
        storage, base = self.views[buf]
        start = base + off * ELEMS_PER_CHUNK
        storage[start:start + len(values)] = values


@dataclass
class Message:
    cnt: int
    data: list
    tb: ThreadBlock
    step: Step


class _Bag:
    """Set with O(1) add/discard and uniform random choice; deterministic for a
    given seed because choice depends only on insertion history."""

    def __init__(self):
        self.items: list[int] = []
        self.pos: dict[int, int] = {}

    def __len__(self):
        return len(self.items)

    def add(self, x: int) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: int) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i


def _value_factory(rng: random.Random, symbolic: bool):
    """Fresh-value maker.  Integer mode (the check) gives random 48-bit ints,
    so sums are exact and coincidences negligible.  Symbolic mode (only used to
    explain a failure) gives Counters naming where each value came from; both
    support `+`, so the same simulation code runs either."""
    if symbolic:
        return lambda label: Counter({label: 1})
    return lambda label: rng.getrandbits(48)


@dataclass
class TrialResult:
    memories: list[Memory]
    inputs: list[list]           # initial input contents per gpu
    steps: int
    messages: int
    max_depth: int


class Program:
    """A validated algorithm plus the indexes the scheduler needs."""

    def __init__(self, algo: Algo, shape: Shape):
        self.algo = algo
        self.shape = shape
        self.tbs: list[ThreadBlock] = list(algo.all_tbs())
        index = {(tb.gpu, tb.id): i for i, tb in enumerate(self.tbs)}
        self.out_conn = [(tb.gpu, tb.send, tb.chan) if tb.send >= 0 else None for tb in self.tbs]
        self.in_conn = [(tb.recv, tb.gpu, tb.chan) if tb.recv >= 0 else None for tb in self.tbs]
        self.sender_of = {c: i for i, c in enumerate(self.out_conn) if c is not None}
        self.receiver_of = {c: i for i, c in enumerate(self.in_conn) if c is not None}
        # For each step: flat index of the tb it waits on, or -1.
        self.dep_tb = [[index[(tb.gpu, s.depid)] if s.depid >= 0 else -1 for s in tb.steps]
                       for tb in self.tbs]
        # Tbs to re-examine when tb i completes a step.
        self.dependents: list[set[int]] = [set() for _ in self.tbs]
        for i, deps in enumerate(self.dep_tb):
            for j in deps:
                if j >= 0 and j != i:
                    self.dependents[j].add(i)
        self.total_steps = sum(len(tb.steps) for tb in self.tbs)

    # -- memory layout ------------------------------------------------------

    def make_memory(self, gpu: Gpu, in_place: bool, fresh) -> tuple[Memory, list]:
        """Build gpu's buffers filled with distinct junk, then write random input
        through the input view.  Returns the memory and the input contents."""
        e, shape, coll = ELEMS_PER_CHUNK, self.shape, self.algo.coll
        g = gpu.id

        def junk(letter: str, n_chunks: int) -> list:
            return [fresh(("junk", g, letter, k)) for k in range(n_chunks * e)]

        scratch = junk("s", gpu.s_chunks)
        if not in_place:
            views = {"i": (junk("i", shape.n_in), 0), "o": (junk("o", shape.n_out), 0)}
        elif coll == "allgather":
            out = junk("o", shape.n_out)
            views = {"i": (out, g * shape.n_in * e), "o": (out, 0)}
        elif coll == "reduce_scatter":
            inp = junk("i", shape.n_in)
            views = {"i": (inp, 0), "o": (inp, g * shape.n_out * e)}
        else:
            inp = junk("i", shape.n_in)
            views = {"i": (inp, 0), "o": (inp, 0)}
        views["s"] = (scratch, 0)
        memory = Memory(views)
        inputs = [fresh(("in", g, k)) for k in range(shape.n_in * e)]
        memory.write("i", 0, inputs)
        return memory, inputs

    def check_overlaps(self, in_place: bool) -> None:
        """A local step whose source and destination overlap without being
        identical has no defined result on a GPU; in-place aliasing can create
        such overlaps between an 'i' and an 'o' operand."""
        fresh = lambda label: 0  # noqa: E731 - values are irrelevant here
        for gpu in self.algo.gpus:
            memory, _ = self.make_memory(gpu, in_place, fresh)
            for tb in gpu.tbs:
                for step in tb.steps:
                    if not (step.kind.reads_src and step.kind.writes_dst):
                        continue
                    a = memory.span(step.srcbuf, step.srcoff, step.cnt)
                    b = memory.span(step.dstbuf, step.dstoff, step.cnt)
                    if a[0] == b[0] and a[1] != b[1] and a[1] < b[2] and b[1] < a[2]:
                        raise AlgoError(f"{where(tb, step)}: source {step.srcbuf}[{step.srcoff}] and destination "
                                        f"{step.dstbuf}[{step.dstoff}] partially overlap"
                                        f"{' (in-place aliasing)' if in_place else ''}")

    # -- one run ------------------------------------------------------------

    def run_trial(self, in_place: bool, seed: int, slots: int, symbolic: bool = False) -> TrialResult:
        """Execute every tb to completion under one random interleaving.

        Scheduling depends only on `seed` (not on data), so a symbolic rerun
        with the same seed replays the same interleaving.  Even seeds pick a
        uniformly random runnable tb each time; odd seeds give tbs random
        priorities with a few random priority drops (PCT-style), which lets one
        tb run far ahead of the others - uniform choice rarely does that."""
        sched = random.Random(f"sched:{seed}")
        fresh = _value_factory(random.Random(f"data:{seed}"), symbolic)
        memories, inputs = [], []
        for gpu in self.algo.gpus:
            memory, values = self.make_memory(gpu, in_place, fresh)
            memories.append(memory)
            inputs.append(values)

        tbs, dep_tb = self.tbs, self.dep_tb
        pc = [0] * len(tbs)
        fifos: dict[tuple[int, int, int], deque] = {c: deque() for c in self.receiver_of}

        def runnable(i: int) -> bool:
            steps = tbs[i].steps
            if pc[i] >= len(steps):
                return False
            step = steps[pc[i]]
            j = dep_tb[i][pc[i]]
            if j >= 0 and pc[j] <= step.deps:
                return False
            kind = step.kind
            if kind.receives and not fifos[self.in_conn[i]]:
                return False
            if kind.sends and len(fifos[self.out_conn[i]]) >= slots:
                return False
            return True

        priority_mode = seed % 2 == 1
        priority = list(range(len(tbs)))
        sched.shuffle(priority)
        drops = set(sched.sample(range(max(self.total_steps, 1)), min(3, self.total_steps)))

        bag = _Bag()
        for i in range(len(tbs)):
            if runnable(i):
                bag.add(i)
        executed = messages = max_depth = 0
        while len(bag):
            if priority_mode:
                i = max(bag.items, key=priority.__getitem__)
                if executed in drops:
                    priority[i] = -executed - 1
            else:
                i = bag.items[sched.randrange(len(bag))]
            tb = tbs[i]
            step = tb.steps[pc[i]]
            sent = self._execute(tb, step, memories[tb.gpu], fifos, i)
            pc[i] += 1
            executed += 1
            recheck = {i} | self.dependents[i]
            if step.kind.receives:
                recheck.add(self.sender_of[self.in_conn[i]])
            if sent:
                messages += 1
                depth = len(fifos[self.out_conn[i]])
                max_depth = max(max_depth, depth)
                recheck.add(self.receiver_of[self.out_conn[i]])
            for j in recheck:
                if runnable(j):
                    bag.add(j)
                else:
                    bag.discard(j)

        if executed < self.total_steps:
            raise AlgoError("deadlock: " + self._describe_deadlock(pc, fifos, slots))
        for (src, dst, chan), fifo in fifos.items():
            if fifo:
                m = fifo[0]
                raise AlgoError(f"message from gpu {src} to gpu {dst} channel {chan} never received "
                                f"(sent by {where(m.tb, m.step)}, cnt={m.cnt}; {len(fifo)} left over)")
        return TrialResult(memories, inputs, executed, messages, max_depth)

    def _execute(self, tb: ThreadBlock, step: Step, memory: Memory, fifos, i: int) -> bool:
        """Perform one step; return True if it put a message on a connection."""
        kind = step.kind
        received = None
        if kind.receives:
            msg = fifos[self.in_conn[i]].popleft()
            if msg.cnt != step.cnt:
                raise AlgoError(f"{where(tb, step)}: receives cnt={step.cnt}, but the next message from gpu "
                                f"{tb.recv} on channel {tb.chan} has cnt={msg.cnt} "
                                f"(sent by {where(msg.tb, msg.step)})")
            received = msg.data
        t = step.type
        if t == "s":
            out = memory.read(step.srcbuf, step.srcoff, step.cnt)
        elif t in ("r", "rcs"):
            memory.write(step.dstbuf, step.dstoff, received)
            out = received
        elif t in ("rrc", "rrs", "rrcs"):
            out = [a + b for a, b in zip(memory.read(step.srcbuf, step.srcoff, step.cnt), received)]
            if kind.writes_dst:
                memory.write(step.dstbuf, step.dstoff, out)
        elif t == "cpy":
            memory.write(step.dstbuf, step.dstoff, memory.read(step.srcbuf, step.srcoff, step.cnt))
            out = None
        elif t == "re":
            src = memory.read(step.srcbuf, step.srcoff, step.cnt)
            dst = memory.read(step.dstbuf, step.dstoff, step.cnt)
            memory.write(step.dstbuf, step.dstoff, [d + s for d, s in zip(dst, src)])
            out = None
        else:  # nop
            out = None
        if kind.sends:
            fifos[self.out_conn[i]].append(Message(step.cnt, list(out), tb, step))
            return True
        return False

    def _describe_deadlock(self, pc, fifos, slots: int, limit: int = 6) -> str:
        """Say what each unfinished tb is waiting for."""
        waits = []
        for i, tb in enumerate(self.tbs):
            if pc[i] >= len(tb.steps):
                continue
            step = tb.steps[pc[i]]
            j = self.dep_tb[i][pc[i]]
            if j >= 0 and pc[j] <= step.deps:
                reason = f"waits for tb {step.depid} step {step.deps} (that tb is at step {pc[j]})"
            elif step.kind.receives and not fifos[self.in_conn[i]]:
                reason = f"waits for a message from gpu {tb.recv} on channel {tb.chan}"
            else:
                reason = (f"waits for room to send to gpu {tb.send} on channel {tb.chan} "
                          f"({len(fifos[self.out_conn[i]])} of {slots} slots full)")
            waits.append(f"{where(tb, step)} {reason}")
        more = f"; ... and {len(waits) - limit} more" if len(waits) > limit else ""
        return "; ".join(waits[:limit]) + more


# --------------------------------------------------------------------------
# Expected results


def expected_output(coll: str, shape: Shape, inputs: list[list], g: int) -> list:
    """The collective's definition, element by element, for gpu g's output."""
    e, p = ELEMS_PER_CHUNK, len(inputs)
    total = lambda values: reduce(add, values)  # noqa: E731 - works for ints and Counters
    if coll == "allreduce":
        return [total(inp[k] for inp in inputs) for k in range(shape.n_out * e)]
    if coll == "allgather":
        return [x for inp in inputs for x in inp]
    if coll == "reduce_scatter":
        base = g * shape.n_out * e
        return [total(inp[base + k] for inp in inputs) for k in range(shape.n_out * e)]
    per_peer = shape.n_in // p * e        # alltoall
    return [x for inp in inputs for x in inp[g * per_peer:(g + 1) * per_peer]]


def first_mismatch(program: Program, result: TrialResult) -> tuple[int, int] | None:
    """(gpu, element) of the first wrong output element, or None."""
    shape = program.shape
    for g, memory in enumerate(result.memories):
        got = memory.read("o", 0, shape.n_out)
        want = expected_output(program.algo.coll, shape, result.inputs, g)
        for k, (a, b) in enumerate(zip(got, want)):
            if a != b:
                return g, k
    return None


def _describe_value(value: Counter, elem: int) -> str:
    """Render a symbolic value as 'g0.i[3] + 2*g1.i[3] + junk g2.o[0]'.  An
    element from another position inside its chunk is marked '#e'."""
    terms = []
    for label, mult in sorted(value.items(), key=lambda kv: str(kv[0])):
        if label[0] == "in":
            _, g, k = label
            text = f"g{g}.i[{k // ELEMS_PER_CHUNK}]"
        else:
            _, g, letter, k = label
            text = f"uninitialised g{g}.{letter}[{k // ELEMS_PER_CHUNK}]"
        if k % ELEMS_PER_CHUNK != elem % ELEMS_PER_CHUNK:
            text += f"#{k % ELEMS_PER_CHUNK}"
        terms.append(text if mult == 1 else f"{mult}*{text}")
    return " + ".join(terms) or "0"


def explain_mismatch(program: Program, in_place: bool, seed: int, slots: int, g: int, k: int) -> str:
    """Replay the failing trial symbolically to say what went where."""
    result = program.run_trial(in_place, seed, slots, symbolic=True)
    got = result.memories[g].read("o", 0, program.shape.n_out)[k]
    want = expected_output(program.algo.coll, program.shape, result.inputs, g)[k]
    return f"got {_describe_value(got, k)}, expected {_describe_value(want, k)}"


# --------------------------------------------------------------------------
# Driver


def placements_for(algo: Algo, requested: str) -> list[bool]:
    """List of in_place flags to test.  'auto' follows inplace= and adds the
    out-of-place run when the file also claims outofplace="1"."""
    if requested == "in":
        return [True]
    if requested == "out":
        return [False]
    if algo.inplace:
        return [True, False] if algo.outofplace == 1 else [True]
    return [False]


def check_text(text: str, trials: int = 10, seed: int = 0, slots: int = 8, placement: str = "auto",
               strict: bool = False, log=None) -> str:
    """Check one XML document; return the 'ok: ...' line or raise
    FormatError / AlgoError.  `log`, if given, receives per-trial lines."""
    if trials < 1 or slots < 1:
        raise FormatError("--trials and --slots must be at least 1")
    algo = parse_algo(text)
    shape = validate(algo)
    if strict:
        check_executor_syntax(text, algo)
    program = Program(algo, shape)
    modes = placements_for(algo, placement)
    for in_place in modes:
        mode = "in-place" if in_place else "out-of-place"
        program.check_overlaps(in_place)
        for t in range(trials):
            trial_seed = seed + t
            label = (f"trial seed {trial_seed}, {mode}, "
                     f"{'priority' if trial_seed % 2 else 'uniform'} scheduling")
            try:
                result = program.run_trial(in_place, trial_seed, slots)
            except AlgoError as exc:
                raise AlgoError(f"{exc} [{label}]") from None
            bad = first_mismatch(program, result)
            if bad is not None:
                g, k = bad
                why = explain_mismatch(program, in_place, trial_seed, slots, g, k)
                raise AlgoError(f"wrong result: gpu {g} output chunk {k // ELEMS_PER_CHUNK} "
                                f"(element {k % ELEMS_PER_CHUNK}): {why} [{label}]")
            if log:
                log(f"{label}: {result.steps} steps, {result.messages} messages, "
                    f"max FIFO depth {result.max_depth}: ok")
    ntbs = len(program.tbs)
    where_ = " + ".join("in-place" if m else "out-of-place" for m in modes)
    return (f"ok: {algo.coll_attr}, {algo.ngpus} gpus, {ntbs} tbs, {program.total_steps} steps, "
            f"{trials} trials ({where_})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check an MSCCL XML algorithm by running it on random data under random schedules.")
    parser.add_argument("file", help="XML file, or - for stdin")
    parser.add_argument("--trials", type=int, default=10, help="random schedules per placement (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first trial seed; trial t uses seed+t (default 0)")
    parser.add_argument("--slots", type=int, default=8,
                        help="messages a connection FIFO holds, like NCCL_STEPS (default 8); "
                             "rings of rcs/rrs/rrcs steps need at least 2")
    parser.add_argument("--placement", choices=("auto", "in", "out"), default="auto",
                        help="in-place, out-of-place, or follow the inplace/outofplace attributes (default)")
    parser.add_argument("--strict", action="store_true",
                        help="also enforce msccl-executor-nccl's XML parser quirks and required attributes")
    parser.add_argument("--verbose", "-v", action="store_true", help="print a line per trial")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.slots < 1:
        parser.error("--trials and --slots must be at least 1")
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        print(f"usage error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        line = check_text(text, args.trials, args.seed, args.slots, args.placement, args.strict,
                          log=print if args.verbose else None)
    except FormatError as exc:
        print(f"malformed: {exc}", file=sys.stderr)
        return 2
    except AlgoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
