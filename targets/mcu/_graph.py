"""Reading a model's ``torch.export`` graph for the MCU exporter (:func:`targets.mcu.codegen.export_graph`):
a list of :class:`Op` (layers with BatchNorm folded and ReLU fused, adds, pooling, ReLU) over
:class:`Tensor` values, and the float forward of that folded graph.

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
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GraphReader", "Op", "Tensor", "SUPPORTED_OPS", "read_graph", "float_forward"]

SUPPORTED_OPS = ("conv1d", "conv2d", "convolution", "linear", "batch_norm", "relu", "add", "mean",
                 "adaptive_avg_pool1d/2d", "flatten", "view", "reshape", "squeeze", "dropout", "clone",
                 "detach", "alias", "contiguous")

_IDENTITY = {"aten.dropout.default", "aten.clone.default", "aten.detach.default", "aten.alias.default",
             "aten.contiguous.default", "aten.lift_fresh_copy.default", "aten.feature_dropout.default"}
_RESHAPE = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten.squeeze.dim",
            "aten.squeeze.dims", "aten.squeeze.default", "aten._unsafe_view.default"}
_SKIP = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default"}


@dataclass
class Tensor:
    """A value of the graph (an activation, batch dimension dropped), or an alias of one."""

    name: str
    shape: tuple[int, ...]            # PyTorch shape without the batch dimension
    base: str | None = None           # an alias (flatten / no-op) of this tensor
    flat_from: tuple[int, ...] | None = None  # a channel-major flatten of a [C, (H,) W] activation
    nodes: list[Any] = field(default_factory=list)  # fx nodes that evaluate to this tensor


@dataclass
class Op:
    """One op of the MCU graph: a layer (conv or linear, BN folded), an add, a mean or a ReLU."""

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


class GraphReader:
    """Walks the exported graph into a list of :class:`Op` over :class:`Tensor` values."""

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
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
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
        self.tensors[name] = Tensor(name, shape, nodes=[node], **kw)
        self.env[node.name] = name
        return name

    def _batch1(self, node: Any) -> tuple[int, ...]:
        shape = _meta_shape(node)
        if not shape or shape[0] != 1:
            raise self._fail(node, f"output shape {shape}: export needs batch size 1 (give a single example)")
        return shape[1:]

    def _fusable(self, t: str) -> Op | None:
        """The op producing ``t`` when its result may absorb a following BN/ReLU: ``t`` is that
        op's own output (no alias) and no other node reads it."""
        tt = self.tensors[t]
        if tt.base is not None or t not in self.producer:
            return None
        if any(len(n.users) != 1 for n in tt.nodes):
            return None
        return self.ops[self.producer[t]]

    def _add_op(self, op: Op, node: Any, shape: tuple[int, ...]) -> None:
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
        op = Op("layer", _module_path(node) or node.name, node.name, [x], node.name,
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
        op = Op("layer", _module_path(node) or node.name, node.name, [x], node.name, torch_op="linear",
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
        op = Op("relu", node.name, node.name, [x], node.name)
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
        op = Op("add", node.name, node.name, [x, y], node.name)
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
        op = Op("mean", node.name, node.name, [x], node.name, dims=nd)
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


def read_graph(ep: Any) -> GraphReader:
    """The ops of the exported program ``ep``. Raises ``ValueError`` naming the node and aten op
    of anything the export does not take, or when the model's output is its input."""
    b = GraphReader(ep)
    b.run()
    if b.output is None:
        raise ValueError("the exported graph has no output")
    if b.base(b.output) == b.input:
        raise ValueError("the model's output is its input: nothing to export")
    return b


def _flatten_perm(shape: tuple[int, ...]) -> np.ndarray:
    """Columns of a linear layer reading PyTorch's channel-major flatten of ``shape`` ([C, (H,) W])
    re-ordered for the channels-last flatten the MCU holds."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return np.moveaxis(idx, 0, -1).reshape(-1)


# ---------------------------------------------------------------------------------------------
# float forward (PyTorch, batched) of the folded graph


def float_forward(b: GraphReader, x: Any) -> dict[str, Any]:
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


def _resolve(b: GraphReader, vals: dict[str, Any], t: str) -> None:
    if t in vals:
        return
    base = b.tensors[t].base
    if base is None:
        raise RuntimeError(f"internal: tensor {t} has no value")
    _resolve(b, vals, base)
    v = vals[base]
    vals[t] = v.reshape(v.shape[0], *b.tensors[t].shape)
