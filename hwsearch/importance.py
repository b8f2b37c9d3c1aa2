"""Importance criteria: which weights to keep.

A :class:`Criterion` scores every weight of the requested layers; a higher score means more
important. Patterns pool weight scores to their granularity (channels: L2 norm of the
filter's scores; blocks: sum; N:M groups: per weight). Criteria are registered by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from hwsearch.errors import PlanError

__all__ = ["Criterion", "Magnitude", "get", "names", "register", "DataBatches"]

# A callable yielding (inputs, targets) batches; criteria that need data call it.
DataBatches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class Criterion:
    """Contract: :meth:`scores` returns ``{layer: tensor shaped like layer.weight}``, non-negative,
    on the CPU, without modifying ``model``'s parameters. ``needs_data`` says whether a data
    callable is required; a criterion that needs data and gets none raises :class:`PlanError`."""

    name = "base"
    needs_data = False

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Magnitude(Criterion):
    """|w| (Han et al., 2015); channels pool to the filter L2 norm (Li et al., 2017)."""

    name = "magnitude"

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None) -> dict[str, torch.Tensor]:
        mods = dict(model.named_modules())
        return {name: mods[name].weight.detach().abs().cpu() for name in layers}


_REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    _REGISTRY[criterion.name] = criterion
    return criterion


def get(name: str) -> Criterion:
    """The criterion called ``name``; :class:`PlanError` lists the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PlanError(f"unknown importance criterion {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


register(Magnitude())
