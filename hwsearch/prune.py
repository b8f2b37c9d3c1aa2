"""Apply a :class:`~hwsearch.plan.Plan` to a model.

Two ways, with the same outputs (tested):

* ``mode="mask"`` — ephemeral sparsity: a deep copy whose conv/linear weights are multiplied by
  fixed keep-masks through :mod:`torch.nn.utils.parametrize` (the masks stay during
  fine-tuning). Pruned channels are masked on the producing filters *and* on every consumer's
  input columns, so the outputs equal those of the physically pruned model whatever the
  activation function.
* ``mode="fold"`` — model sparsity for deployment: pruned channels are removed physically
  through Torch-Pruning's dependency groups (BN, residual adds, depthwise convs, flatten→linear
  follow), and weight-level zeros are baked into the smaller weights.

Decisions (which channels, which weights) are computed once by :func:`decide` from the
original weights, so both modes remove the same things.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp

from hwsearch import importance, patterns
from hwsearch.graph import ModelGraph
from hwsearch.plan import Plan, resolve

__all__ = ["Decisions", "decide", "apply", "masked_state"]


@dataclass(frozen=True)
class Decisions:
    """What a plan removes: ``keep_out[layer]`` / ``keep_in[layer]`` are the sorted kept
    output-channel and input-column indices (None = all), ``masks[layer]`` the full-shape boolean
    keep-mask of the weight (channels and weight pattern combined), ``sub_masks[layer]`` the
    weight-pattern mask on the channel-pruned weight, ``resolved`` the plan's resolution."""

    keep_out: dict[str, torch.Tensor | None]
    keep_in: dict[str, torch.Tensor | None]
    pruned_channels: dict[int, list[int]]
    masks: dict[str, torch.Tensor]
    sub_masks: dict[str, torch.Tensor]
    resolved: pd.DataFrame


def _expand(idx: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return idx
    return (idx[:, None] * factor + torch.arange(factor)[None, :]).flatten()


def decide(graph: ModelGraph, plan: Plan, *, criterion: str = "magnitude", data: importance.DataBatches | None = None,
           channel_multiple: int = 8, min_density: float = 0.0) -> Decisions:
    """Choose the channels and weights ``plan`` removes from ``graph.model`` by ``criterion``."""
    table = graph.table
    res = resolve(table, graph.groups, plan, channel_multiple=channel_multiple, min_density=min_density)
    crit = importance.get(criterion)
    if crit.needs_data and data is None:
        from hwsearch.errors import PlanError
        raise PlanError(f"criterion {criterion!r} needs data: pass a data loader (or use 'magnitude')")
    touched = [n for n in table.index if res.at[n, "pattern"] != "dense" or res.at[n, "out_frac"] < 1
               or res.at[n, "in_frac"] < 1]
    need_scores = set(touched)
    for gid, g in graph.groups.items():
        if any(res.at[p, "out_frac"] < 1 for p in g.producers):
            need_scores.update(g.producers)
    scores = crit.scores(graph.model, sorted(need_scores), data) if need_scores else {}

    group_keep: dict[int, torch.Tensor] = {}
    pruned: dict[int, list[int]] = {}
    for gid, g in graph.groups.items():
        kept = int(res.at[g.leader, "kept_out"])
        if kept >= g.channels:
            continue
        ch = sum(scores[p].reshape(g.channels, -1).float().pow(2).sum(1).sqrt() for p in g.producers)
        keep = torch.sort(torch.topk(ch, kept).indices).values
        group_keep[gid] = keep
        pruned[gid] = sorted(set(range(g.channels)) - set(keep.tolist()))

    keep_out: dict[str, torch.Tensor | None] = {}
    keep_in: dict[str, torch.Tensor | None] = {}
    masks: dict[str, torch.Tensor] = {}
    sub_masks: dict[str, torch.Tensor] = {}
    mods = dict(graph.model.named_modules())
    for layer in table.index:
        row = res.loc[layer]
        ko = group_keep.get(int(row["out_group"]))
        ki = group_keep.get(int(row["in_group"]))
        if ki is not None:
            ki = _expand(ki, int(row["in_expand"]))
        if row["kind"] == "depthwise":
            ki = None  # its single input column per group follows its output channel
        keep_out[layer], keep_in[layer] = ko, ki
        if layer not in need_scores:
            continue
        w = mods[layer].weight
        full = torch.zeros(w.shape, dtype=torch.bool)
        oi = ko if ko is not None else torch.arange(w.shape[0])
        ii = ki if ki is not None else torch.arange(w.shape[1])
        pat = patterns.get(str(row["pattern"]))
        if pat.weight_level:
            sub = scores[layer][oi][:, ii]
            choice = plan.get_choice(layer)
            sm = pat.mask(sub.reshape(len(oi), -1), choice, min_density).reshape(sub.shape)
            sub_masks[layer] = sm
        else:
            sm = torch.ones((len(oi), len(ii)) + tuple(w.shape[2:]), dtype=torch.bool)
        full[oi[:, None], ii[None, :]] = sm
        masks[layer] = full
    return Decisions(keep_out, keep_in, pruned, masks, sub_masks, res)


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def masked_state(graph: ModelGraph, decisions: Decisions) -> dict[str, torch.Tensor]:
    """Parameter overrides for ``torch.func.functional_call``: masked weights (and biases of
    removed output channels zeroed). Cheap: no copy of the model; used for trial accuracy."""
    mods = dict(graph.model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for layer, mask in decisions.masks.items():
        m = mods[layer]
        out[f"{layer}.weight"] = m.weight.detach() * mask.to(m.weight.dtype)
        ko = decisions.keep_out.get(layer)
        if ko is not None and m.bias is not None:
            bmask = torch.zeros(m.bias.shape, dtype=m.bias.dtype)
            bmask[ko] = 1
            out[f"{layer}.bias"] = m.bias.detach() * bmask
    return out


def apply(graph: ModelGraph, plan: Plan | Decisions, *, mode: str = "mask", criterion: str = "magnitude",
          data: importance.DataBatches | None = None, channel_multiple: int = 8,
          min_density: float = 0.0) -> nn.Module:
    """A pruned deep copy of ``graph.model`` (the original is untouched).

    ``mode`` is ``"mask"`` (parametrized keep-masks, trainable) or ``"fold"`` (channels removed,
    zeros baked in). Raises :class:`~hwsearch.errors.PlanError` for an invalid plan.
    """
    if mode not in ("mask", "fold"):
        from hwsearch.errors import PlanError
        raise PlanError(f"unknown mode {mode!r}; use 'mask' or 'fold'")
    dec = plan if isinstance(plan, Decisions) else decide(
        graph, plan, criterion=criterion, data=data, channel_multiple=channel_multiple, min_density=min_density)
    model = copy.deepcopy(graph.model).eval()
    mods = dict(model.named_modules())
    if mode == "mask":
        for layer, mask in dec.masks.items():
            parametrize.register_parametrization(mods[layer], "weight", _Mask(mask))
            ko = dec.keep_out.get(layer)
            if ko is not None and mods[layer].bias is not None:
                bmask = torch.zeros(mods[layer].bias.shape, dtype=torch.bool)
                bmask[ko] = True
                parametrize.register_parametrization(mods[layer], "bias", _Mask(bmask))
        return model

    if dec.pruned_channels:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=graph.example_inputs)
        for gid, idxs in dec.pruned_channels.items():
            leader = mods[graph.groups[gid].leader]
            fn = tp.prune_linear_out_channels if isinstance(leader, nn.Linear) else tp.prune_conv_out_channels
            group = dg.get_pruning_group(leader, fn, idxs=list(idxs))
            group.prune()
    with torch.no_grad():
        for layer, sm in dec.sub_masks.items():
            w = mods[layer].weight
            if w.shape != sm.shape:
                raise RuntimeError(f"internal: folded weight of {layer} is {tuple(w.shape)}, mask {tuple(sm.shape)}")
            w.mul_(sm.to(w.dtype))
    return model
