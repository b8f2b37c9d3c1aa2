"""Attributing a backend's per-kernel timings to the layers of a model's layer table."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["map_layer_timings", "match_by_size"]


def match_by_size(numels: Sequence[int], timed: Sequence[Mapping[str, Any]]) -> list[float]:
    """In execution order, the k-th weight takes the next kernel timing whose weight has the
    same number of elements; NaN where none is left (never 0)."""
    out: list[float] = []
    pos = 0
    for n in numels:
        val = float("nan")
        for j in range(pos, len(timed)):
            if int(np.prod(timed[j]["weight_shape"])) == n:
                val, pos = float(timed[j]["median_s"]), j + 1
                break
        out.append(val)
    return out


def map_layer_timings(graph: Any, folded: Any, layers: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Assign per-kernel timings (``layers``: dicts with ``median_s`` and ``weight_name`` or
    ``weight_shape``) to the layers of ``graph.table`` (its index), in seconds: by the torch
    parameter each kernel call consumes (``weight_name`` = ``"<layer>.weight"``) when the backend
    reports it, else in execution order by the element count of the layer's weight in
    ``folded`` (an ``nn.Module``). Unmatched layers are left out (not zero)."""
    by_name = {str(t["weight_name"]).removesuffix(".weight"): float(t["median_s"])
               for t in layers if t.get("weight_name")}
    if all(layer in by_name for layer in graph.table.index):
        return {layer: by_name[layer] for layer in graph.table.index}
    mods = dict(folded.named_modules())
    sizes = match_by_size([mods[layer].weight.numel() for layer in graph.table.index],
                          [t for t in layers if t.get("weight_shape")])
    return {layer: by_name.get(layer, t) for layer, t in zip(graph.table.index, sizes)
            if layer in by_name or t == t}
