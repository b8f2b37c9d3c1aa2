"""The compute ops of a graph that are not prunable layers, as cost models read them.

:func:`hwsearch.graph.analyze` lists attention, batched matmuls, embedding lookups,
normalisations and softmax in ``ModelGraph.ops`` (one row per node, see
:mod:`hwsearch.graph_ops` for the counts). This module holds what every cost model needs to price
those rows or to report them: the op table of a graph (empty when a graph has none), the coverage
gaps of a model that does not price some kinds, how much of each op a plan keeps, and the work
(FLOPs and bytes) an op does under a plan. A leaf: it imports nothing of :mod:`costmodels`.

A plan shrinks an op when it prunes the channel group of the op's first input (``group``): its
MACs, other FLOPs and bytes are multiplied by the kept fraction of that group (``out_frac`` of
:func:`hwsearch.core.resolve.resolve`); an op whose group is -1 or not pruned keeps its size.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["OP_KINDS", "GLUE_KIND", "OP_COLUMNS", "op_table", "op_gaps", "kept_fraction", "head_fraction", "op_work"]

#: The op kinds ``ModelGraph.ops`` holds (:data:`hwsearch.graph_ops.OP_KINDS`; costmodels may not
#: import it, ``tests/test_op_pricing.py`` checks the two are equal).
OP_KINDS: tuple[str, ...] = ("attention", "matmul", "embedding", "norm", "softmax")
#: The kind of ``ModelGraph.glue`` rows (:data:`hwsearch.graph_ops.GLUE_KIND`): elementwise nodes
#: outside layers, their epilogues and the ops above, priced only by a model whose
#: ``prices_glue`` is true (:func:`op_table` with ``glue=True``).
GLUE_KIND = "glue"
#: The columns of ``ModelGraph.ops`` a cost model reads.
OP_COLUMNS = ("kind", "macs", "flops_other", "bytes_in", "bytes_out", "group")


def op_table(graph: Any, glue: bool = False) -> pd.DataFrame:
    """``graph.ops`` (indexed by node name), or an empty table with :data:`OP_COLUMNS` when the
    graph has none (``None``: built before ops were counted, or elsewhere). ``glue``: followed by
    ``graph.glue``'s rows (kind :data:`GLUE_KIND`), for a cost model that prices them
    (``CostModel.prices_glue``); the others absorb glue in their overhead terms."""
    ops = getattr(graph, "ops", None)
    extra = getattr(graph, "glue", None) if glue else None
    if extra is not None and len(extra):
        ops = extra if ops is None or len(ops) == 0 else pd.concat([ops, extra])
    if ops is None or len(ops) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "kind" else np.int64) for c in OP_COLUMNS})
    return ops


def op_gaps(ops: pd.DataFrame, priced_kinds: frozenset[str] | set[str],
            latency_s: np.ndarray | None = None) -> list[str]:
    """``"<node (kind)>"`` for every op row whose kind is not in ``priced_kinds`` or whose price
    in ``latency_s`` (seconds per row, or ``P × rows``: any plan) is not finite."""
    bad = np.array([k not in priced_kinds for k in ops["kind"]], dtype=bool)
    if latency_s is not None and len(ops):
        lat = np.asarray(latency_s, dtype=float)
        bad |= ~np.isfinite(lat).all(axis=0) if lat.ndim == 2 else ~np.isfinite(lat)
    return [f"<{node} ({kind})>" for node, kind, b in zip(ops.index, ops["kind"], bad) if b]


def kept_fraction(ops: pd.DataFrame, group_frac: Mapping[int, float],
                  head_frac: Mapping[str, float] | None = None) -> np.ndarray:
    """Per op row, the kept fraction of its input's channel group (``group_frac``: ``out_frac``
    of each pruned group, e.g. ``resolve``'s per ``out_group``); 1.0 for a group not in it or -1.
    An attention op of a block whose heads a plan prunes (``head_leader`` in ``head_frac``: the
    kept fraction of its query heads, the query projection's ``out_frac``) keeps that fraction
    instead: its FLOPs scale with the query heads exactly; its K/V bytes are taken to scale with
    them too, which for ``qhead`` (KV heads kept) overstates the bytes saved."""
    frac = np.array([float(group_frac.get(int(g), 1.0)) if int(g) >= 0 else 1.0 for g in ops["group"]],
                    dtype=float)
    if head_frac and "head_leader" in ops.columns:
        for i, leader in enumerate(ops["head_leader"]):
            if leader and leader in head_frac:
                frac[i] = float(head_frac[leader])
    return frac


def head_fraction(resolved: pd.DataFrame) -> dict[str, float]:
    """Kept fraction of the query heads of every attention block a resolved plan prunes (the
    ``out_frac`` of its query projection), keyed by that projection."""
    if "head_pruned" not in resolved.columns:
        return {}
    q = resolved[resolved["head_pruned"].astype(bool) & (resolved["head_role"].astype(str) == "q")]
    return {str(n): float(f) for n, f in zip(q.index, q["out_frac"])}


def op_work(ops: pd.DataFrame, kept: np.ndarray, bytes_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs (2 per MAC, plus the other FLOPs of norms and softmax) and bytes moved (read and
    written, times ``bytes_scale``: the model's dtype bytes over the analysed example's) of every op
    row under a plan keeping ``kept`` of it (shape ``(rows,)`` or ``(P, rows)``; the result has the
    shape of ``kept``)."""
    macs = ops["macs"].to_numpy(dtype=float)
    flops = 2.0 * macs + ops["flops_other"].to_numpy(dtype=float)
    nbytes = (ops["bytes_in"].to_numpy(dtype=float) + ops["bytes_out"].to_numpy(dtype=float)) * bytes_scale
    kept = np.asarray(kept, dtype=float)
    return flops * kept, nbytes * kept
