"""Per-layer sparsity plans.

A :class:`Plan` maps layer names to a :class:`LayerChoice` — the sparsity pattern and the
ratio (fraction of weights, or of output channels, *removed*, in [0, 1)). Plans are
immutable, hashable (``plan.key``) and serialise to plain JSON.

Patterns are validated against the one registry, :mod:`hwsearch.core.patterns`;
:func:`hwsearch.core.resolve.resolve` turns a plan into per-layer figures for a model.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


from hwsearch.core import patterns
from hwsearch.core.errors import PlanError

__all__ = ["LayerChoice", "Plan", "COMPACT_LEGEND"]


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
        if self.pattern not in patterns.names():
            raise PlanError(f"unknown pattern {self.pattern!r}; valid: {', '.join(patterns.names())}")
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

    def compact(self, sep: str = " · ", *, short: bool = True) -> str:
        """A short per-layer notation for tables: ``down ch50 · head un70 · pw 2:4`` — ``chX``:
        X % of the layer's output channels removed, ``unX``: X % of its weights zeroed, ``N:M``:
        N of every M weights kept, ``bkX[RxC]``: X % of its R×C weight blocks zeroed, ``hdX`` /
        ``qhX``: X % of an attention block's heads (KV groups) / query heads per KV group removed
        (named by its query projection); layers not named stay dense ("dense" when all do). See
        :data:`COMPACT_LEGEND`. With ``short``, the dotted prefix every named layer shares
        (``hf.model.layers.`` in a Hugging Face model) is left out."""
        named = [(layer, c) for layer, c in self.choices.items() if c.pattern != "dense"]
        cut = _common_prefix_len([layer for layer, _ in named]) if short and len(named) > 1 else 0
        parts = []
        for layer, c in named:
            layer = layer[cut:]
            pct = f"{round(c.ratio * 100, 1):g}"
            if c.pattern == "nm":
                parts.append(f"{layer} {c.n}:{c.m}")
            elif c.pattern == "block":
                parts.append(f"{layer} bk{pct}[{c.block[0]}x{c.block[1]}]")
            else:
                parts.append(f"{layer} {_COMPACT_CODES.get(c.pattern, c.pattern + ' ')}{pct}")
        return sep.join(parts) or "dense"


def _common_prefix_len(names: list[str]) -> int:
    """Length of the dotted prefix (whole components, ending in '.') all ``names`` share,
    leaving each at least its last component."""
    split = [n.split(".") for n in names]
    k = 0
    while all(len(p) > k + 1 for p in split) and len({p[k] for p in split}) == 1:
        k += 1
    return sum(len(c) + 1 for c in split[0][:k]) if names else 0


_COMPACT_CODES = {"channel": "ch", "unstructured": "un", "head": "hd", "qhead": "qh"}
COMPACT_LEGEND = ("chX / unX: X% of a layer's output channels removed / weights zeroed; N:M: N of every M weights "
                  "kept; bkX[RxC]: X% of RxC weight blocks zeroed; hdX / qhX: X% of an attention block's heads / "
                  "query heads per KV group removed (on its query projection); layers not named stay dense")
