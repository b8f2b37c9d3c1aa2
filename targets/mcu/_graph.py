"""Export a PyTorch model *graph* (``torch.export``) as C for Cortex-M: layer kernels in their
sparse formats, glue ops (residual add, global mean pooling, ReLU), a buffer plan and
``model_run()``. See :func:`export_graph`.

What it takes (a ``ValueError`` naming the node and its aten op otherwise):

* ``conv1d`` / ``conv2d`` / ``convolution`` (not transposed, dilation 1, numeric padding), grouped
  and depthwise; ``linear``;
* ``batch_norm`` (eval) directly after a conv or linear whose output nothing else reads — folded
  into that layer's weight and bias;
* ``relu`` — fused into the layer, add or pooling before it when that output has no other
  reader, else a standalone op;
* ``add`` of two tensors of the same shape (residual connections);
* ``mean`` over all spatial dimensions and ``adaptive_avg_pool1d/2d`` to 1 (global pooling);
* ``flatten`` / ``view`` / ``reshape`` / ``squeeze`` (a conv activation flattened into a linear
  layer permutes that layer's columns: activations are channels-last on the MCU), and the no-ops
  ``dropout`` (eval), ``clone``, ``detach``, ``alias``, ``contiguous``.

Numerics. ``fp32``: float kernels, the reference is the folded graph run by PyTorch.
``int8``: symmetric per-tensor activation scales calibrated on the example input (or a
``calibration`` batch), per-output-channel weight scales, int32 biases, the kernels'
requantisation (``hw_kernels.h``) and the glue ops' integer arithmetic (``hw_ops.h``); the
reference output is an exact integer simulation of that arithmetic on the host, and the export
records how far its dequantised output lies from PyTorch's.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import _toolchain as tc
from ._formats import FORMATS
from ._layers import (LayerGeom, c_array, c_type, conv_initializer, geometry, mat_initializer, pack_layer,
                      scratch_bytes)
from ._reference import quantize_symmetric, reference_acc, requant_from_real, requantize

__all__ = ["export_graph", "GRAPH_KIND", "SUPPORTED_OPS"]

log = logging.getLogger(__name__)

GRAPH_KIND = "hwsearch-mcu-c-graph"
SUPPORTED_OPS = ("conv1d", "conv2d", "convolution", "linear", "batch_norm", "relu", "add", "mean",
                 "adaptive_avg_pool1d/2d", "flatten", "view", "reshape", "squeeze", "dropout", "clone",
                 "detach", "alias", "contiguous")
AUTO_FORMATS = ("dense", "csr", "bitmask", "nm", "block")
ADD_SHIFT = 16          # hw_add_s8: multipliers in Q16
ADD_MAX_RATIO = 32.0    # s_in / s_out of an add is kept below this (int32 headroom, see hw_ops.h)
KERNEL_SRC = {"int8": ("hw_kernels.h", "hw_kernels_tmpl.h", "hw_kernels_s8.c", "hw_ops.h", "hw_ops.c"),
              "fp32": ("hw_kernels.h", "hw_kernels_tmpl.h", "hw_kernels_f32.c", "hw_ops.h", "hw_ops.c")}
HARNESS_FILES = ("hw_startup.c", "hw_harness.h", "hw_link.ld")

_IDENTITY = {"aten.dropout.default", "aten.clone.default", "aten.detach.default", "aten.alias.default",
             "aten.contiguous.default", "aten.lift_fresh_copy.default", "aten.feature_dropout.default"}
_RESHAPE = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten.squeeze.dim",
            "aten.squeeze.dims", "aten.squeeze.default", "aten._unsafe_view.default"}
_SKIP = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default"}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]            # PyTorch shape without the batch dimension
    base: str | None = None           # an alias (flatten / no-op) of this tensor
    flat_from: tuple[int, ...] | None = None  # a channel-major flatten of a [C, (H,) W] activation
    nodes: list[Any] = field(default_factory=list)  # fx nodes that evaluate to this tensor


@dataclass
class _Op:
    kind: str                          # layer | add | mean | relu
    name: str                          # module path (layers) or node name
    node: str
    inputs: list[str]
    output: str
    relu: bool = False
    torch_op: str = ""                 # conv1d | conv2d | linear
    weight: np.ndarray | None = None   # float32, PyTorch layout, BN folded
    bias: np.ndarray | None = None
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    groups: int = 1
    perm: np.ndarray | None = None     # linear after a flatten: column permutation
    dims: int = 0                      # mean: number of pooled spatial dims


def _aten_name(node: Any) -> str:
    t = node.target
    return str(t) if not callable(t) or hasattr(t, "_schema") else getattr(t, "__name__", str(t))


def _module_path(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path or None


def _meta_shape(node: Any) -> tuple[int, ...]:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise ValueError(f"node {node.name!r} ({_aten_name(node)}) has no tensor shape in the exported graph")
    return tuple(int(s) for s in val.shape)


class _Builder:
    """Walks the exported graph into a list of :class:`_Op` over :class:`_Tensor` values."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        sig = ep.graph_signature
        self.params: dict[str, Any] = {}
        for ph, key in sig.inputs_to_parameters.items():
            self.params[ph] = ep.state_dict[key]
        for ph, key in sig.inputs_to_buffers.items():
            self.params[ph] = ep.state_dict[key] if key in ep.state_dict else ep.constants[key]
        for ph, key in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
            self.params[ph] = ep.constants[key]
        self.user_inputs = list(sig.user_inputs)
        self.tensors: dict[str, _Tensor] = {}
        self.ops: list[_Op] = []
        self.env: dict[str, str] = {}  # fx node name -> tensor name
        self.producer: dict[str, int] = {}
        self.output: str | None = None

    # -- helpers -------------------------------------------------------------------------------
    def _fail(self, node: Any, why: str) -> ValueError:
        return ValueError(f"node {node.name!r} ({_aten_name(node)}): {why}")

    def _tensor_arg(self, node: Any, arg: Any) -> str:
        name = getattr(arg, "name", None)
        if name is None or name not in self.env:
            raise self._fail(node, f"expects an activation tensor, got {arg!r}")
        return self.env[name]

    def _param(self, node: Any, arg: Any) -> np.ndarray | None:
        if arg is None:
            return None
        name = getattr(arg, "name", None)
        if name not in self.params:
            raise self._fail(node, f"expects a parameter or buffer, got {arg!r} (weights computed at run time "
                                   "are not supported)")
        return self.params[name].detach().cpu().numpy().astype(np.float64)

    def base(self, t: str) -> str:
        while self.tensors[t].base is not None:
            t = self.tensors[t].base  # type: ignore[assignment]
        return t

    def _new(self, node: Any, shape: tuple[int, ...], **kw: Any) -> str:
        name = node.name
        self.tensors[name] = _Tensor(name, shape, nodes=[node], **kw)
        self.env[node.name] = name
        return name

    def _batch1(self, node: Any) -> tuple[int, ...]:
        shape = _meta_shape(node)
        if not shape or shape[0] != 1:
            raise self._fail(node, f"output shape {shape}: export needs batch size 1 (give a single example)")
        return shape[1:]

    def _fusable(self, t: str) -> _Op | None:
        """The op producing ``t`` when its result may absorb a following BN/ReLU: ``t`` is that
        op's own output (no alias) and no other node reads it."""
        tt = self.tensors[t]
        if tt.base is not None or t not in self.producer:
            return None
        if any(len(n.users) != 1 for n in tt.nodes):
            return None
        return self.ops[self.producer[t]]

    def _add_op(self, op: _Op, node: Any, shape: tuple[int, ...]) -> None:
        self.ops.append(op)
        self._new(node, shape)
        self.producer[op.output] = len(self.ops) - 1

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.params:
                    continue
                if node.name not in self.user_inputs:
                    raise self._fail(node, "an input that is neither a parameter nor a user input")
                if self.tensors:
                    raise self._fail(node, "more than one model input is not supported")
                self._new(node, self._batch1(node))
                self.input = node.name
                continue
            if node.op == "output":
                outs = node.args[0]
                outs = outs if isinstance(outs, (tuple, list)) else (outs,)
                if len(outs) != 1:
                    raise self._fail(node, f"{len(outs)} model outputs; export supports one")
                self.output = self._tensor_arg(node, outs[0])
                continue
            if node.op != "call_function":
                raise self._fail(node, f"node kind {node.op!r} is not supported")
            self._call(node, _aten_name(node))

    def _call(self, node: Any, name: str) -> None:
        a = node.args
        if name in _SKIP:
            return
        if name in ("aten.conv1d.default", "aten.conv2d.default", "aten.convolution.default"):
            self._conv(node, name)
        elif name == "aten.linear.default":
            self._linear(node)
        elif name in ("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"):
            self._batch_norm(node, name)
        elif name == "getitem" or name.endswith("getitem"):
            src = getattr(a[0], "name", None)
            if src in self.env and a[1] == 0:
                self.env[node.name] = self.env[src]
                self.tensors[self.env[src]].nodes.append(node)
            elif src in self.env:
                pass  # running statistics outputs of a no-training batch norm: never read
            else:
                raise self._fail(node, "getitem of an unsupported value")
        elif name in ("aten.relu.default", "aten.relu_.default"):
            self._relu(node)
        elif name in ("aten.add.Tensor", "aten.add_.Tensor"):
            self._add(node)
        elif name in ("aten.mean.dim", "aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
                      "aten._adaptive_avg_pool2d.default"):
            self._mean(node, name)
        elif name in _RESHAPE:
            self._reshape(node)
        elif name in _IDENTITY:
            if name in ("aten.dropout.default", "aten.feature_dropout.default") and len(a) > 2 and a[2]:
                raise self._fail(node, "dropout in training mode; call model.eval() before exporting")
            t = self._tensor_arg(node, a[0])
            self.env[node.name] = t
            self.tensors[t].nodes.append(node)
        else:
            raise self._fail(node, f"op not supported by the MCU export; supported: {', '.join(SUPPORTED_OPS)}")

    def _conv(self, node: Any, name: str) -> None:
        a = list(node.args)
        kw = dict(node.kwargs)
        x = self._tensor_arg(node, a[0])
        w = self._param(node, a[1])
        b = self._param(node, a[2] if len(a) > 2 else kw.get("bias"))
        if name == "aten.convolution.default":
            stride, padding, dilation, transposed, _op, groups = a[3:9]
            if transposed:
                raise self._fail(node, "transposed convolutions are not supported")
        else:
            stride = a[3] if len(a) > 3 else kw.get("stride", [1])
            padding = a[4] if len(a) > 4 else kw.get("padding", [0])
            dilation = a[5] if len(a) > 5 else kw.get("dilation", [1])
            groups = a[6] if len(a) > 6 else kw.get("groups", 1)
        if isinstance(padding, str):
            raise self._fail(node, f"padding={padding!r}: give padding as numbers")
        nd = w.ndim - 2
        if nd not in (1, 2):
            raise self._fail(node, f"{nd}-d convolutions are not supported (conv1d, conv2d only)")

        def tup(v: Any) -> tuple[int, ...]:
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            return tuple(int(i) for i in (v * nd if len(v) == 1 else v))

        if any(d != 1 for d in tup(dilation)):
            raise self._fail(node, f"dilation {list(tup(dilation))} is not supported (dilation 1 only)")
        xs = self.tensors[x].shape
        if len(xs) != nd + 1:
            raise self._fail(node, f"input of shape {xs} for a {nd}-d convolution")
        op = _Op("layer", _module_path(node) or node.name, node.name, [x], node.name,
                 torch_op=f"conv{nd}d", weight=w, bias=b, stride=tup(stride), padding=tup(padding),
                 groups=int(groups))
        self._add_op(op, node, self._batch1(node))

    def _linear(self, node: Any) -> None:
        a = list(node.args)
        x = self._tensor_arg(node, a[0])
        w = self._param(node, a[1])
        b = self._param(node, a[2] if len(a) > 2 else node.kwargs.get("bias"))
        t = self.tensors[x]
        n_in = int(np.prod(t.shape))
        if n_in != w.shape[1]:
            raise self._fail(node, f"input of shape {t.shape} into a linear layer of {w.shape[1]} inputs "
                                   "(a linear layer must read a vector: pool or flatten first)")
        perm = None
        base = self.tensors[self.base(x)]
        if t.flat_from is not None and np.prod(t.flat_from[1:]) > 1:
            perm = _flatten_perm(t.flat_from)
        elif len(base.shape) > 1 and np.prod(base.shape[1:]) > 1:
            raise self._fail(node, f"a linear layer reading a {base.shape} activation that is not flattened")
        op = _Op("layer", _module_path(node) or node.name, node.name, [x], node.name, torch_op="linear",
                 weight=w, bias=b, perm=perm)
        self._add_op(op, node, self._batch1(node))

    def _batch_norm(self, node: Any, name: str) -> None:
        a = list(node.args)
        x = self._tensor_arg(node, a[0])
        gamma, beta, mean, var = (self._param(node, v) for v in a[1:5])
        if name == "aten.batch_norm.default":
            if a[5]:
                raise self._fail(node, "batch norm in training mode; call model.eval() before exporting")
            eps = float(a[7])
        else:
            eps = float(a[6])
        prod = self._fusable(x)
        if prod is None or prod.kind != "layer" or prod.relu:
            raise self._fail(node, "BatchNorm is folded into the conv or linear layer directly before it, "
                                   "whose output nothing else may read")
        c = prod.weight.shape[0]
        gamma = np.ones(c) if gamma is None else gamma
        beta = np.zeros(c) if beta is None else beta
        scale = gamma / np.sqrt(var + eps)
        prod.weight = prod.weight * scale.reshape(-1, *([1] * (prod.weight.ndim - 1)))
        prod.bias = (np.zeros(c) if prod.bias is None else prod.bias) * scale + (beta - mean * scale)
        self.env[node.name] = x
        self.tensors[x].nodes.append(node)

    def _relu(self, node: Any) -> None:
        x = self._tensor_arg(node, node.args[0])
        prod = self._fusable(x)
        if prod is not None and prod.kind in ("layer", "add", "mean") and not prod.relu:
            prod.relu = True
            self.env[node.name] = x
            self.tensors[x].nodes.append(node)
            return
        op = _Op("relu", node.name, node.name, [x], node.name)
        self._add_op(op, node, self._batch1(node))

    def _add(self, node: Any) -> None:
        a = list(node.args)
        if node.kwargs.get("alpha", 1) != 1:
            raise self._fail(node, "add with alpha != 1 is not supported")
        if len(a) < 2 or not all(hasattr(v, "name") for v in a[:2]):
            raise self._fail(node, "add of a tensor and a constant is not supported (fold it into a bias)")
        x, y = self._tensor_arg(node, a[0]), self._tensor_arg(node, a[1])
        sx, sy = self.tensors[x].shape, self.tensors[y].shape
        if sx != sy or self.tensors[x].flat_from != self.tensors[y].flat_from:
            raise self._fail(node, f"add of shapes {sx} and {sy}: only same-shape adds (no broadcasting)")
        op = _Op("add", node.name, node.name, [x, y], node.name)
        self._add_op(op, node, self._batch1(node))

    def _mean(self, node: Any, name: str) -> None:
        a = list(node.args)
        x = self._tensor_arg(node, a[0])
        xs = self.tensors[x].shape
        nd = len(xs) - 1
        if self.tensors[x].base is not None or nd < 1:
            raise self._fail(node, f"pooling of a {xs} tensor: global pooling of a conv activation only")
        if name == "aten.mean.dim":
            dims = a[1] if isinstance(a[1], (list, tuple)) else [a[1]]
            dims = sorted({(int(d) + nd + 2) % (nd + 2) for d in dims})
            if dims != list(range(2, nd + 2)):
                raise self._fail(node, f"mean over dims {a[1]}: only the mean over all spatial dims "
                                       "(global average pooling) is supported")
        else:
            size = a[1] if isinstance(a[1], (list, tuple)) else [a[1]]
            if any(int(s) != 1 for s in size):
                raise self._fail(node, f"adaptive pooling to {list(size)}: only global pooling (to 1) is supported")
        op = _Op("mean", node.name, node.name, [x], node.name, dims=nd)
        self._add_op(op, node, self._batch1(node))

    def _reshape(self, node: Any) -> None:
        x = self._tensor_arg(node, node.args[0])
        t = self.tensors[x]
        out = self._batch1(node)
        if int(np.prod(out)) != int(np.prod(t.shape)):
            raise self._fail(node, f"reshape of {t.shape} to {out}")
        spatial = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        out_spatial = int(np.prod(out[1:])) if len(out) > 1 else 1
        if t.flat_from is not None or spatial == 1:
            # a vector stays a vector in memory ([C], [C, 1] and [C, 1, 1] are the same bytes)
            if out_spatial != 1:
                raise self._fail(node, f"reshape of a vector to {out}: only vector shapes are supported")
            self._new(node, out, base=x, flat_from=t.flat_from)
        elif out_spatial == 1:
            self._new(node, out, base=x, flat_from=t.shape)  # flatten: channel-major in PyTorch
        elif out == t.shape:
            self._new(node, out, base=x)
        else:
            raise self._fail(node, f"reshape of a {t.shape} activation to {out}: only flattening into a vector "
                                   "is supported (activations are channels-last on the MCU)")


def _flatten_perm(shape: tuple[int, ...]) -> np.ndarray:
    """Columns of a linear layer reading PyTorch's channel-major flatten of ``shape`` ([C, (H,) W])
    re-ordered for the channels-last flatten the MCU holds."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return np.moveaxis(idx, 0, -1).reshape(-1)


# ---------------------------------------------------------------------------------------------
# float forward (PyTorch, batched) of the folded graph


def _forward(b: _Builder, x: Any) -> dict[str, Any]:
    """Float values of every tensor for an input batch ``x`` ``[N, ...]`` (torch tensors)."""
    import torch
    import torch.nn.functional as F

    vals: dict[str, Any] = {b.input: x}
    with torch.no_grad():
        for op in b.ops:
            for t in op.inputs:
                _resolve(b, vals, t)
            ins = [vals[t] for t in op.inputs]
            if op.kind == "layer":
                w = torch.from_numpy(op.weight.astype(np.float32))
                bias = None if op.bias is None else torch.from_numpy(op.bias.astype(np.float32))
                if op.torch_op == "linear":
                    y = F.linear(ins[0].reshape(ins[0].shape[0], -1), w, bias)
                elif op.torch_op == "conv1d":
                    y = F.conv1d(ins[0], w, bias, stride=op.stride, padding=op.padding, groups=op.groups)
                else:
                    y = F.conv2d(ins[0], w, bias, stride=op.stride, padding=op.padding, groups=op.groups)
            elif op.kind == "add":
                y = ins[0] + ins[1]
            elif op.kind == "mean":
                y = ins[0].mean(dim=tuple(range(2, 2 + op.dims)))
            else:
                y = ins[0]
            if op.relu or op.kind == "relu":
                y = torch.relu(y)
            vals[op.output] = y
        _resolve(b, vals, b.output)
    return vals


def _resolve(b: _Builder, vals: dict[str, Any], t: str) -> None:
    if t in vals:
        return
    base = b.tensors[t].base
    if base is None:
        raise RuntimeError(f"internal: tensor {t} has no value")
    _resolve(b, vals, base)
    v = vals[base]
    vals[t] = v.reshape(v.shape[0], *b.tensors[t].shape)


# ---------------------------------------------------------------------------------------------
# kernels, formats, quantisation


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


def _kernel_layer(op: _Op, in_shape: tuple[int, ...], spec: Mapping[str, Any], depthwise_kernel: str) -> _Layer:
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


def _to_kernel(a: np.ndarray) -> np.ndarray:
    """PyTorch-layout activation (no batch) -> channels-last, flattened."""
    if a.ndim >= 2:
        return np.moveaxis(a, 0, -1).reshape(-1)
    return a.reshape(-1)


def _mean_requant(m_real: float) -> tuple[int, int]:
    """(mult, shift) with mult * 2^-shift ~ m_real, mult < 2^31, shift in 1..62."""
    shift = int(np.clip(math.floor(math.log2((2 ** 31 - 1) / m_real)), 1, 62))
    mult = int(min(round(m_real * 2.0 ** shift), 2 ** 31 - 1))
    return mult, shift


# ---------------------------------------------------------------------------------------------
# buffers


def _plan_buffers(b: _Builder, order: list[_Op], elem_bytes: int, out_direct: str | None
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


# ---------------------------------------------------------------------------------------------
# the exporter


def _c_ident(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return s if s and not s[0].isdigit() else f"l_{s}"


def _format_spec(formats: Mapping[str, Any] | None, names: list[str], node_names: dict[str, str]) -> dict[str, dict]:
    specs: dict[str, dict] = {n: {"fmt": "auto"} for n in names}
    if not formats:
        return specs
    by_node = {v: k for k, v in node_names.items()}
    for key, val in formats.items():
        layer = key if key in specs else by_node.get(key)
        if layer is None:
            raise ValueError(f"formats names {key!r}, which is not a layer of the model; layers: {', '.join(names)}")
        spec = {"fmt": val} if isinstance(val, str) else dict(val)
        fmt = spec.get("fmt", "auto")
        if fmt not in FORMATS and fmt != "auto":
            raise ValueError(f"formats[{key!r}]: unknown fmt {fmt!r}; valid: {', '.join(FORMATS)}, auto")
        unknown = set(spec) - {"fmt", "n", "m", "block"}
        if unknown:
            raise ValueError(f"formats[{key!r}]: unknown keys {sorted(unknown)}; valid: fmt, n, m, block")
        specs[layer] = spec
    return specs


def export_graph(model: Any, example_input: Any, out_dir: str | Path, *, dtype: str = "int8",
                 formats: Mapping[str, Any] | None = None, calibration: Any = None,
                 depthwise_kernel: str = "dw", name: str = "model") -> Any:
    """Export ``model`` (an ``nn.Module`` in eval mode, run on ``example_input`` of batch size 1)
    as a C tree in ``out_dir`` and return an :class:`~targets.mcu.codegen.ExportResult`.

    ``formats`` maps a layer (its module path, e.g. ``"res1"``, or its graph node name) to a
    weight format — ``dense``, ``csr``, ``bitmask``, ``nm``, ``block`` or ``auto`` (default: the
    fewest weight bytes among the formats the weights fit) — or to a dict ``{"fmt": ..., "n": 2,
    "m": 4, "block": (4, 4)}``. Zeros in the weights are the pruned ones (prune first, e.g. with
    ``hwsearch.prune.apply(graph, plan, mode="fold")``). ``calibration``: an input batch
    ``[N, ...]`` whose ranges set the int8 activation scales (default: ``example_input``).
    ``depthwise_kernel``: ``"dw"`` runs depthwise convs (conv1d too, as height 1) on the depthwise
    kernel, ``"grouped"`` on the grouped-conv kernels (one input channel per group).

    The tree: ``model.h``/``model.c`` (``int <name>_run(const T *input, T *output)``: input and
    output channels-last, one arena of planned buffers, one scratch area), ``weights.c``/``.h``
    (``const`` arrays: flash), the kernels and glue ops, ``test/`` (QEMU harness, reference input
    and output, PyTorch's output) and ``manifest.json`` (per-op formats, shapes, weight bytes,
    buffer plan, flash and peak SRAM; :func:`~targets.mcu.codegen.build` adds measured
    instruction counts). Raises ``ValueError`` naming the node and aten op of anything it cannot
    export, a wrong ``formats`` entry or weights that do not fit the format asked for.
    """
    import torch

    from .codegen import ExportResult

    if dtype not in ("int8", "fp32"):
        raise ValueError(f"unknown dtype {dtype!r}; valid: int8, fp32")
    if depthwise_kernel not in ("dw", "grouped"):
        raise ValueError(f"unknown depthwise_kernel {depthwise_kernel!r}; valid: dw, grouped")
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    x = x.detach().float()
    if x.shape[0] != 1:
        raise ValueError(f"example_input must have batch size 1, got shape {tuple(x.shape)}")
    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        y_torch = model(x)
    if not isinstance(y_torch, torch.Tensor):
        raise ValueError(f"the model returns {type(y_torch).__name__}; export supports one output tensor")
    b = _Builder(ep)
    b.run()
    if b.output is None:
        raise ValueError("the exported graph has no output")
    if b.base(b.output) == b.input:
        raise ValueError("the model's output is its input: nothing to export")
    layers = [op for op in b.ops if op.kind == "layer"]
    names = [op.name for op in layers]
    if len(set(names)) != len(names):  # a module called twice: name its calls apart
        seen: dict[str, int] = {}
        for op in layers:
            k = seen.get(op.name, 0)
            seen[op.name] = k + 1
            if k:
                op.name = f"{op.name}#{k}"
        names = [op.name for op in layers]
    specs = _format_spec(formats, names, {op.name: op.node for op in layers})

    # float forward of the folded graph: a check of the folding, and the calibration ranges
    vals = _forward(b, x)
    y_fold = vals[b.output].reshape(y_torch.shape)
    tol = 1e-4 * max(1.0, float(y_torch.abs().max()))
    if float((y_fold - y_torch).abs().max()) > tol:
        raise RuntimeError(f"internal: the folded graph differs from the model by "
                           f"{float((y_fold - y_torch).abs().max()):g}; please report")
    calib = vals if calibration is None else _forward(b, torch.as_tensor(calibration).float())
    rng = {t: float(v.abs().max()) for t, v in calib.items() if b.tensors[t].base is None}
    fv = {t: v[0].numpy().astype(np.float32) for t, v in vals.items()}

    s8 = dtype == "int8"
    T, BT, sfx, eb = ("int8_t", "int32_t", "s8", 1) if s8 else ("float", "float", "f32", 4)
    shape_of = {t: b.tensors[b.base(t)].shape for t in b.tensors}

    # ---- per-op kernels, quantisation and the host reference --------------------------------------
    scale: dict[str, float] = {}
    q: dict[str, np.ndarray] = {}       # int8 simulation (PyTorch layout, no batch)
    if s8:
        scale[b.input] = max(rng[b.input], 1e-8) / 127.0
        q[b.input] = np.clip(np.rint(fv[b.input] / scale[b.input]), -127, 127).astype(np.int8)
    built: list[dict] = []
    for op in b.ops:
        ins = [b.base(t) for t in op.inputs]
        info: dict[str, Any] = {"name": op.name, "kind": op.kind, "node": op.node, "inputs": ins,
                                "output": op.output, "relu": bool(op.relu)}
        y_rng = max(rng.get(op.output, 0.0), 1e-8)
        act_min = 0 if op.relu or op.kind == "relu" else -128
        if op.kind == "layer":
            L = _kernel_layer(op, shape_of[op.inputs[0]], specs[op.name], depthwise_kernel)
            g = L.geom
            bias_f = np.zeros(g.out_c) if op.bias is None else op.bias
            if s8:
                wq, ws = quantize_symmetric(L.w, axis=0)
                ws = ws.reshape(-1)
                wq = np.where(L.w == 0, 0, wq).astype(np.int8)
                s_x = scale[ins[0]]
                bq = np.rint(bias_f / (s_x * ws)).astype(np.int32)
                s_y = y_rng / 127.0
                mreal = s_x * ws / s_y
                if mreal.max(initial=0) > 0.5:  # the kernels' SMMULR form tops out at 0.5
                    s_y *= float(mreal.max()) / 0.5 * (1 + 1e-9)
                    mreal = s_x * ws / s_y
                mult, shift = requant_from_real(mreal)
                xin = q[ins[0]]
                if g.op == "linear":
                    xin = _to_kernel(xin).reshape(1, -1) if op.perm is not None else xin.reshape(1, -1)
                elif g.op == "dwconv2d" and xin.ndim == 2:
                    xin = xin[:, None, :]
                acc = reference_acc(g.op, wq, xin, bq, stride=(g.stride_h, g.stride_w),
                                    padding=(g.pad_h, g.pad_w), groups=g.groups)
                yq = requantize(acc, mult, shift, axis=1 if g.op == "linear" else 0, act_min=act_min)
                q[op.output] = yq.reshape(shape_of[op.output])
                scale[op.output] = s_y
                kw_ = wq
                params = {"bias": bq, "mult": mult, "shift": shift}
            else:
                kw_ = L.w
                params = {"bias": bias_f.astype(np.float32)}
            fmt, packs = _choose_format(L, kw_, op.name)
            info.update(op=g.op, fmt=fmt, shape=g.shape_dict(), geom=g, packs=packs, params=params,
                        nnz=int(np.count_nonzero(kw_)), weights=int(kw_.size), macs=int(g.macs),
                        weight_bytes=int(sum(p.nbytes for p in packs)),
                        param_bytes=int(sum(p.nbytes for p in packs) + sum(v.nbytes for v in params.values())),
                        scratch_bytes=int(scratch_bytes(g, dtype)),
                        n=L.n if fmt == "nm" else None, m=L.m if fmt == "nm" else None,
                        block=list(L.block) if fmt == "block" else None)
        elif op.kind == "add":
            n = int(np.prod(shape_of[op.output]))
            info.update(op="add", elems=n)
            if s8:
                sa, sb = scale[ins[0]], scale[ins[1]]
                s_y = max(y_rng / 127.0, max(sa, sb) / ADD_MAX_RATIO)
                ma, mb = (int(round(s / s_y * (1 << ADD_SHIFT))) for s in (sa, sb))
                acc = q[ins[0]].astype(np.int64) * ma + q[ins[1]].astype(np.int64) * mb
                q[op.output] = np.clip((acc + (1 << (ADD_SHIFT - 1))) >> ADD_SHIFT, act_min, 127).astype(np.int8)
                scale[op.output] = s_y
                info["params"] = {"ma": ma, "mb": mb}
        elif op.kind == "mean":
            xs = shape_of[op.inputs[0]]
            pixels = int(np.prod(xs[1:]))
            info.update(op="mean", pixels=pixels, channels=int(xs[0]))
            if s8:
                s_x = scale[ins[0]]
                s_y = y_rng / 127.0
                mult, shift = _mean_requant(s_x / (pixels * s_y))
                acc = q[ins[0]].reshape(xs[0], -1).astype(np.int64).sum(axis=1)
                r = (acc * mult + (1 << (shift - 1))) >> shift
                q[op.output] = np.clip(r, act_min, 127).astype(np.int8).reshape(shape_of[op.output])
                scale[op.output] = s_y
                info["params"] = {"mult": mult, "shift": shift}
        else:  # relu
            n = int(np.prod(shape_of[op.output]))
            info.update(op="relu", elems=n)
            if s8:
                scale[op.output] = scale[ins[0]]
                q[op.output] = np.maximum(q[ins[0]], 0).astype(np.int8)
        built.append(info)

    out_t = b.base(b.output)
    out_direct = out_t if (out_t in b.producer and all(out_t not in [b.base(t) for t in o.inputs] for o in b.ops)) \
        else None
    offsets, arena, live = _plan_buffers(b, b.ops, eb, out_direct)
    max_scratch = max([8] + [i.get("scratch_bytes", 0) for i in built])

    def ptr(t: str) -> str:
        t = b.base(t)
        if t == b.input:
            return "input"
        if t == out_direct:
            return "output"
        return f"HW_BUF({offsets[t]})"

    # ---- C sources ------------------------------------------------------------------------------
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    wc = ["/* generated by targets.mcu.codegen.export_graph: layer weights in their kernel formats */",
          "#include <stdint.h>", '#include "weights.h"', ""]
    wh = ["/* generated by targets.mcu.codegen.export_graph */", "#ifndef HW_WEIGHTS_H", "#define HW_WEIGHTS_H",
          "#include <stdint.h>", ""]
    defs: list[str] = []
    calls: list[str] = []
    used = set()
    for k, (op, info) in enumerate(zip(b.ops, built)):
        cid = _c_ident(op.name)
        while cid in used:
            cid += "_"
        used.add(cid)
        info["c_name"] = cid
        y = ptr(op.output)
        if op.kind == "layer":
            g = info["geom"]
            mats = []
            for gi, pk in enumerate(info["packs"]):
                syms = {}
                for role, arr in pk.arrays.items():
                    sym = f"hw_{cid}_g{gi}_{role}"
                    wc.append(c_array(c_type(arr), sym, arr))
                    wh.append(f"extern const {c_type(arr)} {sym}[{max(arr.size, 1)}];")
                    syms[role] = sym
                mats.append(mat_initializer(pk, syms))
            p = info["params"]
            wc.append(c_array(BT, f"hw_{cid}_bias", p["bias"]))
            wh.append(f"extern const {BT} hw_{cid}_bias[{g.out_c}];")
            if s8:
                wc.append(c_array("int32_t", f"hw_{cid}_mult", p["mult"]))
                wc.append(c_array("int8_t", f"hw_{cid}_shift", p["shift"]))
                wh.append(f"extern const int32_t hw_{cid}_mult[{g.out_c}];")
                wh.append(f"extern const int8_t hw_{cid}_shift[{g.out_c}];")
                epi = (f"{{.mult = hw_{cid}_mult, .shift = hw_{cid}_shift, .out_zp = 0, "
                       f".act_min = {0 if op.relu else -128}, .act_max = 127}}")
            else:
                epi = f"{{.f_min = {'0.0f' if op.relu else '-INFINITY'}, .f_max = INFINITY}}"
            defs.append(f"static const hw_mat_t hw_{cid}_mats[{len(mats)}] = {{\n    " + ",\n    ".join(mats) + "\n};")
            defs.append(f"static const hw_epi_t hw_{cid}_epi = {epi};")
            x = ptr(op.inputs[0])
            if g.op == "linear":
                call = f"hw_linear_{sfx}(&hw_{cid}_mats[0], hw_{cid}_bias, &hw_{cid}_epi, {x}, {y}, 1u)"
            else:
                defs.append(f"static const hw_conv_t hw_{cid}_conv = {conv_initializer(g)};")
                if g.op == "dwconv2d":
                    call = (f"hw_dwconv2d_{sfx}(&hw_{cid}_conv, &hw_{cid}_mats[0], hw_{cid}_bias, &hw_{cid}_epi, "
                            f"{x}, {y}, hw_scratch)")
                else:
                    call = (f"hw_conv2d_{sfx}(&hw_{cid}_conv, hw_{cid}_mats, hw_{cid}_bias, &hw_{cid}_epi, "
                            f"{x}, {y}, (hw_model_elem_t *)hw_scratch)")
            calls.append(f"    HW_PROF({k});\n    if ({call} != 0)\n        return -{k + 1};")
        elif op.kind == "add":
            a_, b_ = ptr(op.inputs[0]), ptr(op.inputs[1])
            if s8:
                p = info["params"]
                call = f"hw_add_s8({a_}, {b_}, {y}, {info['elems']}u, {p['ma']}, {p['mb']}, {0 if op.relu else -128}, 127)"
            else:
                call = f"hw_add_f32({a_}, {b_}, {y}, {info['elems']}u, {'0.0f' if op.relu else '-INFINITY'}, INFINITY)"
            calls.append(f"    HW_PROF({k});\n    {call};")
        elif op.kind == "mean":
            x = ptr(op.inputs[0])
            if s8:
                p = info["params"]
                call = (f"hw_mean_s8({x}, {y}, {info['pixels']}u, {info['channels']}u, {p['mult']}, {p['shift']}, "
                        f"{0 if op.relu else -128}, 127)")
            else:
                call = (f"hw_mean_f32({x}, {y}, {info['pixels']}u, {info['channels']}u, "
                        f"{'0.0f' if op.relu else '-INFINITY'}, INFINITY)")
            calls.append(f"    HW_PROF({k});\n    {call};")
        else:
            x = ptr(op.inputs[0])
            calls.append(f"    HW_PROF({k});\n    hw_relu_{sfx}({x}, {y}, {info['elems']}u);")
    wh += ["", "#endif", ""]
    n_ops = len(b.ops)
    in_elems = int(np.prod(shape_of[b.input]))
    out_elems = int(np.prod(shape_of[b.output]))
    copy_out = "" if out_direct is not None else (
        f"    for (uint32_t i = 0; i < HW_MODEL_OUTPUT_ELEMS; ++i)\n        output[i] = {ptr(b.output)}[i];\n")
    mh = f"""/* generated by targets.mcu.codegen.export_graph: {n_ops} ops, {dtype} */
#ifndef HW_MODEL_H
#define HW_MODEL_H
#include <stdint.h>

typedef {T} hw_model_elem_t;
#define HW_MODEL_INPUT_ELEMS {in_elems}
#define HW_MODEL_OUTPUT_ELEMS {out_elems}
#define HW_MODEL_ARENA_BYTES {max(arena, 8)}     /* planned activation buffers */
#define HW_MODEL_SCRATCH_BYTES {max_scratch}     /* im2col rows / depthwise tap table */
#define HW_MODEL_RAM_BYTES {arena + max_scratch} /* arena + scratch (input/output are the caller's) */
#define HW_MODEL_N_OPS {n_ops}

/* Run the model once. input: channels-last ([H][W][C], [L][C] or [K]); output: the last op's
 * layout (a vector for a classifier). Returns 0, or -(op index + 1) when a layer kernel rejects
 * its format. With HW_MODEL_PROFILE defined, hw_model_prof[] holds SysTick stamps around every
 * op (see targets/mcu/kernels/hw_harness.h). */
int {name}_run(const hw_model_elem_t *input, hw_model_elem_t *output);

#ifdef HW_MODEL_PROFILE
extern uint32_t hw_model_prof[2 * (HW_MODEL_N_OPS + 3)];
#endif
#endif
"""
    mc = f"""/* generated by targets.mcu.codegen.export_graph */
#include <math.h>
#include <stdint.h>
#include "hw_kernels.h"
#include "hw_ops.h"
#include "model.h"
#include "weights.h"

#ifdef HW_MODEL_PROFILE
#include "hw_harness.h"
uint32_t hw_model_prof[2 * (HW_MODEL_N_OPS + 3)];
#define HW_PROF(k) HW_STAMP(hw_model_prof[2 * ((k) + 2)], hw_model_prof[2 * ((k) + 2) + 1])
#define HW_PROF_CAL()                                            \\
    do {{                                                         \\
        HW_STAMP(hw_model_prof[0], hw_model_prof[1]);            \\
        HW_STAMP(hw_model_prof[2], hw_model_prof[3]);            \\
    }} while (0)
#else
#define HW_PROF(k) ((void)0)
#define HW_PROF_CAL() ((void)0)
#endif

static uint8_t hw_arena[HW_MODEL_ARENA_BYTES] __attribute__((aligned(8)));
static uint8_t hw_scratch[HW_MODEL_SCRATCH_BYTES] __attribute__((aligned(8)));
#define HW_BUF(off) ((hw_model_elem_t *)(hw_arena + (off)))

{chr(10).join(defs)}

int {name}_run(const hw_model_elem_t *input, hw_model_elem_t *output)
{{
    HW_PROF_CAL();
{chr(10).join(calls)}
    HW_PROF({n_ops});
{copy_out}    return 0;
}}
"""
    files = []
    for fname, text in (("weights.c", "\n".join(wc)), ("weights.h", "\n".join(wh)), ("model.h", mh), ("model.c", mc)):
        (out / fname).write_text(text)
        files.append(out / fname)
    for k in KERNEL_SRC[dtype]:
        shutil.copyfile(tc.KERNEL_DIR / k, out / k)
        files.append(out / k)
    for k in HARNESS_FILES:
        shutil.copyfile(tc.KERNEL_DIR / k, out / "test" / k)
        files.append(out / "test" / k)

    # ---- test vectors ---------------------------------------------------------------------------
    y_t = y_torch[0].numpy().astype(np.float32)
    if s8:
        ref_in, ref_out = _to_kernel(q[b.input]), _to_kernel(q[out_t].reshape(shape_of[out_t]))
        s_out = scale[out_t]
        deq = q[out_t].astype(np.float64).reshape(y_t.shape) * s_out
        err = float(np.abs(deq - y_t).max())
        top = float(np.abs(y_t).max())
        vs_torch = {"max_abs_err": err, "max_abs_torch": top, "relative_to_max": err / max(top, 1e-12),
                    "output_scale": s_out, "argmax_equal": bool(np.argmax(deq) == np.argmax(y_t))}
    else:
        ref_in, ref_out = _to_kernel(fv[b.input]), _to_kernel(y_t)
        vs_torch = {"max_abs_err": 0.0, "note": "the reference is PyTorch's output"}
    np.save(out / "test" / "reference_input.npy", ref_in)
    np.save(out / "test" / "reference_output.npy", ref_out)
    np.save(out / "test" / "torch_output.npy", _to_kernel(y_t))
    (out / "test" / "test_input.h").write_text("#include <stdint.h>\nstatic " + c_array(T, "hw_test_input", ref_in))
    (out / "test" / "test_main.c").write_text(f"""/* generated by targets.mcu.codegen.export_graph: run {name}_run once under the QEMU harness */
#include <stdint.h>
#include "hw_harness.h"
#include "model.h"
#include "test_input.h"
static hw_model_elem_t hw_out[HW_MODEL_OUTPUT_ELEMS];
int main(void)
{{
    HW_MEASURE_AND_REPORT({name}_run(hw_test_input, hw_out), hw_out, sizeof hw_out);
#ifdef HW_MODEL_PROFILE
    if (hw_write_file("hw_profile.bin", hw_model_prof, sizeof hw_model_prof) != 0)
        hw_exit(2);
#endif
    return 0;
}}
""")
    files += [out / "test" / f for f in ("test_main.c", "test_input.h", "reference_input.npy",
                                         "reference_output.npy", "torch_output.npy")]

    # ---- manifest -------------------------------------------------------------------------------
    ops_m = []
    for op, info in zip(b.ops, built):
        d = {k: v for k, v in info.items() if k not in ("geom", "packs", "params")}
        d["output_offset"] = None if b.base(op.output) == out_direct else offsets.get(op.output)
        d["output_bytes"] = int(np.prod(shape_of[op.output])) * eb
        if s8 and op.kind in ("add", "mean"):
            d["params"] = info["params"]
        ops_m.append(d)
    weight_bytes = int(sum(i.get("weight_bytes", 0) for i in built))
    param_bytes = int(sum(i.get("param_bytes", 0) for i in built))
    tensors = {t: {"shape": list(shape_of[t]), "bytes": int(np.prod(shape_of[t])) * eb,
                   "offset": offsets.get(t), "live": list(live[t]) if t in live else None,
                   **({"scale": scale[t]} if s8 and t in scale else {})}
               for t in b.tensors if b.tensors[t].base is None}
    manifest = {
        "schema_version": 1, "kind": GRAPH_KIND, "dtype": dtype, "entry": f"{name}_run",
        "model": type(model).__name__, "ops": ops_m, "tensors": tensors,
        "input": {"tensor": b.input, "shape": list(shape_of[b.input]), "bytes": in_elems * eb,
                  "layout": "channels-last"},
        "output": {"tensor": out_t, "shape": list(shape_of[b.output]), "bytes": out_elems * eb,
                   "written_in_place": out_direct is not None},
        "arena_bytes": int(arena), "scratch_bytes": int(max_scratch),
        "peak_sram_bytes": int(arena + max_scratch),
        "peak_sram_note": "planned activation arena + kernel scratch; the caller's input and output buffers and "
                          "the stack are not included",
        "weight_bytes": weight_bytes, "param_bytes": param_bytes,
        "flash_note": "param_bytes = weights in their formats + biases + requantisation parameters (const data); "
                      "build() adds model_flash_bytes (code + const data of the model and kernels, linked)",
        "depthwise_kernel": depthwise_kernel,
        "vs_torch": vs_torch,
        "calibration": "example_input" if calibration is None else f"{int(torch.as_tensor(calibration).shape[0])} inputs",
        "sources": ["model.c", "weights.c", *[k for k in KERNEL_SRC[dtype] if k.endswith(".c")]],
        "layout": "channels-last activations; see targets/mcu/_graph.py",
        "versions": {"torch": torch.__version__, **{k: v for k, v in tc.tool_versions().items() if k == "python"}},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_json_default))
    files.append(out / "manifest.json")
    log.info("exported %d ops (%s, %d weight bytes, %d B arena + %d B scratch) to %s", n_ops, dtype,
             weight_bytes, arena, max_scratch, out)
    return ExportResult(out, tuple(files), manifest)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
