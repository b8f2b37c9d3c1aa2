"""Exact memory models: weight storage (flash) and peak activation memory (SRAM).

* Flash = Σ over layers of the weight storage in the layer's format (see
  :mod:`hwsearch.core.patterns`) + biases (``dtype_bytes`` each) + per-output-channel quantisation
  parameters when ``dtype`` is int8 (an int32 requantisation multiplier and shift:
  8 bytes per output channel, the CMSIS-NN layout).
* Peak SRAM = max over the exported graph's execution order of the bytes of all live
  activation tensors (a tensor is live from the node that produces it to its last use; the
  model input is live until its last use). Channel pruning shrinks every tensor of the pruned
  group; weight-level sparsity does not change activations. Scratch buffers of kernels are
  added by a target's model when it knows them (``scratch_bytes``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from costmodels.errors import CostModelError
from hwsearch.core import patterns
from hwsearch.core.plan import LayerChoice

__all__ = ["DTYPE_BYTES", "QPARAM_BYTES_PER_CHANNEL", "INT8_BIAS_BYTES", "check_dtype", "bias_bytes_per_channel",
           "layer_storage", "flash_bytes", "peak_sram_bytes"]

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
QPARAM_BYTES_PER_CHANNEL = 8  # int32 multiplier + int32 shift per output channel (CMSIS-NN)
INT8_BIAS_BYTES = 4           # int8 layers keep int32 biases


def check_dtype(dtype: str) -> None:
    """Raise :class:`CostModelError` listing the valid dtypes when ``dtype`` is not one."""
    if dtype not in DTYPE_BYTES:
        raise CostModelError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}")


def bias_bytes_per_channel(dtype: str) -> int:
    """Bytes of one output channel's bias stored for ``dtype`` (int8 layers keep int32 biases)."""
    return INT8_BIAS_BYTES if dtype == "int8" else DTYPE_BYTES[dtype]


def layer_storage(resolved: pd.DataFrame, dtype: str = "fp32") -> pd.DataFrame:
    """Per-layer storage of a resolved plan: columns ``fmt``, ``values_bytes``, ``index_bytes``,
    ``bias_bytes``, ``qparam_bytes``, ``flash_bytes`` (their sum)."""
    check_dtype(dtype)
    b = DTYPE_BYTES[dtype]
    rows = []
    for layer, r in resolved.iterrows():
        pat = patterns.get(str(r["pattern"]))
        choice = LayerChoice(str(r["pattern"]), float(r["ratio"]), int(r["n"]), int(r["m"]), tuple(r["block"]))
        st = pat.storage(int(r["rows2d"]), int(r["cols2d"]), int(r["nnz"]), choice, b)
        bias = int(r["kept_out"]) * bias_bytes_per_channel(dtype) if r["has_bias"] else 0
        qp = int(r["kept_out"]) * QPARAM_BYTES_PER_CHANNEL if dtype == "int8" else 0
        rows.append({"fmt": st.fmt, "values_bytes": st.values_bytes, "index_bytes": st.index_bytes,
                     "bias_bytes": bias, "qparam_bytes": qp,
                     "flash_bytes": st.total_bytes + bias + qp})
    return pd.DataFrame(rows, index=resolved.index)


def flash_bytes(resolved: pd.DataFrame, dtype: str = "fp32") -> int:
    """Total weight storage in bytes for a resolved plan (see :func:`layer_storage`)."""
    return int(layer_storage(resolved, dtype)["flash_bytes"].sum())


def peak_sram_bytes(activations: pd.DataFrame, group_frac: dict[int, float], *, dtype_scale: float = 1.0,
                    scratch_bytes: int = 0) -> int:
    """Peak bytes of live activations over the execution order.

    ``activations`` is :attr:`hwsearch.graph.ModelGraph.activations`; ``group_frac`` maps a
    channel group id to the fraction of its channels kept; ``dtype_scale`` re-prices the
    example's dtype (e.g. 0.25 for fp32 → int8).
    """
    if activations.empty:
        return scratch_bytes
    frac = activations["group"].map(lambda g: group_frac.get(int(g), 1.0)).to_numpy(dtype=float)
    size = activations["bytes"].to_numpy(dtype=float) * frac * dtype_scale
    start = activations["produced"].to_numpy()
    end = activations["last_use"].to_numpy()
    steps = np.unique(start)
    live = np.array([size[(start <= s) & (end >= s)].sum() for s in steps])
    return int(np.ceil(live.max())) + int(scratch_bytes)
