"""Lowering the ops of an MCU graph (:mod:`._graph`) to the kernels: each layer's kernel op,
geometry and weight format, the int8 quantisation of every op and the host reference.

Numerics. ``fp32``: float kernels, the reference is the folded graph run by PyTorch.
``int8``: symmetric per-tensor activation scales calibrated on the example input (or a
``calibration`` batch), per-output-channel weight scales, int32 biases, the kernels'
requantisation (``hw_kernels.h``) and the glue ops' integer arithmetic (``hw_ops.h``); the
reference output is an exact integer simulation of that arithmetic on the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ._graph import GraphReader, Op
from ._layers import LayerGeom, geometry, pack_layer, scratch_bytes
from ._reference import quantize_symmetric, reference_acc, requant_from_real, requantize

__all__ = ["AUTO_FORMATS", "Lowered", "lower_ops", "to_kernel"]

AUTO_FORMATS = ("dense", "csr", "bitmask", "nm", "block")
ADD_SHIFT = 16          # hw_add_s8: multipliers in Q16
ADD_MAX_RATIO = 32.0    # s_in / s_out of an add is kept below this (int32 headroom, see hw_ops.h)


@dataclass
class _Layer:
    """A layer op in kernel terms."""

    op: str                      # kernel op: linear / conv1d / conv2d / dwconv2d
    geom: LayerGeom
    w: np.ndarray                # float, kernel-op PyTorch layout (dwconv2d: 4-D), columns permuted
    fmt: str
    n: int
    m: int
    block: tuple[int, int]


@dataclass
class Lowered:
    """The lowered graph: ``built`` holds one dict per op (manifest fields plus ``geom``,
    ``packs`` and ``params`` for the C emitter); ``q`` the int8 simulation of every tensor
    (PyTorch layout, no batch) and ``scale`` its scale (int8 only); ``shape_of`` every tensor's
    shape (aliases: their base's)."""

    dtype: str
    shape_of: dict[str, tuple[int, ...]]
    built: list[dict] = field(default_factory=list)
    q: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    @property
    def s8(self) -> bool:
        return self.dtype == "int8"


def _kernel_layer(op: Op, in_shape: tuple[int, ...], spec: Mapping[str, Any], depthwise_kernel: str) -> _Layer:
    w = np.asarray(op.weight, dtype=np.float32)
    if op.torch_op == "linear":
        if op.perm is not None:
            w = w[:, op.perm]
        g = geometry("linear", w.shape, (int(np.prod(in_shape)),))
        kop = "linear"
    else:
        c = in_shape[0]
        dw = op.groups > 1 and op.groups == c == w.shape[0] and w.shape[1] == 1
        if dw and depthwise_kernel == "dw":
            if op.torch_op == "conv1d":
                w = w.reshape(w.shape[0], 1, 1, w.shape[-1])
                xs = (c, 1, in_shape[1])
                stride, pad = (1, op.stride[0]), (0, op.padding[0])
            else:
                xs, stride, pad = in_shape, op.stride, op.padding
            kop = "dwconv2d"
            g = geometry(kop, w.shape, xs, stride=stride, padding=pad)
        else:
            kop = op.torch_op
            st = op.stride[0] if kop == "conv1d" else op.stride
            pd_ = op.padding[0] if kop == "conv1d" else op.padding
            g = geometry(kop, w.shape, in_shape, stride=st, padding=pd_, groups=op.groups)
    block = spec.get("block", (4, 4))
    return _Layer(kop, g, w, str(spec.get("fmt", "auto")), int(spec.get("n", 2)), int(spec.get("m", 4)),
                  (int(block[0]), int(block[1])))


def _choose_format(L: _Layer, wq: np.ndarray, name: str) -> tuple[str, list]:
    if L.fmt != "auto":
        try:
            return L.fmt, pack_layer(L.geom, wq, L.fmt, n=L.n, m=L.m, block=L.block)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: its weights do not fit format {L.fmt!r}: {exc}") from None
    best: tuple[str, list] | None = None
    for fmt in AUTO_FORMATS:
        try:
            packs = pack_layer(L.geom, wq, fmt, n=L.n, m=L.m, block=L.block)
        except ValueError:
            continue
        if best is None or sum(p.nbytes for p in packs) < sum(p.nbytes for p in best[1]):
            best = (fmt, packs)
    assert best is not None  # dense always packs
    return best


def to_kernel(a: np.ndarray) -> np.ndarray:
    """PyTorch-layout activation (no batch) -> channels-last, flattened."""
    if a.ndim >= 2:
        return np.moveaxis(a, 0, -1).reshape(-1)
    return a.reshape(-1)


def _mean_requant(m_real: float) -> tuple[int, int]:
    """(mult, shift) with mult * 2^-shift ~ m_real, mult < 2^31, shift in 1..62."""
    shift = int(np.clip(math.floor(math.log2((2 ** 31 - 1) / m_real)), 1, 62))
    mult = int(min(round(m_real * 2.0 ** shift), 2 ** 31 - 1))
    return mult, shift


def lower_ops(b: GraphReader, specs: Mapping[str, Mapping[str, Any]], rng: Mapping[str, float],
              fv: Mapping[str, np.ndarray], dtype: str, depthwise_kernel: str) -> Lowered:
    """Lower every op of ``b`` in order: ``specs`` are the layers' format requests (by op name),
    ``rng`` the calibrated max |value| of every tensor, ``fv`` the float value of every tensor
    for the example input (no batch). Raises ``ValueError`` for weights that do not fit the
    format asked for."""
    lw = Lowered(dtype, {t: b.tensors[b.base(t)].shape for t in b.tensors})
    if lw.s8:
        lw.scale[b.input] = max(rng[b.input], 1e-8) / 127.0
        lw.q[b.input] = np.clip(np.rint(fv[b.input] / lw.scale[b.input]), -127, 127).astype(np.int8)
    for op in b.ops:
        ins = [b.base(t) for t in op.inputs]
        info: dict[str, Any] = {"name": op.name, "kind": op.kind, "node": op.node, "inputs": ins,
                                "output": op.output, "relu": bool(op.relu)}
        y_rng = max(rng.get(op.output, 0.0), 1e-8)
        act_min = 0 if op.relu or op.kind == "relu" else -128
        if op.kind == "layer":
            _lower_layer(lw, op, info, ins, y_rng, act_min, specs[op.name], depthwise_kernel)
        elif op.kind == "add":
            _lower_add(lw, op, info, ins, y_rng, act_min)
        elif op.kind == "mean":
            _lower_mean(lw, op, info, ins, y_rng, act_min)
        else:  # relu
            info.update(op="relu", elems=int(np.prod(lw.shape_of[op.output])))
            if lw.s8:
                lw.scale[op.output] = lw.scale[ins[0]]
                lw.q[op.output] = np.maximum(lw.q[ins[0]], 0).astype(np.int8)
        lw.built.append(info)
    return lw


def _lower_layer(lw: Lowered, op: Op, info: dict[str, Any], ins: list[str], y_rng: float, act_min: int,
                 spec: Mapping[str, Any], depthwise_kernel: str) -> None:
    L = _kernel_layer(op, lw.shape_of[op.inputs[0]], spec, depthwise_kernel)
    g = L.geom
    bias_f = np.zeros(g.out_c) if op.bias is None else op.bias
    if lw.s8:
        kw_, params = _quantize_layer(lw, op, L, ins, bias_f, y_rng, act_min)
    else:
        kw_ = L.w
        params = {"bias": bias_f.astype(np.float32)}
    fmt, packs = _choose_format(L, kw_, op.name)
    info.update(op=g.op, fmt=fmt, shape=g.shape_dict(), geom=g, packs=packs, params=params,
                nnz=int(np.count_nonzero(kw_)), weights=int(kw_.size), macs=int(g.macs),
                weight_bytes=int(sum(p.nbytes for p in packs)),
                param_bytes=int(sum(p.nbytes for p in packs) + sum(v.nbytes for v in params.values())),
                scratch_bytes=int(scratch_bytes(g, lw.dtype)),
                n=L.n if fmt == "nm" else None, m=L.m if fmt == "nm" else None,
                block=list(L.block) if fmt == "block" else None)


def _quantize_layer(lw: Lowered, op: Op, L: _Layer, ins: list[str], bias_f: np.ndarray, y_rng: float,
                    act_min: int) -> tuple[np.ndarray, dict[str, Any]]:
    """int8 weights, bias and requantisation of a layer; records its output's simulation."""
    g = L.geom
    wq, ws = quantize_symmetric(L.w, axis=0)
    ws = ws.reshape(-1)
    wq = np.where(L.w == 0, 0, wq).astype(np.int8)
    s_x = lw.scale[ins[0]]
    bq = np.rint(bias_f / (s_x * ws)).astype(np.int32)
    s_y = y_rng / 127.0
    mreal = s_x * ws / s_y
    if mreal.max(initial=0) > 0.5:  # the kernels' SMMULR form tops out at 0.5
        s_y *= float(mreal.max()) / 0.5 * (1 + 1e-9)
        mreal = s_x * ws / s_y
    mult, shift = requant_from_real(mreal)
    xin = lw.q[ins[0]]
    if g.op == "linear":
        xin = to_kernel(xin).reshape(1, -1) if op.perm is not None else xin.reshape(1, -1)
    elif g.op == "dwconv2d" and xin.ndim == 2:
        xin = xin[:, None, :]
    acc = reference_acc(g.op, wq, xin, bq, stride=(g.stride_h, g.stride_w),
                        padding=(g.pad_h, g.pad_w), groups=g.groups)
    yq = requantize(acc, mult, shift, axis=1 if g.op == "linear" else 0, act_min=act_min)
    lw.q[op.output] = yq.reshape(lw.shape_of[op.output])
    lw.scale[op.output] = s_y
    return wq, {"bias": bq, "mult": mult, "shift": shift}


def _lower_add(lw: Lowered, op: Op, info: dict[str, Any], ins: list[str], y_rng: float, act_min: int) -> None:
    info.update(op="add", elems=int(np.prod(lw.shape_of[op.output])))
    if lw.s8:
        sa, sb = lw.scale[ins[0]], lw.scale[ins[1]]
        s_y = max(y_rng / 127.0, max(sa, sb) / ADD_MAX_RATIO)
        ma, mb = (int(round(s / s_y * (1 << ADD_SHIFT))) for s in (sa, sb))
        acc = lw.q[ins[0]].astype(np.int64) * ma + lw.q[ins[1]].astype(np.int64) * mb
        lw.q[op.output] = np.clip((acc + (1 << (ADD_SHIFT - 1))) >> ADD_SHIFT, act_min, 127).astype(np.int8)
        lw.scale[op.output] = s_y
        info["params"] = {"ma": ma, "mb": mb}


def _lower_mean(lw: Lowered, op: Op, info: dict[str, Any], ins: list[str], y_rng: float, act_min: int) -> None:
    xs = lw.shape_of[op.inputs[0]]
    pixels = int(np.prod(xs[1:]))
    info.update(op="mean", pixels=pixels, channels=int(xs[0]))
    if lw.s8:
        s_x = lw.scale[ins[0]]
        s_y = y_rng / 127.0
        mult, shift = _mean_requant(s_x / (pixels * s_y))
        acc = lw.q[ins[0]].reshape(xs[0], -1).astype(np.int64).sum(axis=1)
        r = (acc * mult + (1 << (shift - 1))) >> shift
        lw.q[op.output] = np.clip(r, act_min, 127).astype(np.int8).reshape(lw.shape_of[op.output])
        lw.scale[op.output] = s_y
        info["params"] = {"mult": mult, "shift": shift}
