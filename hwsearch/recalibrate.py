"""Batch-norm recalibration of a pruned model ("adaptive BN", EagleEye, Li et al., ECCV 2020).

Pruning a layer shifts the statistics of every activation after it, but a BatchNorm layer
keeps normalising with the running mean and variance of the *dense* model. EagleEye showed
that candidate sub-networks judged with those stale statistics rank poorly against their
accuracy after fine-tuning, and that re-estimating the statistics on a few training batches
(no gradient step, weights untouched) fixes most of the ranking, at the cost of a few forward
passes. hwsearch therefore judges every plan, of the search and of every baseline alike, after
this recalibration (``SearchConfig.bn_recalibration`` batches; 0 turns it off), and the
exported deployment carries the same recalibrated statistics, so the accuracy a plan was chosen
for is the accuracy of what ships.

The estimate is the plain average over the batches (``momentum=None``), and it is the same in
mask and fold mode: channels a plan removes are all-zero in mask mode, and their statistics
are never read by a kept channel.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from hwsearch.graph import ModelGraph

__all__ = ["has_batchnorm", "recalibrate_bn", "masked_model", "calibration_batches"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def calibration_batches(data, n: int):
    """The batches every plan is recalibrated on: ``n`` shuffled (seed 0) training batches of 128
    of ``data`` (a :class:`hwsearch.zoo.Dataset`), as a function giving a fresh iterator — the
    search's Evaluator and the export use this one definition, so they agree."""
    return lambda: data.batches("train", 128, shuffle=True, seed=0, limit=n)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Re-estimate the running mean/variance of every BatchNorm layer of ``model`` in place from
    ``batches`` (inputs, labels); weights are not changed. Returns the number of batches used
    (0: the model has no BatchNorm or no batch came, and it is left as it was). The model is
    left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    try:
        for x, _ in batches:
            model(x)
            n += 1
    finally:
        for m, (mom, mean, var, nbt) in zip(bns, saved):
            m.momentum = mom
            if n == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)
        model.eval()
    return n


def masked_model(graph: ModelGraph, masked: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``graph.model`` with the parameter overrides ``masked`` (from
    :func:`hwsearch.prune.masked_state`) written into it: cheaper than parametrizations when
    the model is only evaluated."""
    model = copy.deepcopy(graph.model).eval()
    with torch.no_grad():
        for name, t in masked.items():
            model.get_parameter(name).copy_(t)
    return model
