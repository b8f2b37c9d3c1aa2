"""Iterative magnitude pruning with weight rewinding — lottery tickets.

Frankle & Carbin (2019) train a network, prune the smallest-magnitude weights, reset the
survivors to their *initial* values and repeat; Frankle et al. (2020, "Linear mode
connectivity and the lottery ticket hypothesis") rewind instead to their values early in
training (iteration or epoch ``k``), which makes the procedure work on deeper networks.

:func:`imp` runs that loop on a deep copy of the model (the caller's model is untouched) and
returns a :class:`Ticket`: the masks, the rewind-point weights and tiered scores usable as a
pruning criterion (``importance.get("imp", train=...)``).

The training function is the caller's: ``train(model, data)`` trains ``model`` in place
(any optimiser, any number of epochs) reading batches from ``data()``. Masks are attached as
parametrizations, so the weights the model computes with stay zero where pruned whatever the
optimiser does. The rewind point is observed through ``data``: iteration ``k`` is the moment
the training function asks for its ``k+1``-th batch (after ``k`` optimiser steps when it
steps once per batch); epoch ``e`` is the moment it calls ``data()`` for the ``e+1``-th time.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from hwsearch.core.errors import PlanError
from hwsearch.scoring import DataBatches, global_keep, tiered_scores

__all__ = ["TrainFn", "Ticket", "imp", "ticket_model"]

log = logging.getLogger(__name__)

TrainFn = Callable[[nn.Module, DataBatches], None]


@dataclass(frozen=True)
class Ticket:
    """Result of :func:`imp`.

    ``masks[layer]``: boolean keep-mask of the weight; ``rewind_state``: every parameter and
    floating buffer of the model (plain names, e.g. ``conv1.weight``) at the rewind point;
    ``weights[layer]``: the ticket's weights, ``rewind_state[layer.weight] · mask``;
    ``scores[layer]``: tiered scores (see :func:`hwsearch.scoring.tiered_scores`);
    ``densities``: global density of the requested layers after each round;
    ``rewind_step``: optimiser steps (batches) before the rewind point.
    """

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    rewind_state: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    densities: tuple[float, ...]
    rewind_step: int


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by their un-parametrized names, cloned."""
    out: dict[str, torch.Tensor] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if ".parametrizations." in name:
            if not name.endswith(".original"):
                continue
            mod, rest = name.split(".parametrizations.", 1)
            name = f"{mod}.{rest[: -len('.original')]}"
        out[name] = t.detach().clone()
    return out


def _load_plain(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, value in state.items():
            mod_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
            mod = mods[mod_name]
            if parametrize.is_parametrized(mod, attr):
                getattr(mod.parametrizations, attr).original.copy_(value)
            else:
                getattr(mod, attr).copy_(value)


class _Watch:
    """Wraps the data callable; snapshots the model at the rewind point."""

    def __init__(self, data: DataBatches, model: nn.Module, iteration: int | None, epoch: int | None) -> None:
        self.data, self.model = data, model
        self.iteration, self.epoch = iteration, epoch
        self.calls = 0
        self.steps = 0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.snapshot_step = -1

    def _maybe_take(self, epoch_start: bool) -> None:
        if self.snapshot is not None:
            return
        hit = (self.iteration is not None and self.steps == self.iteration) or (
            self.epoch is not None and epoch_start and self.calls - 1 == self.epoch)
        if hit:
            self.snapshot = _plain_state(self.model)
            self.snapshot_step = self.steps

    def __call__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.calls += 1
        first = True
        for batch in self.data():
            self._maybe_take(epoch_start=first)
            first = False
            self.steps += 1
            yield batch

    def finish(self) -> None:
        """After training returned: a rewind point equal to the run's end is taken now."""
        if self.snapshot is None and (self.iteration == self.steps or (self.epoch is not None
                                                                          and self.epoch == self.calls)):
            self.snapshot = _plain_state(self.model)
            self.snapshot_step = self.steps


def imp(model: nn.Module, layers: Sequence[str], train: TrainFn, data: DataBatches, *, sparsity: float,
        rounds: int = 3, rewind_iteration: int | None = 0, rewind_epoch: int | None = None,
        scope: str = "global") -> Ticket:
    """Iterative magnitude pruning with rewinding on a deep copy of ``model``.

    Round ``r`` = 1..``rounds``: train with the current masks, keep the largest-magnitude
    weights so that the density of ``layers`` is ``(1 - sparsity)^(r/rounds)`` (over all
    layers together for ``scope="global"``, per layer for ``"layer"``), then rewind every
    parameter and buffer to the rewind point. ``rewind_epoch`` (if given) overrides
    ``rewind_iteration``; iteration 0 is the initialisation (the original lottery ticket).

    Raises :class:`PlanError` for ``sparsity`` outside [0, 1), ``rounds`` < 1, an unknown
    ``scope``, a layer without a weight, or a rewind point the first training run never
    reached.
    """
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"sparsity {sparsity!r} out of range: 0 <= sparsity < 1")
    if rounds < 1:
        raise PlanError(f"imp needs rounds >= 1, got {rounds!r}")
    if scope not in ("global", "layer"):
        raise PlanError(f"imp scope {scope!r} unknown; use 'global' or 'layer'")
    if rewind_epoch is not None:
        rewind_iteration = None
    elif rewind_iteration is None or rewind_iteration < 0:
        raise PlanError(f"give rewind_iteration >= 0 or rewind_epoch >= 0, got {rewind_iteration!r}")
    work = copy.deepcopy(model).train()
    mods = dict(work.named_modules())
    for name in layers:
        if not isinstance(getattr(mods.get(name), "weight", None), torch.Tensor):
            raise PlanError(f"layer {name!r} is not a module with a weight in {type(model).__name__}")
        w = mods[name].weight
        parametrize.register_parametrization(mods[name], "weight", _Mask(torch.ones(w.shape, dtype=torch.bool)))

    def mask_of(name: str) -> torch.Tensor:
        return mods[name].parametrizations.weight[0].mask

    watch = _Watch(data, work, rewind_iteration, rewind_epoch)
    pruned_round = {n: torch.full(mods[n].weight.shape, rounds, dtype=torch.long) for n in layers}
    last = {n: torch.zeros(mods[n].weight.shape, dtype=torch.float64) for n in layers}
    densities = []
    density = 1.0 - sparsity
    rewind: dict[str, torch.Tensor] | None = None
    mags: dict[str, torch.Tensor] = {}
    for r in range(rounds):
        train(work, watch if r == 0 else data)
        if r == 0:
            watch.finish()
            if watch.snapshot is None:
                point = f"epoch {rewind_epoch}" if rewind_epoch is not None else f"iteration {rewind_iteration}"
                raise PlanError(f"imp rewind point {point} was never reached: the training run took "
                                f"{watch.steps} batches in {watch.calls} epochs; choose an earlier rewind point")
            rewind = watch.snapshot
        mags = {n: mods[n].weight.detach().abs().double() for n in layers}
        target = density ** ((r + 1) / rounds)
        if scope == "global":
            keep = global_keep(mags, target)
        else:
            keep = {n: next(iter(global_keep({n: mags[n]}, target).values())) for n in layers}
        for n in layers:
            m = mask_of(n)
            keep_n = keep[n] & m
            newly = m & ~keep_n
            pruned_round[n][newly] = r
            last[n][newly] = mags[n][newly]
            m.copy_(keep_n)
        total = sum(int(mask_of(n).sum()) for n in layers)
        densities.append(total / sum(mask_of(n).numel() for n in layers))
        assert rewind is not None
        _load_plain(work, rewind)
        log.info("imp round %d/%d: density %.4f", r + 1, rounds, densities[-1])
    for n in layers:
        m = mask_of(n)
        last[n][m] = mags[n][m]
    assert rewind is not None
    masks = {n: mask_of(n).clone() for n in layers}
    weights = {n: rewind[f"{n}.weight"] * masks[n].to(rewind[f"{n}.weight"].dtype) for n in layers}
    return Ticket(masks=masks, weights=weights, rewind_state=rewind,
                  scores=tiered_scores(pruned_round, last, rounds), densities=tuple(densities),
                  rewind_step=watch.snapshot_step)


def ticket_model(model: nn.Module, ticket: Ticket) -> nn.Module:
    """A deep copy of ``model`` at the ticket's rewind point with its masks attached as
    parametrizations (masked weights stay zero during training) — ready to retrain."""
    work = copy.deepcopy(model)
    _load_plain(work, ticket.rewind_state)
    mods = dict(work.named_modules())
    for name, mask in ticket.masks.items():
        parametrize.register_parametrization(mods[name], "weight", _Mask(mask.clone()))
    return work
