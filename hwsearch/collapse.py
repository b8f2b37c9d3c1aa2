"""Layer collapse: when global pruning empties or disconnects a whole layer.

Global pruning ranks all weights together; criteria whose scores scale with layer size (SNIP,
GraSP, magnitude at initialisation) can remove *every* weight of a large layer at high
sparsity, after which the network computes a constant — "layer collapse" (Tanaka et al.,
2020). This module measures it on the *unguarded* global masks:

* :func:`report` — per global sparsity and layer: weights kept, density, and the density of
  weights still on some input→output path (a layer can keep weights none of which is
  connected); a layer has *collapsed* when it keeps nothing or nothing connected.
* :func:`max_sparsity_before_collapse` — bisection for the largest global sparsity without
  collapse.
* :func:`floored_layers` — the layers whose ``min_density`` guard binds in a resolved plan
  (the guard that prevents collapse in the search space).

Connectivity is computed like SynFlow's flow: a float64 copy whose pruned layers' weights are
their masks (scaled by 1/fan-in to avoid overflow), biases zero, BatchNorm identity, other
parameters absolute, max-pools replaced by average pools of the same geometry (so gradients
reach every window element), all-ones input; a weight is connected iff it is kept and
``∂R/∂w > 0`` for ``R = sum(output)``. Max-pooling written as a function call
(``F.max_pool2d``) cannot be swapped and can hide connected weights.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence

import pandas as pd
import torch
import torch.nn as nn

from hwsearch import importance
from hwsearch.core.errors import PlanError
from hwsearch.graph import PRUNABLE_TYPES, ModelGraph

__all__ = ["report", "max_sparsity_before_collapse", "floored_layers", "connected_weights"]

log = logging.getLogger(__name__)

_POOL_SWAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d,
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
}


def _swap_pools(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        new_type = _POOL_SWAP.get(type(child))
        if new_type is None:
            _swap_pools(child)
            continue
        if isinstance(child, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
            setattr(model, name, new_type(child.output_size))
        else:
            if child.dilation not in (1, (1, 1)):
                log.warning("max-pool %s has dilation %s; the average pool replacing it has none", name, child.dilation)
            setattr(model, name, new_type(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode))


def connected_weights(model: nn.Module, masks: dict[str, torch.Tensor],
                      example_inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Boolean map per masked layer: kept weights on at least one input→output path (see the
    module docstring for how). ``masks`` maps layer names to boolean keep-masks of their
    weights; unmasked layers count as dense. The model is not modified. Raises
    :class:`PlanError` if the flow overflows float64."""
    return _flow(model, masks, example_inputs)[0]


def _flow(model: nn.Module, masks: dict[str, torch.Tensor],
          example_inputs: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """(connected weights per masked layer, whether each masked layer's output carries flow)."""
    work = copy.deepcopy(model).double().eval()
    _swap_pools(work)
    mods = dict(work.named_modules())
    with torch.no_grad():
        for mod in work.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.running_mean is not None:
                    mod.running_mean.zero_()
                    mod.running_var.fill_(1.0 - mod.eps)
                if mod.affine:
                    mod.weight.fill_(1.0)
                    mod.bias.zero_()
        for name, p in work.named_parameters():
            p.requires_grad_(False)
            if name.endswith("bias"):
                p.zero_()
            else:
                p.abs_()
        for name, mod in mods.items():
            if isinstance(mod, PRUNABLE_TYPES):
                keep = masks.get(name)
                w = torch.ones_like(mod.weight) if keep is None else keep.to(torch.float64)
                mod.weight.copy_(w / max(1, mod.weight[0].numel()))
    weights = {n: mods[n].weight for n in masks}
    for w in weights.values():
        w.requires_grad_(True)
    alive: dict[str, bool] = {}
    hooks = [mods[n].register_forward_hook(
        lambda _m, _i, out, n=n: alive.__setitem__(n, alive.get(n, False) or bool((out > 0).any())))
        for n in masks]
    try:
        x = tuple(torch.ones((1, *t.shape[1:]), dtype=torch.float64) for t in example_inputs)
        r = work(*x).sum()
    finally:
        for h in hooks:
            h.remove()
    if not bool(torch.isfinite(r)):
        raise PlanError("connectivity flow overflowed float64; the model is too deep for this check")
    if r.item() == 0.0:
        return {n: torch.zeros_like(m, dtype=torch.bool) for n, m in masks.items()}, alive
    grads = torch.autograd.grad(r, list(weights.values()), allow_unused=True)
    conn = {n: masks[n].bool() & (g > 0) if g is not None else torch.zeros_like(masks[n], dtype=torch.bool)
            for n, g in zip(weights, grads)}
    return conn, alive


def _setup(graph_or_model: ModelGraph | nn.Module, data: importance.DataBatches | None,
           example_inputs: tuple[torch.Tensor, ...] | torch.Tensor | None,
           layers: Sequence[str] | None) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    if isinstance(graph_or_model, ModelGraph):
        model = graph_or_model.model
        example = example_inputs if example_inputs is not None else graph_or_model.example_inputs
        default_layers = list(graph_or_model.layers)
    else:
        model = graph_or_model
        example = example_inputs
        default_layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
        if example is None and data is not None:
            example = (next(iter(data()))[0][:1],)
    if example is None:
        raise PlanError("collapse needs the input shape: pass example_inputs=(tensor,), data, or a ModelGraph")
    if isinstance(example, torch.Tensor):
        example = (example,)
    names = list(layers) if layers is not None else default_layers
    if not names:
        raise PlanError(f"{type(model).__name__} has no Conv1d/Conv2d/Linear layer to prune")
    return model, tuple(example), names


def report(graph_or_model: ModelGraph | nn.Module, criterion: str | importance.Criterion,
           sparsities: Iterable[float], data: importance.DataBatches | None = None, *,
           example_inputs: tuple[torch.Tensor, ...] | torch.Tensor | None = None,
           layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per global sparsity, what unguarded global pruning by ``criterion`` leaves of each layer.

    One row per (sparsity, layer) with columns ``criterion``, ``sparsity``, ``layer``,
    ``weights``, ``kept``, ``density`` (kept / weights), ``connected_density`` (kept weights on
    an input→output path / weights), ``flow_out`` (the input's flow reaches this layer's
    output: the first layer in execution order where it is False is where the network
    breaks), ``emptied`` (nothing kept), ``disconnected`` (something kept, nothing connected),
    ``collapsed`` (either) and ``any_collapsed`` (some layer collapsed at this sparsity). ``layers`` default to every conv/linear layer (the classifier
    included). Scores are computed once, except for iterative criteria (run once per
    sparsity). Raises :class:`PlanError` for a sparsity outside [0, 1), a criterion that needs
    data given none, or no way to know the input shape.
    """
    model, example, names = _setup(graph_or_model, data, example_inputs, layers)
    crit = importance.get(criterion)
    if crit.needs_data and data is None:
        raise PlanError(f"criterion {crit.name!r} needs data: pass data=<callable yielding (inputs, targets) batches>")
    sparsities = [float(s) for s in sparsities]
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise PlanError(f"sparsity {s!r} out of range: 0 <= sparsity < 1")
    fixed = None if crit.iterative else crit.scores(model, names, data, example_inputs=example)
    rows = []
    for s in sparsities:
        scores = fixed if fixed is not None else crit.scores(model, names, data, example_inputs=example, sparsity=s)
        keep = importance.global_keep(scores, 1.0 - s)
        conn, alive = _flow(model, keep, example)
        layer_rows = []
        for n in names:
            total = keep[n].numel()
            kept = int(keep[n].sum())
            connected = int(conn[n].sum())
            layer_rows.append({"criterion": crit.name, "sparsity": s, "layer": n, "weights": total, "kept": kept,
                               "density": kept / total, "connected_density": connected / total,
                               "flow_out": alive.get(n, False),
                               "emptied": kept == 0, "disconnected": kept > 0 and connected == 0,
                               "collapsed": connected == 0})
        any_c = any(r["collapsed"] for r in layer_rows)
        for r in layer_rows:
            r["any_collapsed"] = any_c
        rows.extend(layer_rows)
        if any_c:
            log.info("%s at sparsity %.5f collapses: emptied %s, disconnected %s", crit.name, s,
                     [r["layer"] for r in layer_rows if r["emptied"]],
                     [r["layer"] for r in layer_rows if r["disconnected"]])
    return pd.DataFrame(rows)


def max_sparsity_before_collapse(model: ModelGraph | nn.Module,
                                 example: tuple[torch.Tensor, ...] | torch.Tensor | None,
                                 criterion: str | importance.Criterion, *,
                                 data: importance.DataBatches | None = None, layers: Sequence[str] | None = None,
                                 tol: float = 0.02, max_steps: int = 40) -> float:
    """Largest global sparsity at which unguarded global pruning by ``criterion`` leaves every
    layer connected, found by bisection on ``log(density)`` between density 1 and one weight
    (assumes collapse is monotone in sparsity, true for fixed scores; iterative criteria are
    re-run at each probe). Stops when the bracket's densities differ by less than the factor
    ``1 + tol``; returns the non-collapsing end (a sparsity in [0, 1)). Raises
    :class:`PlanError` as :func:`report` does.
    """
    net, ex, names = _setup(model, data, example, layers)
    crit = importance.get(criterion)
    if crit.needs_data and data is None:
        raise PlanError(f"criterion {crit.name!r} needs data: pass data=<callable yielding (inputs, targets) batches>")
    total = sum(dict(net.named_modules())[n].weight.numel() for n in names)
    fixed = None if crit.iterative else crit.scores(net, names, data, example_inputs=ex)

    def collapsed(sparsity: float) -> bool:
        scores = fixed if fixed is not None else crit.scores(net, names, data, example_inputs=ex, sparsity=sparsity)
        keep = importance.global_keep(scores, 1.0 - sparsity)
        conn = connected_weights(net, keep, ex)
        return any(not bool(c.any()) for c in conn.values())

    good, bad = 0.0, math.log(1.0 / total)  # log densities: 1 is good unless the model is dense-collapsed
    if collapsed(0.0):
        raise PlanError(f"{type(net).__name__} is disconnected even unpruned; check the model")
    if not collapsed(1.0 - math.exp(bad)):
        return 1.0 - math.exp(bad)
    for _ in range(max_steps):
        if good - bad < math.log1p(tol):
            break
        mid = 0.5 * (good + bad)
        if collapsed(1.0 - math.exp(mid)):
            bad = mid
        else:
            good = mid
    return 1.0 - math.exp(good)


def floored_layers(resolved: pd.DataFrame | object) -> list[str]:
    """Layers whose ``min_density`` floor binds, in table order: a resolved table
    (:func:`hwsearch.core.resolve.resolve`) or a :class:`hwsearch.prune.Decisions`. Raises
    :class:`PlanError` for a table without the ``min_density_binds`` column."""
    table = getattr(resolved, "resolved", resolved)
    if not isinstance(table, pd.DataFrame) or "min_density_binds" not in table.columns:
        raise PlanError("floored_layers needs the table plan.resolve() returns (or prune.Decisions)")
    return [str(n) for n in table.index[table["min_density_binds"].astype(bool)]]
