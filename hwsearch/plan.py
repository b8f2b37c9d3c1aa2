"""Per-layer sparsity plans.

A :class:`Plan` maps layer names to a :class:`LayerChoice` — the sparsity pattern and the
ratio (fraction of weights, or of output channels, *removed*, in [0, 1)). Plans are
immutable, hashable (``plan.key``) and serialise to plain JSON.

:func:`resolve` turns a plan into concrete per-layer figures for a model's layer table:
kept output/input channels after channel pruning (rounded to a multiple so tuned shapes
repeat), the density of the weight pattern, and the resulting MACs, parameters and activation
sizes. Cost models and pruning both consume this resolution, so they agree by construction.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pandas as pd

from hwsearch.errors import PlanError

__all__ = ["LayerChoice", "Plan", "resolve", "kept_channels", "PATTERN_NAMES"]

PATTERN_NAMES = ("dense", "unstructured", "channel", "nm", "block")


@dataclass(frozen=True)
class LayerChoice:
    """One layer's sparsity.

    ``ratio`` is the fraction removed: of weights for ``unstructured``/``block``, of the
    layer's channel group's output channels for ``channel``; for ``nm`` it is fixed at
    ``1 - n/m``. ``block`` is (rows, cols) of a block in the layer's 2-D weight view
    (out × in·kernel).
    """

    pattern: str = "dense"
    ratio: float = 0.0
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (1, 4)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERN_NAMES:
            raise PlanError(f"unknown pattern {self.pattern!r}; valid: {', '.join(PATTERN_NAMES)}")
        if self.pattern == "nm":
            if not (0 < self.n < self.m):
                raise PlanError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")
            object.__setattr__(self, "ratio", 1.0 - self.n / self.m)
        if self.pattern == "dense":
            object.__setattr__(self, "ratio", 0.0)
        if not (0.0 <= float(self.ratio) < 1.0) or math.isnan(float(self.ratio)):
            raise PlanError(f"ratio {self.ratio!r} out of range: give the fraction removed, 0 <= ratio < 1")
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "block", tuple(int(b) for b in self.block))
        if len(self.block) != 2 or min(self.block) < 1:
            raise PlanError(f"block must be two positive sizes (rows, cols), got {self.block!r}")

    def to_dict(self) -> dict:
        d: dict = {"pattern": self.pattern, "ratio": round(self.ratio, 6)}
        if self.pattern == "nm":
            d.update(n=self.n, m=self.m)
        if self.pattern == "block":
            d["block"] = list(self.block)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LayerChoice:
        if not isinstance(d, Mapping) or "pattern" not in d:
            raise PlanError(f"a layer choice must be a mapping with 'pattern' (and 'ratio'), got {d!r}")
        unknown = set(d) - {"pattern", "ratio", "n", "m", "block"}
        if unknown:
            raise PlanError(f"unknown keys {sorted(unknown)} in layer choice {dict(d)!r}")
        return cls(pattern=d["pattern"], ratio=float(d.get("ratio", 0.0)), n=int(d.get("n", 2)),
                   m=int(d.get("m", 4)), block=tuple(d.get("block", (1, 4))))


@dataclass(frozen=True)
class Plan(Mapping[str, LayerChoice]):
    """Immutable mapping layer name → :class:`LayerChoice`; absent layers stay dense."""

    choices: Mapping[str, LayerChoice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", dict(sorted(self.choices.items())))

    def __getitem__(self, layer: str) -> LayerChoice:
        return self.choices[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def __hash__(self) -> int:
        return hash(self.key)

    def get_choice(self, layer: str) -> LayerChoice:
        return self.choices.get(layer, LayerChoice())

    def to_dict(self) -> dict[str, dict]:
        return {k: v.to_dict() for k, v in self.choices.items() if v.pattern != "dense"}

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a mapping layer -> choice, got {type(d).__name__}")
        return cls({str(k): LayerChoice.from_dict(v) for k, v in d.items()})

    @property
    def key(self) -> str:
        """Stable 12-hex-digit identity of the plan (dense layers omitted)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def describe(self) -> str:
        parts = [f"{k}:{v.pattern}@{v.ratio:.2f}" for k, v in self.choices.items() if v.pattern != "dense"]
        return ", ".join(parts) or "dense"


def kept_channels(channels: int, ratio: float, multiple: int = 8, min_density: float = 0.0) -> int:
    """Output channels kept when removing ``ratio`` of ``channels``.

    Rounded to the nearest ``multiple`` (so tuned kernel shapes repeat across plans), never
    below one multiple (or 1 when the layer is smaller than a multiple), never below
    ``ceil(min_density * channels)`` and never above ``channels``.
    """
    want = channels * (1.0 - ratio)
    if channels <= multiple:
        kept = max(1, round(want))
    else:
        kept = max(multiple, int(round(want / multiple)) * multiple)
    floor = math.ceil(min_density * channels - 1e-9)
    if kept < floor:
        kept = floor if channels <= multiple else min(channels, math.ceil(floor / multiple) * multiple)
    return int(min(channels, kept))


def resolve(table: pd.DataFrame, groups: Mapping, plan: Plan, *, channel_multiple: int = 8,
            min_density: float = 0.0) -> pd.DataFrame:
    """Concrete per-layer figures of ``plan`` on a layer table (see :func:`hwsearch.graph.analyze`).

    Returns a copy of ``table`` with columns ``pattern``, ``ratio``, ``n``, ``m``, ``block``,
    ``kept_out``, ``kept_in``, ``out_frac``, ``in_frac`` (fractions of channels kept),
    ``weight_density`` (density of the weight-level pattern on the remaining weights),
    ``dense_macs`` (MACs after channel removal), ``dense_weights`` (weights after channel removal),
    ``nnz`` (nonzero weights kept). Raises :class:`PlanError` for unknown layers, channel
    ratios on layers that cannot take them, and shapes a pattern cannot tile.
    """
    from hwsearch import patterns  # local import: patterns imports plan

    unknown = set(plan) - set(table.index)
    if unknown:
        raise PlanError(f"plan names layers not in the model: {sorted(unknown)}; valid layers: "
                        f"{', '.join(table.index)}")
    group_frac: dict[int, float] = {}
    group_kept: dict[int, int] = {}
    for layer in table.index:
        choice = plan.get_choice(layer)
        if choice.pattern != "channel":
            continue
        gid = int(table.at[layer, "out_group"])
        if gid < 0 or not bool(table.at[layer, "channel_prunable"]):
            raise PlanError(f"layer {layer!r} cannot take channel pruning (its output channels are "
                            "the model's output or not traceable); use a weight pattern instead")
        if not bool(table.at[layer, "group_leader"]):
            leader = groups[gid].leader
            raise PlanError(f"layer {layer!r} is coupled with {leader!r} (channel group {gid}); "
                            f"give the channel ratio on {leader!r}")
        c = int(table.at[layer, "out_channels"])
        k = kept_channels(c, choice.ratio, channel_multiple, min_density)
        group_kept[gid] = k
        group_frac[gid] = k / c

    out = table.copy()
    rows = []
    for layer, row in table.iterrows():
        choice = plan.get_choice(layer)
        og, ig = int(row["out_group"]), int(row["in_group"])
        of = group_frac.get(og, 1.0)
        inf = group_frac.get(ig, 1.0)
        kept_out = int(round(row["out_channels"] * of))
        kept_in = int(round(row["in_channels"] * inf))
        groups_ = int(row["groups"])
        if row["kind"] == "depthwise":
            per_group_in, eff_groups = 1, kept_out
        else:
            if groups_ > 1 and (of < 1.0 or inf < 1.0):
                raise PlanError(f"grouped conv {layer!r} (groups={groups_}) inside a pruned channel group "
                                "is not supported; leave its group dense")
            per_group_in, eff_groups = kept_in // groups_, groups_
        spatial = int(row["macs"]) // max(1, int(row["out_channels"]) * (int(row["in_channels"]) // groups_)
                                          * int(row["kernel_elems"]))
        dense_macs = spatial * kept_out * per_group_in * int(row["kernel_elems"])
        dense_weights = kept_out * per_group_in * int(row["kernel_elems"])
        pat = patterns.get(choice.pattern)
        cols = per_group_in * int(row["kernel_elems"])
        pat.check(layer, kept_out, cols, choice)
        density = pat.weight_density(kept_out, cols, choice, min_density)
        rows.append({
            "pattern": choice.pattern, "ratio": choice.ratio, "n": choice.n, "m": choice.m,
            "block": choice.block, "kept_out": kept_out, "kept_in": kept_in, "eff_groups": eff_groups,
            "out_frac": of, "in_frac": inf, "rows2d": kept_out, "cols2d": cols,
            "weight_density": density, "dense_macs": int(dense_macs), "dense_weights": int(dense_weights),
            "nnz": int(round(dense_weights * density)),
            "act_out_bytes_kept": int(round(row["act_out_bytes"] * of)),
            "act_in_bytes_kept": int(round(row["act_in_bytes"] * inf)),
            "min_density_binds": bool(min_density > 0 and choice.pattern in ("unstructured", "block")
                                      and choice.ratio > 1.0 - min_density + 1e-9),
        })
    extra = pd.DataFrame(rows, index=table.index)
    for col in extra.columns:
        out[col] = extra[col]
    return out
