"""The kernel sweep's non-layer ops: attention, batched matmul, embedding lookup, LayerNorm and
softmax, timed on the device like the layer kernels (:mod:`hwsearch.kernel_sweep`) and fitted per
op kind as ``seconds = a + b · MACs + c · bytes + d · other FLOPs`` (non-negative least squares on
relative errors), in the units :mod:`hwsearch.graph_ops` counts an op row in (MACs, bytes read +
written in the analysed dtype, other FLOPs of norms and softmax). Few shapes per kind suffice:
these ops are bandwidth- or overhead-bound at the zoo's sizes and a linear law in their work fits.

Each op is the ONNX subgraph ``torch.onnx.export`` writes for it: attention as
MatMul(q, kᵀ) · scale → Softmax → MatMul(v) (what scaled_dot_product_attention exports to, and
ONNX Runtime fuses into FusedMatMul); LayerNormalization; Softmax on the last axis; Gather of
token rows; a batched MatMul. RMSNorm (Llama) is priced as LayerNorm. ``glue`` (an elementwise
node between kernels: a residual add outside an epilogue, a rotary multiply, pooling; the
``ModelGraph.glue`` rows) is a chain of ``Add(y, x)`` nodes — a chain, so ONNX Runtime cannot
merge the copies as common subexpressions — and its law, mostly the per-node launch cost
``a``, prices each glue row from its bytes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmodels.kernel_predictor import OP_TERMS
from costmodels.ops import GLUE_KIND as GLUE

__all__ = ["OpSpec", "sample_op_specs", "build_op_onnx", "measure_op_specs", "fit_op_coefficients"]

_OPSET = 20
_F32 = 4


@dataclass(frozen=True)
class OpSpec:
    """One op to time: ``kind`` (attention, matmul, embedding, norm, softmax), ``heads``,
    ``seq`` (tokens), ``dim`` (head dim for attention / matmul / softmax heads; hidden size for
    norm and embedding), ``vocab`` (embedding rows)."""

    kind: str
    heads: int
    seq: int
    dim: int
    vocab: int = 0

    def row(self) -> dict[str, float]:
        """Its work as :mod:`hwsearch.graph_ops` counts it (fp32): ``macs``, ``flops_other``, ``bytes``."""
        h, t, d = self.heads, self.seq, self.dim
        if self.kind == "attention":
            return {"macs": h * t * t * 2 * d, "flops_other": 0, "bytes": 4 * h * t * d * _F32}
        if self.kind == "matmul":
            return {"macs": h * t * t * d, "flops_other": 0, "bytes": (2 * h * t * d + h * t * t) * _F32}
        if self.kind == "embedding":
            return {"macs": 0, "flops_other": 0, "bytes": (2 * t * d) * _F32 + t * 8}
        if self.kind == GLUE:  # Add(y, x): reads two tensors, writes one
            return {"macs": 0, "flops_other": t * d, "bytes": 3 * t * d * _F32}
        n = h * t * t if self.kind == "softmax" else t * d
        return {"macs": 0, "flops_other": 5 * n, "bytes": 2 * n * _F32}

    def inputs(self) -> list[dict]:
        h, t, d = self.heads, self.seq, self.dim
        if self.kind in ("attention", "matmul"):
            n = 3 if self.kind == "attention" else 2
            return [{"shape": [1, h, t, d]}] * n
        if self.kind == "embedding":
            return [{"shape": [1, t], "int_high": self.vocab}]
        return [{"shape": [1, h, t, t] if self.kind == "softmax" else [1, t, d]}]


def sample_op_specs(n_per_kind: int, *, seed: int) -> list[OpSpec]:
    """``n_per_kind`` random shapes of each op kind (tokens 4–256, heads 1–8, head dims 8–64,
    hidden sizes 16–768)."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in OP_TERMS:
        for _ in range(n_per_kind):
            t = int(round(math.exp(rng.uniform(math.log(4), math.log(256)))))
            h = int(rng.choice([1, 2, 4, 8]))
            d = int(rng.choice([8, 16, 32, 64])) if kind in ("attention", "matmul", "softmax") else \
                int(round(math.exp(rng.uniform(math.log(16), math.log(768)))))
            out.append(OpSpec(kind, h, t, d, vocab=int(rng.integers(32, 4096)) if kind == "embedding" else 0))
    return out


def _input_copies(spec: OpSpec, copies: int) -> int:
    """How many sets of inputs the graph of ``copies`` copies takes: one per copy (copies of an op
    on the same tensors would be one node after ONNX Runtime's common-subexpression elimination),
    one for the glue chain."""
    return 1 if spec.kind == GLUE else copies


def build_op_onnx(spec: OpSpec, copies: int, seed: int = 0) -> bytes:
    """An ONNX model of ``copies`` copies of the op side by side, each on inputs of its own (the
    graph's inputs: :meth:`OpSpec.inputs` once per copy, copy by copy), or the glue chain."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    for c in range(copies):
        tag = f"o{c}"
        names = [f"in{i}_{0 if spec.kind == GLUE else c}" for i in range(len(spec.inputs()))]
        if spec.kind in ("attention", "matmul"):
            nodes.append(helper.make_node("Transpose", [names[1]], [f"{tag}_kt"], perm=[0, 1, 3, 2]))
            nodes.append(helper.make_node("MatMul", [names[0], f"{tag}_kt"], [f"{tag}_s"]))
            last = f"{tag}_s"
            if spec.kind == "attention":
                inits.append(numpy_helper.from_array(np.array(1 / math.sqrt(spec.dim), np.float32), f"{tag}_scale"))
                nodes += [helper.make_node("Mul", [last, f"{tag}_scale"], [f"{tag}_m"]),
                          helper.make_node("Softmax", [f"{tag}_m"], [f"{tag}_p"], axis=-1),
                          helper.make_node("MatMul", [f"{tag}_p", names[2]], [f"{tag}_y"])]
                last = f"{tag}_y"
        elif spec.kind == "embedding":
            table = rng.standard_normal((spec.vocab, spec.dim)).astype(np.float32)
            inits.append(numpy_helper.from_array(table, f"{tag}_table"))
            nodes.append(helper.make_node("Gather", [f"{tag}_table", names[0]], [f"{tag}_y"], axis=0))
            last = f"{tag}_y"
        elif spec.kind == GLUE:
            prev = names[0] if c == 0 else f"o{c - 1}_y"
            nodes.append(helper.make_node("Add", [prev, names[0]], [f"{tag}_y"]))
            last = f"{tag}_y"
            if c < copies - 1:
                continue  # only the chain's end is an output
        elif spec.kind == "norm":
            inits += [numpy_helper.from_array(np.ones(spec.dim, np.float32), f"{tag}_g"),
                      numpy_helper.from_array(np.zeros(spec.dim, np.float32), f"{tag}_b")]
            nodes.append(helper.make_node("LayerNormalization", [names[0], f"{tag}_g", f"{tag}_b"], [f"{tag}_y"],
                                          axis=-1, epsilon=1e-5))
            last = f"{tag}_y"
        else:
            nodes.append(helper.make_node("Softmax", [names[0]], [f"{tag}_y"], axis=-1))
            last = f"{tag}_y"
        outs.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, None))
    ins = [helper.make_tensor_value_info(f"in{i}_{c}", TensorProto.INT64 if s.get("int_high") else TensorProto.FLOAT,
                                         s["shape"]) for c in range(_input_copies(spec, copies))
           for i, s in enumerate(spec.inputs())]
    model = helper.make_model(helper.make_graph(nodes, "op", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9
    return model.SerializeToString()


def measure_op_specs(specs: list[OpSpec], cfg: Any, work_dir: Path,
                     time_graphs: Callable[..., tuple[list[dict], dict[str, float]]]) -> pd.DataFrame:
    """Time ``specs`` with the sweep's ``time_graphs`` (copies for about 60 µs per graph, at
    most 16, from 1 µs + bytes at 5 GB/s); one row per spec with its work and ``latency_s``."""
    rows = [s.row() for s in specs]
    copies = [int(min(16, max(1, math.ceil(60e-6 / (1e-6 + r["bytes"] / 5e9 + r["macs"] / 2e9))))) for r in rows]
    graphs = [(lambda s=s, c=c, i=i: build_op_onnx(s, c, seed=i), s.inputs() * _input_copies(s, c))
              for i, (s, c) in enumerate(zip(specs, copies))]
    timed, overhead = time_graphs(graphs, cfg, work_dir)
    out = []
    for s, r, c, t in zip(specs, rows, copies, timed):
        lat = (t["graph_s"] - overhead["overhead_s"]) / c
        out.append(asdict(s) | r | {"copies": c} | t | {"latency_s": lat,
                                                         "error": t["error"] or ("" if lat > 0 else "not above null")})
    return pd.DataFrame(out)


def fit_op_coefficients(table: pd.DataFrame) -> dict[str, list[float]]:
    """Per op kind, ``[a, b, c, d]`` of ``a + b · MACs + c · bytes + d · other FLOPs`` (seconds;
    NNLS on relative errors) from the measured rows; kinds with fewer than 3 rows are left out."""
    from scipy.optimize import nnls

    out: dict[str, list[float]] = {}
    ok = table[table["error"] == ""]
    for kind, g in ok.groupby("kind"):
        if len(g) < 3:
            continue
        A = np.stack([np.ones(len(g)), g["macs"], g["bytes"], g["flops_other"]], axis=1).astype(float)
        y = g["latency_s"].to_numpy(dtype=float)
        w = 1.0 / y
        scale = np.maximum(np.abs(A).max(axis=0), 1e-30)  # columns of very different sizes
        coef, _ = nnls(A / scale * w[:, None], y * w)
        out[str(kind)] = [float(v) for v in coef / scale]
    return out
