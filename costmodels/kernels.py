"""A compiled kernel's identity: one definition for the cost model and the search.

A layer of a resolved plan runs one kernel, named by :func:`kernel_key`: the layer's
:func:`static_signature` (what no plan changes), its kept input and output channels and, when
its pattern is a weight-level one the target's kernels accelerate, its weight density rounded to
:data:`DENSITY_DECIMALS` decimals (every other layer runs the dense kernel of its kept shape).
:class:`costmodels.analytical.RooflineModel` keeps its refit's per-kernel corrections under these
keys (:func:`kernel_correction` reads them back) and the search counts the kernels measured so
far with them (:func:`kernel_keys`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from hwsearch.core import patterns

__all__ = ["DENSITY_DECIMALS", "static_signature", "kernel_density", "kernel_key", "kernel_keys",
           "kernel_correction", "batch_kernel_corrections"]

#: Decimals of the weight density in a kernel key: the rounding the roofline refit has always used.
DENSITY_DECIMALS = 3


def static_signature(row: Any) -> str:
    """The part of a layer's kernel key that no plan changes: kind, kernel, stride, padding,
    input spatial size and the fused epilogue (a row of the layer table or of a resolved plan).
    The epilogue matters: on host-x86 quick mode the same 64→48 conv measured 30 µs fused with
    BatchNorm+ReLU and 19 µs fused with BatchNorm+add+ReLU (distinct TVM kernels, distinct
    schedules)."""
    epi = row.get("epilogue", "") if hasattr(row, "get") else ""
    epi = epi if isinstance(epi, str) else ""
    return (f"{row['kind']}|w{tuple(row['weight_shape'])[2:]}|s{row['stride']}|p{row['padding']}"
            f"|i{tuple(row['in_shape'])[2:]}" + (f"|e{epi}" if epi else ""))


def kernel_density(pattern: str, weight_density: float, accelerates: Callable[[str], bool]) -> float | None:
    """The density that names a layer's kernel: ``weight_density`` when ``pattern`` zeroes single
    weights (a weight-level pattern) and ``accelerates(pattern)`` (the target's kernels skip its
    zeros), else ``None`` — the layer runs the dense kernel of its kept shape."""
    if patterns.get(pattern).weight_level and bool(accelerates(pattern)):
        return float(weight_density)
    return None


def _density_tag(density: float | None) -> str:
    return "dense" if density is None else f"d{density:.{DENSITY_DECIMALS}f}"


def kernel_key(static: str, kept_in: int, kept_out: int, density: float | None) -> str:
    """A compiled kernel's identity: :func:`static_signature`, kept channels, and the weight
    density (:func:`kernel_density`; ``None``: it runs as the dense kernel), e.g.
    ``"conv|w(3,)|s(1,)|p(1,)|i(16,)|8x16|dense"`` or ``"…|64x64|d0.250"``."""
    return f"{static}|{int(kept_in)}x{int(kept_out)}|" + _density_tag(density)


def kernel_keys(resolved: pd.DataFrame, accelerates: Callable[[str], bool]) -> pd.Series:
    """:func:`kernel_key` of every layer of a resolved plan (index: the layers), with
    ``accelerates`` the target's ``TargetSpec.accelerates``."""
    keys = [kernel_key(static_signature(r), r["kept_in"], r["kept_out"],
                       kernel_density(str(r["pattern"]), float(r["weight_density"]), accelerates))
            for _, r in resolved.iterrows()]
    return pd.Series(keys, index=resolved.index, dtype=object)


def kernel_correction(table: dict[str, float], static: str, kept_in: int, kept_out: int,
                      density: float | None) -> float:
    """The refit's correction (measured ÷ roofline time) of a kernel in ``table`` (kernel key →
    factor): its own when it was measured; else that of the same layer (same static signature
    and density) measured at the nearest channel counts (by |log(kept_in·kept_out ratio)|),
    since a layer's efficiency in a runtime changes slowly with its width; 1.0 when the layer
    was never measured."""
    key = kernel_key(static, kept_in, kept_out, density)
    if key in table:
        return table[key]
    tag = _density_tag(density)
    want = max(1, int(kept_in) * int(kept_out))
    best, dist = 1.0, math.inf
    for k, v in table.items():
        st, shape, dt = k.rsplit("|", 2)
        if st != static or dt != tag:
            continue
        a, b = shape.split("x")
        d = abs(math.log(max(1, int(a) * int(b)) / want))
        if d < dist:
            best, dist = v, d
    return best


def batch_kernel_corrections(table: dict[str, float], arrays: Any, density: np.ndarray) -> np.ndarray:
    """:func:`kernel_correction` of every layer of ``P`` plans (``arrays``: a
    :class:`costmodels.base.PlanArrays`; ``density`` ``P × L``, < 0 where the layer runs its dense
    kernel), as a ``P × L`` array; one lookup per distinct kernel of a layer, none for a layer
    the table has no kernel of."""
    out = np.ones(arrays.kept_in.shape, dtype=float)
    prefixes = {k.rsplit("|", 2)[0] for k in table}
    for j, static in enumerate(arrays.static):
        if static not in prefixes:
            continue
        keys = np.stack([arrays.kept_in[:, j], arrays.kept_out[:, j], density[:, j]], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        f = np.array([kernel_correction(table, static, int(ki), int(ko), None if d < 0 else float(d))
                      for ki, ko, d in uniq])
        out[:, j] = f[inv.reshape(-1)]
    return out
