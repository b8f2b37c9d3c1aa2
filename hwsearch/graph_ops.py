"""Compute ops that are not prunable layers — attention, batched matmuls, embedding lookups,
normalisations and softmax — counted from the exported graph's tensor shapes.

Each becomes one row of :attr:`hwsearch.graph.ModelGraph.ops`: its kind, MACs, the bytes it
reads and writes, the bytes of a weight it reads (an embedding table), and for attention the
shapes that price it (batch, query heads, KV heads, query and key lengths, head dim). Cost models
price these rows or report them as a coverage gap, never as zero. ``group`` is the channel group
of the op's first input (:func:`hwsearch.graph._activation_groups`): when a plan prunes that
group, the op shrinks with it.

Counts (``B`` batch, ``H`` query heads, ``Hkv`` KV heads, ``L`` query length, ``S`` key length,
``D`` head dim, ``Dv`` value head dim):

============  ==========================================================================
attention     MACs ``B·H·L·S·(D + Dv)`` (QKᵀ and the weighted sum of V); bytes read: Q, K, V;
              written: the output. A fused kernel keeps the ``L×S`` scores on chip.
matmul        MACs = output elements × the contracted size; bytes: both operands and the output
embedding     no MACs; bytes read: the looked-up rows and the indices; weight: the table
norm          layer_norm / rms_norm: bytes in and out, ~5 flops per element
softmax       bytes in and out, ~5 flops per element
============  ==========================================================================
"""
from __future__ import annotations

import math
import re

import torch

__all__ = ["OP_KINDS", "op_kind", "op_row"]

OP_KINDS = ("attention", "matmul", "embedding", "norm", "softmax")
_KIND_BY_OP = {
    "scaled_dot_product_attention": "attention",
    "matmul": "matmul", "bmm": "matmul", "mm": "matmul", "addmm": "matmul", "baddbmm": "matmul",
    "einsum": "matmul",
    "embedding": "embedding",
    "layer_norm": "norm", "native_layer_norm": "norm", "rms_norm": "norm",
    "softmax": "softmax", "_softmax": "softmax", "_safe_softmax": "softmax", "log_softmax": "softmax",
}
FLOPS_PER_ELEMENT = {"norm": 5, "softmax": 5}


def op_kind(target: object) -> str | None:
    """The kind of an aten op (``aten.bmm.default`` → ``matmul``), None for any other op."""
    parts = str(target).split(".")
    return _KIND_BY_OP.get(parts[1]) if len(parts) >= 2 and parts[0] == "aten" else None


def _val(a: object) -> torch.Tensor | None:
    v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _bytes(t: torch.Tensor | None) -> int:
    return int(t.numel() * t.element_size()) if t is not None else 0


def _einsum_macs(equation: str, operands: list[torch.Tensor]) -> int:
    """Product of the sizes of every index letter: one MAC per point of the iteration space."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    size: dict[str, int] = {}
    for spec, t in zip(lhs, operands):
        letters = re.sub(r"\.\.\.", "", spec)
        for ch, n in zip(letters[::-1], tuple(t.shape)[::-1]):
            size[ch] = int(n)
    return math.prod(size.values()) if size else 0


def _matmul_row(name: str, args: tuple, out: torch.Tensor) -> dict:
    tensors = [t for t in (_val(a) for a in args) if t is not None]
    if name == "einsum":
        eq = next((a for a in args if isinstance(a, str)), "")
        ops = [t for t in (_val(a) for a in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
               if t is not None]
        macs = _einsum_macs(eq, ops)
        tensors = ops
    else:
        a, b = (tensors[-2], tensors[-1]) if name in ("addmm", "baddbmm") else (tensors[0], tensors[1])
        macs = int(out.numel()) * int(a.shape[-1])
        tensors = [a, b]
    return {"macs": macs, "bytes_in": sum(_bytes(t) for t in tensors), "bytes_out": _bytes(out)}


def _attention_row(args: tuple, out: torch.Tensor) -> dict:
    q, k, v = (_val(a) for a in args[:3])
    b, h, lq, d = (int(n) for n in q.shape[-4:]) if q.dim() == 4 else (1, *(int(n) for n in q.shape[-3:]))
    hkv, s = int(k.shape[-3]) if k.dim() >= 3 else h, int(k.shape[-2])
    dv = int(v.shape[-1])
    return {"macs": b * h * lq * s * (d + dv), "bytes_in": _bytes(q) + _bytes(k) + _bytes(v), "bytes_out": _bytes(out),
            "batch": b, "heads": h, "kv_heads": hkv, "seq_q": lq, "seq_k": s, "head_dim": d}


def op_row(node: torch.fx.Node) -> dict | None:
    """The row of one graph node, or None when it is not a counted op (see the module docstring)."""
    kind = op_kind(node.target)
    out = node.meta.get("val")
    if isinstance(out, (tuple, list)):  # native_layer_norm returns (out, mean, rstd)
        out = out[0] if out and isinstance(out[0], torch.Tensor) else None
    if kind is None or not isinstance(out, torch.Tensor):
        return None
    name = str(node.target).split(".")[1]
    row = {"node": node.name, "kind": kind, "aten": str(node.target), "out_shape": tuple(out.shape),
           "macs": 0, "flops_other": 0, "bytes_in": 0, "bytes_out": _bytes(out), "weight_bytes": 0,
           "batch": None, "heads": None, "kv_heads": None, "seq_q": None, "seq_k": None, "head_dim": None}
    if kind == "attention":
        row.update(_attention_row(node.args, out))
    elif kind == "matmul":
        row.update(_matmul_row(name, node.args, out))
    elif kind == "embedding":
        table, idx = _val(node.args[0]), _val(node.args[1])
        row.update({"bytes_in": _bytes(out) + _bytes(idx), "weight_bytes": _bytes(table)})
    else:  # norm, softmax: elementwise over the input
        x = _val(node.args[0])
        row.update({"bytes_in": _bytes(x), "flops_other": int(out.numel()) * FLOPS_PER_ELEMENT[kind]})
    return row
