"""What a kernel-level latency predictor sees of a layer: one feature row per (plan, layer).

The features are computed from what a resolved plan gives per layer — its kept input and output
channels, its MACs at the kept shape, its kept activation bytes — and from the layer's static
signature (:func:`costmodels.kernels.static_signature`: kind, kernel, stride, input size, fused
epilogue), so the same function serves a resolved plan (:func:`resolved_features`, one
:class:`pandas.DataFrame` row per layer) and a batch of plans (:func:`array_features`,
:class:`costmodels.base.PlanArrays`, ``P × L`` layers at once). Both give identical numbers.

A weight-level pattern (unstructured, N:M, block) runs the dense kernel of its kept shape in
ONNX Runtime's CPU execution provider (it has no sparse kernels), so the features ignore the
weight density: the MACs are those of the kept dense shape.

Columns (:data:`FEATURES`): ``kind`` (0 conv, 1 depthwise, 2 grouped, 3 linear), ``ndim`` (spatial
dims of the kernel: 0 for linear), ``log_cin`` / ``log_cout`` (log2 of kept input / output
channels), ``log_k`` (log2 kernel elements), ``log_pos`` (log2 output positions: spatial size,
or tokens of a linear), ``log_stride``, ``log_groups``, ``log_macs``, ``log_weights`` (log2
weight elements), ``log_act`` (log2 input + output activation elements), ``log_intensity``
(log2 MACs per element touched), ``act`` (fused activation: 0 none, 1 ReLU-like, 2 GELU, 3
SiLU/sigmoid/tanh-like), ``add`` / ``mul`` (a residual add / a gating multiply fused after it),
``in_aligned`` / ``out_aligned`` (1 when the kept input / output channel count is a multiple of 8:
vectorised kernels run other widths with remainder loops, and on this kind of CPU a pruned layer
with an odd channel count can be slower than a wider aligned one), ``in_aligned16`` /
``out_aligned16`` (the same for 16: with AVX-512 ONNX Runtime runs 2-D convs in a blocked layout,
NCHWc, of 16 channels, so 8 kept channels can cost what 16 do; see ``studies/zeroshot``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from costmodels.kernels import static_signature

__all__ = ["FEATURES", "KIND_CODES", "ACT_CODES", "parse_static", "epilogue_codes",
           "feature_matrix", "resolved_features", "array_features"]

FEATURES = ("kind", "ndim", "log_cin", "log_cout", "log_k", "log_pos", "log_stride", "log_groups", "log_macs",
            "log_weights", "log_act", "log_intensity", "act", "add", "mul", "in_aligned", "out_aligned",
            "in_aligned16", "out_aligned16")
KIND_CODES = {"conv": 0, "depthwise": 1, "grouped": 2, "linear": 3}
#: Epilogue op → activation class (the tree splits on the class, not on the op name).
ACT_CODES = {"relu": 1, "relu6": 1, "hardtanh": 1, "clamp": 1, "leaky_relu": 1, "elu": 1, "gelu": 2,
             "silu": 3, "sigmoid": 3, "tanh": 3, "hardswish": 3, "hardsigmoid": 3}
_STATIC = re.compile(r"^(?P<kind>[a-z]+)\|w(?P<w>\([^)]*\))\|s(?P<s>\([^)]*\))\|p\([^)]*\)\|i\([^)]*\)"
                     r"(?:\|e(?P<e>.*))?$")


def epilogue_codes(epilogue: str) -> tuple[int, int, int]:
    """``(activation class, add, mul)`` of a fused epilogue such as ``"batch_norm+add+relu"``
    (:data:`ACT_CODES`; the last activation of the chain counts)."""
    ops = [o for o in (epilogue or "").split("+") if o]
    act = 0
    for o in ops:
        act = ACT_CODES.get(o, act)
    return act, int("add" in ops or "sub" in ops), int("mul" in ops or "div" in ops)


def parse_static(static: str) -> tuple[int, ...]:
    """What no plan changes of a layer, from its static signature (``"conv|w(3,)|s(1,)|p(1,)|i(16,)|ebatch_norm+relu"``).
    ``(kind code, ndim, kernel elements, stride product, activation class, add, mul)``; raises
    ``ValueError`` for a string that is not one (or of an unknown layer kind)."""
    m = _STATIC.match(static)
    if not m or m["kind"] not in KIND_CODES:
        raise ValueError(f"not a layer's static signature: {static!r}")
    w = [int(v) for v in m["w"].strip("()").split(",") if v.strip()]
    s = [int(v) for v in m["s"].strip("()").split(",") if v.strip()]
    act, add, mul = epilogue_codes(m["e"] or "")
    return (KIND_CODES[m["kind"]], len(w), int(np.prod(w)) if w else 1, int(np.prod(s)) if s else 1, act, add, mul)


def feature_matrix(static: Sequence[tuple[int, ...]], kept_in: np.ndarray, kept_out: np.ndarray,
                   macs: np.ndarray, cols2d: np.ndarray, act_elems: np.ndarray) -> np.ndarray:
    """``(..., L, len(FEATURES))`` features from per-layer :func:`parse_static` tuples (length
    ``L``) and ``(..., L)`` arrays: kept channels, MACs of the kept shape, the kept weight's
    columns per output channel (``cols2d``: input channels per group × kernel elements) and input
    + output activation elements."""
    st = np.asarray(static, dtype=float).reshape(len(static), 7)
    kind, ndim, ke, stride, act, add, mul = (st[:, i] for i in range(7))
    kept_in = np.maximum(np.asarray(kept_in, dtype=float), 1.0)
    kept_out = np.maximum(np.asarray(kept_out, dtype=float), 1.0)
    macs = np.maximum(np.asarray(macs, dtype=float), 1.0)
    cols = np.maximum(np.asarray(cols2d, dtype=float), 1.0)
    weights = kept_out * cols
    pos = np.maximum(macs / weights, 1.0)
    groups = np.maximum(kept_in * ke / cols, 1.0)
    acts = np.maximum(np.asarray(act_elems, dtype=float), 1.0)
    shape = np.broadcast(kept_in, kind).shape
    cols_out = [np.broadcast_to(kind, shape), np.broadcast_to(ndim, shape), np.log2(kept_in), np.log2(kept_out),
                np.broadcast_to(np.log2(ke), shape), np.log2(pos), np.broadcast_to(np.log2(stride), shape),
                np.log2(groups), np.log2(macs), np.log2(weights), np.log2(acts),
                np.log2(macs / (weights + acts)), np.broadcast_to(act, shape), np.broadcast_to(add, shape),
                np.broadcast_to(mul, shape), (kept_in % 8 == 0).astype(float), (kept_out % 8 == 0).astype(float),
                (kept_in % 16 == 0).astype(float), (kept_out % 16 == 0).astype(float)]
    return np.stack(cols_out, axis=-1)


def resolved_features(resolved: pd.DataFrame) -> np.ndarray:
    """``L × len(FEATURES)`` features of a resolved plan (:func:`hwsearch.core.resolve.resolve`)."""
    static = [parse_static(static_signature(r)) for _, r in resolved.iterrows()]
    ex_b = resolved["dtype_bytes"].to_numpy(dtype=float)
    acts = (resolved["act_in_bytes_kept"].to_numpy(dtype=float) + resolved["act_out_bytes_kept"].to_numpy(dtype=float))
    return feature_matrix(static, resolved["kept_in"].to_numpy(), resolved["kept_out"].to_numpy(),
                          resolved["dense_macs"].to_numpy(), resolved["cols2d"].to_numpy(), acts / ex_b)


def array_features(arrays: Any, layers: np.ndarray | None = None) -> np.ndarray:
    """``P × L × len(FEATURES)`` features of :class:`costmodels.base.PlanArrays` (of the layer
    columns selected by ``layers``, a boolean mask, when given)."""
    sel = np.ones(len(arrays.static), dtype=bool) if layers is None else np.asarray(layers, dtype=bool)
    static = [parse_static(s) for s, ok in zip(arrays.static, sel) if ok]
    ex_b = np.asarray(arrays.example_bytes, dtype=float)[sel][None, :]
    acts = (arrays.act_in_bytes_kept[:, sel] + arrays.act_out_bytes_kept[:, sel]) / ex_b
    return feature_matrix(static, arrays.kept_in[:, sel], arrays.kept_out[:, sel], arrays.dense_macs[:, sel],
                          arrays.cols2d[:, sel], acts)
