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

__all__ = ["OP_KINDS", "GLUE_KIND", "op_kind", "op_row", "glue_row"]

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

#: The kind of ``ModelGraph.glue`` rows: elementwise nodes between layers and ops that no layer's
#: epilogue absorbs (residual adds outside one, rotary mul/neg/cat, RMSNorm's pow/mean/rsqrt,
#: pooling), each a kernel launch of its own in a runtime like ONNX Runtime.
GLUE_KIND = "glue"
# Not glue: layout-only ops a runtime runs as metadata or folds into the next kernel (Reshape,
# Unsqueeze, a Transpose absorbed by MatMul); casts and copies of what export folds away.
_NOT_GLUE = frozenset({
    "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand", "expand_as", "slice", "select", "transpose",
    "permute", "t", "flatten", "unflatten", "contiguous", "clone", "alias", "detach", "detach_", "lift_fresh_copy",
    "to", "_to_copy", "type_as", "dropout", "split", "split_with_sizes", "chunk", "unbind", "getitem", "narrow",
    "as_strided", "_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_numel", "scalar_tensor", "arange",
    "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones"})


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


def glue_row(node: torch.fx.Node) -> dict | None:
    """The :data:`GLUE_KIND` row of a node that computes on activations and is neither a layer,
    an op (:func:`op_row`) nor layout-only; None otherwise. The caller keeps only nodes that
    depend on the model's input (what depends on constants alone, export folds) and outside every
    layer's epilogue. Bytes: the tensors it reads and writes; ``flops_other``: its output elements."""
    out = node.meta.get("val")
    name = str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
    if node.op != "call_function" or not isinstance(out, torch.Tensor) or name in _NOT_GLUE:
        return None
    if op_kind(node.target) is not None or out.is_complex() or not out.is_floating_point():
        return None
    reads = [t for t in (_val(a) for a in node.args) if t is not None]
    reads += [t for a in node.args if isinstance(a, (list, tuple)) for t in (_val(b) for b in a) if t is not None]
    return {"node": node.name, "kind": GLUE_KIND, "aten": str(node.target), "out_shape": tuple(out.shape),
            "macs": 0, "flops_other": int(out.numel()), "bytes_in": sum(_bytes(t) for t in reads),
            "bytes_out": _bytes(out), "weight_bytes": 0, "batch": None, "heads": None, "kv_heads": None,
            "seq_q": None, "seq_k": None, "head_dim": None}

