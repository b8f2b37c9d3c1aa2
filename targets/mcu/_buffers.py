"""The activation buffer plan of an MCU graph: one arena, every tensor placed for its live range."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._graph import GraphReader, Op

__all__ = ["BufferPlan", "plan_buffers"]


@dataclass(frozen=True)
class BufferPlan:
    """Where every tensor lives: ``offsets`` (bytes into the arena, by tensor), ``arena`` bytes
    (8-aligned), ``live`` (first, last op index of each tensor), ``max_scratch`` bytes of the
    largest kernel scratch area (at least 8); ``out_t`` the output tensor and ``out_direct`` the
    same when its op writes straight into the caller's ``output`` (else ``None``)."""

    out_t: str
    out_direct: str | None
    offsets: dict[str, int]
    arena: int
    live: dict[str, tuple[int, int]]
    max_scratch: int

    def ptr(self, b: GraphReader, t: str) -> str:
        """The C expression of tensor ``t``'s buffer in ``model_run``."""
        t = b.base(t)
        if t == b.input:
            return "input"
        if t == self.out_direct:
            return "output"
        return f"HW_BUF({self.offsets[t]})"


def plan_buffers(b: GraphReader, built: list[dict], elem_bytes: int) -> BufferPlan:
    """The buffer plan of ``b``'s ops (``built``: the lowered ops, for their scratch bytes): the
    output is written in place into ``output`` when no op reads it."""
    out_t = b.base(b.output)
    out_direct = out_t if (out_t in b.producer and all(out_t not in [b.base(t) for t in o.inputs] for o in b.ops)) \
        else None
    offsets, arena, live = _arena(b, b.ops, elem_bytes, out_direct)
    max_scratch = max([8] + [i.get("scratch_bytes", 0) for i in built])
    return BufferPlan(out_t, out_direct, offsets, arena, live, max_scratch)


def _arena(b: GraphReader, order: list[Op], elem_bytes: int, out_direct: str | None
                  ) -> tuple[dict[str, int], int, dict[str, tuple[int, int]]]:
    """Offsets (bytes) in one arena for every op output except the model input and the output
    written straight to ``output``. A tensor lives from the op that writes it to the last op that
    reads it (through aliases), so a residual input stays live across its branch; an add or ReLU
    writes in place over an input that dies there. Greedy by size, first fit, 8-byte aligned."""
    last: dict[str, int] = {}
    for i, op in enumerate(order):
        for t in op.inputs:
            last[b.base(t)] = i
    last[b.base(b.output)] = len(order)
    first = {op.output: i for i, op in enumerate(order)}
    block_of: dict[str, str] = {}
    for i, op in enumerate(order):
        block_of.setdefault(op.output, op.output)
        if op.kind in ("add", "relu") and op.output != out_direct:
            for t in op.inputs:
                bt = b.base(t)
                if bt != b.input and last.get(bt) == i and bt in block_of:
                    block_of[op.output] = block_of[bt]
                    break
    blocks: dict[str, list[int]] = {}
    for t, blk in block_of.items():
        if t == out_direct:
            continue
        size = int(np.prod(b.tensors[t].shape)) * elem_bytes
        lo, hi = first[t], last.get(t, first[t])
        if blk in blocks:
            bl = blocks[blk]
            blocks[blk] = [max(bl[0], size), min(bl[1], lo), max(bl[2], hi)]
        else:
            blocks[blk] = [size, lo, hi]
    placed: list[tuple[int, int, int, int]] = []  # offset, size, lo, hi
    offsets: dict[str, int] = {}
    for blk, (size, lo, hi) in sorted(blocks.items(), key=lambda kv: (-kv[1][0], kv[1][1])):
        off = 0
        for o, s, l2, h2 in sorted((p for p in placed if not (p[3] < lo or hi < p[2])), key=lambda p: p[0]):
            if off + size <= o:
                break
            off = max(off, -(-(o + s) // 8) * 8)
        placed.append((off, size, lo, hi))
        offsets[blk] = off
    arena = max((o + s for o, s, _, _ in placed), default=0)
    tensor_off = {t: offsets[blk] for t, blk in block_of.items() if t != out_direct}
    live = {t: (first[t], last.get(t, first[t])) for t in block_of}
    return tensor_off, int(-(-arena // 8) * 8), live
