"""Apply a :class:`~hwsearch.core.plan.Plan` to a model.

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
original weights, so both modes remove the same things. Fold mode lets Torch-Pruning do the
surgery (module attributes, BatchNorm, shapes) and then writes every changed layer's weight
from the original through the decided index map, so grouped convolutions (whose per-group
input selection Torch-Pruning does not track) come out right too.

:func:`global_plan` turns one global sparsity into per-layer unstructured ratios by a global
threshold over a criterion's scores; :func:`nm_compressed` gives the N:M value + metadata
layout of a folded model's N:M layers.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp

from hwsearch import importance
from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.graph import ModelGraph
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import channel_segments, input_slices, resolve

__all__ = ["Decisions", "decide", "apply", "masked_state", "global_plan", "nm_compressed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decisions:
    """What a plan removes: ``keep_out[layer]`` / ``keep_in[layer]`` are the sorted kept
    output-channel and input-column indices (None = all; input columns index the layer's
    input channels — its ``in_features`` for a linear after a flatten), ``masks[layer]`` the
    full-shape boolean keep-mask of the weight (channels and weight pattern combined),
    ``sub_masks[layer]`` the weight-pattern mask on the channel-pruned weight, ``resolved`` the
    plan's resolution, ``pruned_channels[gid]`` the removed channel indices of each group and
    ``columns[layer]`` the index map of the channel-pruned weight: row ``i`` of it is original
    row ``keep_out[i]``, its column ``j`` original column ``columns[layer][i, j]`` of
    ``weight.shape[1]`` (per row because grouped convs keep different columns per conv group);
    ``heads[q]`` the query and KV heads kept in the attention block of query projection ``q``."""

    keep_out: dict[str, torch.Tensor | None]
    keep_in: dict[str, torch.Tensor | None]
    pruned_channels: dict[int, list[int]]
    masks: dict[str, torch.Tensor]
    sub_masks: dict[str, torch.Tensor]
    resolved: pd.DataFrame
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)  # query projection -> kept (heads, KV heads)


def _expand(idx: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return idx
    return (idx[:, None] * factor + torch.arange(factor)[None, :]).flatten()


def _is_coupled_depthwise(row: pd.Series) -> bool:
    return row["kind"] == "depthwise" and int(row["in_channels"]) == int(row["out_channels"])


def _select_channels(ch: torch.Tensor, kept: int, segments: list[int] | None) -> torch.Tensor:
    """Indices of the ``kept`` highest channel scores; with ``segments``, the same number in
    each segment (resolve made ``kept`` a multiple of the segment count)."""
    if segments is None:
        return torch.sort(torch.topk(ch, kept).indices).values
    seg = torch.tensor(segments)
    nseg = int(seg.max()) + 1
    per = kept // nseg
    picks = []
    for s in range(nseg):
        members = torch.nonzero(seg == s).flatten()
        picks.append(members[torch.topk(ch[members], per).indices])
    return torch.sort(torch.cat(picks)).values


def _in_columns(row: pd.Series, group_keep: dict[int, torch.Tensor], graph: ModelGraph) -> torch.Tensor | None:
    slices = [sl for sl in input_slices(row) if sl[0] in group_keep]
    if not slices or _is_coupled_depthwise(row):
        return None
    keep = torch.ones(int(row["in_channels"]), dtype=torch.bool)
    for gid, off, e in slices:
        c = int(graph.groups[gid].channels)
        keep[off:off + c * e] = False
        keep[off + _expand(group_keep[gid], e)] = True
    return torch.nonzero(keep).flatten()


def _column_map(layer: str, row: pd.Series, w_shape: tuple[int, ...], oi: torch.Tensor,
                ki: torch.Tensor | None) -> torch.Tensor:
    """``[len(oi), kept columns]`` original indices into ``weight.shape[1]``."""
    if _is_coupled_depthwise(row):
        return torch.zeros((len(oi), w_shape[1]), dtype=torch.long)
    ng = int(row["groups"])
    if ng > 1:
        per_in = int(row["in_channels"]) // ng
        per_out = int(row["out_channels"]) // ng
        rows = []
        for o in oi.tolist():
            j = o // per_out
            if ki is None:
                rows.append(torch.arange(per_in))
            else:
                rows.append(ki[(ki >= j * per_in) & (ki < (j + 1) * per_in)] - j * per_in)
        if len({len(r) for r in rows}) > 1:
            raise PlanError(f"grouped conv {layer!r} would keep unequal input channels per conv group; "
                            "leave the channel groups feeding it dense")
        return torch.stack(rows)
    ii = ki if ki is not None else torch.arange(w_shape[1])
    return ii[None, :].expand(len(oi), -1).clone()


def _head_indices(idx: list[int], width: int) -> torch.Tensor:
    """Rows (or columns) of the heads ``idx``, ``width`` each, in order."""
    return (torch.tensor(sorted(idx))[:, None] * width + torch.arange(width)[None, :]).flatten()


def _pruned_blocks(graph: ModelGraph, plan: Plan):
    """``(query projection, HeadGroup, choice)`` of every prunable attention block ``plan``
    gives a head pattern."""
    for q, h in graph.heads.items():
        choice = plan.get_choice(q)
        if not h.reason and choice.pattern in patterns.HEAD_PATTERNS:
            yield q, h, choice


def _decide_heads(graph: ModelGraph, plan: Plan, res: pd.DataFrame, scores: dict[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Kept output rows of q/k/v and input columns of the output projection of every attention
    block whose heads ``plan`` prunes, and the kept head counts. A query head scores the summed
    squared scores of its q rows and output-projection columns, a KV head those of its k and v
    rows; ``head`` keeps the KV groups (KV head + its query heads) of highest total, ``qhead`` the
    highest query heads within every KV group."""
    keep_out: dict[str, torch.Tensor] = {}
    keep_in: dict[str, torch.Tensor] = {}
    kept: dict[str, tuple[int, int]] = {}
    for q, h, choice in _pruned_blocks(graph, plan):
        d, dv, g = h.head_dim, h.v_head_dim, h.group_size
        sq = lambda layer: scores[layer].double().pow(2)  # noqa: E731
        qh = sq(h.q).reshape(h.heads, -1).sum(1) + sq(h.o).reshape(-1, h.heads, dv).sum((0, 2))
        kvh = sq(h.k).reshape(h.kv_heads, -1).sum(1) + sq(h.v).reshape(h.kv_heads, -1).sum(1)
        n_q = int(res.at[h.q, "kept_out"]) // d
        n_kv = int(res.at[h.k, "kept_out"]) // d
        if choice.pattern == "head":
            unit = qh.reshape(h.kv_heads, g).sum(1) + kvh
            kv_idx = torch.topk(unit, n_kv).indices.tolist()
            q_idx = [j * g + i for j in kv_idx for i in range(g)]
        else:
            per = n_q // h.kv_heads
            kv_idx = list(range(h.kv_heads))
            q_idx = [j * g + int(i) for j in kv_idx for i in torch.topk(qh[j * g:(j + 1) * g], per).indices]
        keep_out[h.q] = _head_indices(q_idx, d)
        keep_in[h.o] = _head_indices(q_idx, dv)
        if n_kv < h.kv_heads:
            keep_out[h.k] = _head_indices(kv_idx, d)
            keep_out[h.v] = _head_indices(kv_idx, dv)
        kept[q] = (len(q_idx), len(kv_idx))
    return keep_out, keep_in, kept


def _iterative_sparsity(res: pd.DataFrame, layers: list[str]) -> float:
    total = float(res.loc[layers, "weight_params"].sum())
    kept = float(res.loc[layers, "nnz"].sum())
    return max(0.0, 1.0 - kept / total) if total else 0.0


def decide(graph: ModelGraph, plan: Plan, *, criterion: str | importance.Criterion = "magnitude",
           data: importance.DataBatches | None = None, channel_multiple: int = 8,
           min_density: float = 0.0) -> Decisions:
    """Choose the channels and weights ``plan`` removes from ``graph.model`` by ``criterion``
    (a registered name or a configured :class:`~hwsearch.importance.Criterion`).

    Channel groups keep the channels with the largest summed L2 norm of their producers'
    filter scores (balanced over the conv groups of grouped convs); weight patterns rank the
    remaining weights' scores. An iterative criterion (``synflow``, ``imp``) is run to the
    plan's overall sparsity over the scored layers. Raises :class:`PlanError` for an invalid
    plan, an unknown criterion, or a criterion that needs data given none.
    """
    table = graph.table
    res = resolve(table, graph.groups, plan, channel_multiple=channel_multiple, min_density=min_density)
    crit = importance.get(criterion)
    if crit.needs_data and data is None:
        raise PlanError(f"criterion {crit.name!r} needs data: pass data=<callable yielding (inputs, targets) "
                        "batches>, or use a data-free criterion ('magnitude', 'synflow', 'random')")
    touched = [n for n in table.index if res.at[n, "pattern"] != "dense" or res.at[n, "out_frac"] < 1
               or res.at[n, "in_frac"] < 1]
    need_scores = set(touched)
    for gid, g in graph.groups.items():
        if any(res.at[p, "out_frac"] < 1 for p in g.producers):
            need_scores.update(g.producers)
    for _, h, _ in _pruned_blocks(graph, plan):  # every projection of a block losing heads scores its heads
        need_scores.update((h.q, h.k, h.v, h.o))
    scored = sorted(need_scores, key=lambda n: int(table.at[n, "order"]))
    scores: dict[str, torch.Tensor] = {}
    if scored:
        kwargs: dict = {"example_inputs": graph.example_inputs}
        if crit.iterative:
            kwargs["sparsity"] = _iterative_sparsity(res, scored)
        scores = crit.scores(graph.model, scored, data, **kwargs)

    group_keep: dict[int, torch.Tensor] = {}
    pruned: dict[int, list[int]] = {}
    for gid, g in graph.groups.items():
        kept = int(res.at[g.leader, "kept_out"])
        if kept >= g.channels or bool(res.at[g.leader, "head_pruned"]):  # heads: decided per block below
            continue
        ch = sum(scores[p].reshape(g.channels, -1).double().pow(2).sum(1).sqrt() for p in g.producers)
        keep = _select_channels(ch, kept, channel_segments(table, graph.groups, gid))
        group_keep[gid] = keep
        pruned[gid] = sorted(set(range(g.channels)) - set(keep.tolist()))

    head_out, head_in, head_kept = _decide_heads(graph, plan, res, scores)
    keep_out: dict[str, torch.Tensor | None] = {}
    keep_in: dict[str, torch.Tensor | None] = {}
    masks: dict[str, torch.Tensor] = {}
    sub_masks: dict[str, torch.Tensor] = {}
    columns: dict[str, torch.Tensor] = {}
    mods = dict(graph.model.named_modules())
    for layer in table.index:
        row = res.loc[layer]
        ko = head_out.get(layer, group_keep.get(int(row["out_group"])))
        ki = head_in.get(layer, _in_columns(row, group_keep, graph))
        keep_out[layer], keep_in[layer] = ko, ki
        if layer not in need_scores:
            continue
        w = mods[layer].weight
        oi = ko if ko is not None else torch.arange(w.shape[0])
        cols = _column_map(layer, row, tuple(w.shape), oi, ki)
        columns[layer] = cols
        pat = patterns.get(str(row["pattern"]))
        if pat.weight_level:
            sub = scores[layer][oi[:, None], cols]
            choice = plan.get_choice(layer)
            sm = patterns.from_gemm_view(pat.mask(patterns.gemm_view(sub), choice, min_density), tuple(sub.shape))
            sub_masks[layer] = sm
        else:
            sm = torch.ones((len(oi), cols.shape[1]) + tuple(w.shape[2:]), dtype=torch.bool)
        full = torch.zeros(w.shape, dtype=torch.bool)
        full[oi[:, None], cols] = sm
        masks[layer] = full
    return Decisions(keep_out, keep_in, pruned, masks, sub_masks, res, columns, head_kept)


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


def apply(graph: ModelGraph, plan: Plan | Decisions, *, mode: str = "mask",
          criterion: str | importance.Criterion = "magnitude", data: importance.DataBatches | None = None,
          channel_multiple: int = 8, min_density: float = 0.0) -> nn.Module:
    """A pruned deep copy of ``graph.model`` (the original is untouched).

    ``mode`` is ``"mask"`` (parametrized keep-masks, trainable: masked weights stay zero
    whatever the optimiser does) or ``"fold"`` (channels removed, weight-level zeros baked in;
    see :func:`nm_compressed` for the N:M layout). Raises
    :class:`~hwsearch.core.errors.PlanError` for an invalid plan or mode.
    """
    if mode not in ("mask", "fold"):
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

    originals = {layer: (mods[layer].weight.detach().clone(),
                         None if mods[layer].bias is None else mods[layer].bias.detach().clone())
                 for layer in dec.masks}
    if dec.pruned_channels:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=graph.example_inputs)
        # Torch-Pruning selects a grouped conv's input columns as keep_idxs[:n/groups] of the
        # global channel indices, which is wrong (and can index out of range) unless the same
        # local channels are kept in every conv group. The real weights are written below from
        # the decided index map; during the surgery grouped convs carry a full-width
        # placeholder so that selection stays in range.
        grouped = [layer for layer in originals
                   if int(graph.table.at[layer, "groups"]) > 1 and not _is_coupled_depthwise(graph.table.loc[layer])]
        for gid, idxs in dec.pruned_channels.items():
            for layer in grouped:
                mod = mods[layer]
                mod.weight = nn.Parameter(torch.zeros((mod.weight.shape[0], mod.in_channels) + tuple(mod.weight.shape[2:]),
                                                      dtype=mod.weight.dtype))
            leader = mods[graph.groups[gid].leader]
            fn = tp.prune_linear_out_channels if isinstance(leader, nn.Linear) else tp.prune_conv_out_channels
            group = dg.get_pruning_group(leader, fn, idxs=list(idxs))
            group.prune()
        for layer in grouped:
            mod = mods[layer]
            mod.weight = nn.Parameter(torch.zeros((mod.weight.shape[0], mod.in_channels // mod.groups)
                                                  + tuple(mod.weight.shape[2:]), dtype=mod.weight.dtype))
    if dec.heads:
        _fold_heads(graph, dec, mods)
    with torch.no_grad():
        for layer, (w0, b0) in originals.items():
            ko = dec.keep_out.get(layer)
            oi = ko if ko is not None else torch.arange(w0.shape[0])
            cols = dec.columns.get(layer)
            if cols is None:  # Decisions built by hand without index maps
                cols = torch.arange(w0.shape[1])[None, :].expand(len(oi), -1)
            new_w = w0[oi[:, None], cols]
            sm = dec.sub_masks.get(layer)
            if sm is not None:
                new_w = new_w * sm.to(new_w.dtype)
            mod = mods[layer]
            if tuple(mod.weight.shape) != tuple(new_w.shape):
                raise RuntimeError(f"internal: folded weight of {layer} is {tuple(mod.weight.shape)}, "
                                   f"decided {tuple(new_w.shape)}")
            mod.weight.copy_(new_w)
            if b0 is not None:
                mod.bias.copy_(b0[oi])
    return model


# Attributes attention modules keep their head counts in (this project's ViT, Hugging Face BERT,
# Llama/Qwen, GPT-style blocks): updated when they hold the old value.
_HEAD_ATTRS = ("heads", "num_heads", "n_heads", "n_head", "num_attention_heads")
_KV_ATTRS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads")


def _fold_heads(graph: ModelGraph, dec: Decisions, mods: dict[str, nn.Module]) -> None:
    """Resize the projections of every head-pruned attention block to the decided widths (the
    weights are written from the originals afterwards) and update the head counts the attention
    module keeps (``num_attention_heads``, ``num_key_value_groups``, ``all_head_size``, …: see
    :data:`_HEAD_ATTRS`). A module that computes its heads from a stored width those names miss
    would reshape wrongly: ``export --verify`` and the fold-equals-mask tests catch it."""
    for q, (n_q, n_kv) in dec.heads.items():
        h = graph.heads[q]
        for layer in (h.q, h.k, h.v, h.o):
            mod = mods[layer]
            out_f = len(dec.keep_out[layer]) if dec.keep_out.get(layer) is not None else mod.out_features
            in_f = len(dec.keep_in[layer]) if dec.keep_in.get(layer) is not None else mod.in_features
            if (out_f, in_f) == (mod.out_features, mod.in_features):
                continue
            mod.weight = nn.Parameter(torch.empty(out_f, in_f, dtype=mod.weight.dtype))
            if mod.bias is not None and out_f != mod.bias.shape[0]:
                mod.bias = nn.Parameter(torch.empty(out_f, dtype=mod.bias.dtype))
            mod.out_features, mod.in_features = out_f, in_f
        attn = mods.get(q.rsplit(".", 1)[0]) if "." in q else None
        if attn is None:
            continue
        for name, old, new in ([(a, h.heads, n_q) for a in _HEAD_ATTRS] + [(a, h.kv_heads, n_kv) for a in _KV_ATTRS]
                               + [("num_key_value_groups", h.group_size, n_q // n_kv),
                                  ("all_head_size", h.heads * h.head_dim, n_q * h.head_dim)]):
            if isinstance(getattr(attn, name, None), int) and getattr(attn, name) == old:
                setattr(attn, name, new)


def global_plan(graph: ModelGraph, sparsity: float, *, criterion: str | importance.Criterion = "magnitude",
                data: importance.DataBatches | None = None, min_density: float = 0.0,
                layers: list[str] | None = None) -> Plan:
    """Per-layer unstructured ratios from one global ``sparsity`` (fraction of the weights of
    ``layers`` — default all prunable layers — removed) by a global threshold over
    ``criterion``'s scores.

    With ``min_density`` > 0 every layer keeps at least ``ceil(min_density·weights)`` and the
    threshold is lowered over the other layers so the total still meets ``sparsity``; floored
    layers get the ratio the bare threshold gave them, so ``resolve``/``decide`` called with
    the same ``min_density`` floor them and report ``min_density_binds``. Apply the plan with
    the same ``criterion`` and ``min_density`` to get the global mask. A plan cannot empty a
    layer: a layer the threshold empties keeps its top weight (use
    :mod:`hwsearch.collapse` to study collapse). Raises :class:`PlanError` for a sparsity
    outside [0, 1), a ``min_density`` the sparsity cannot meet, or criterion errors.
    """
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"sparsity {sparsity!r} out of range: give the fraction removed, 0 <= sparsity < 1")
    names_ = list(layers) if layers is not None else list(graph.table.index)
    unknown = set(names_) - set(graph.table.index)
    if unknown:
        raise PlanError(f"layers not in the model: {sorted(unknown)}; valid: {', '.join(graph.table.index)}")
    crit = importance.get(criterion)
    kwargs: dict = {"example_inputs": graph.example_inputs}
    if crit.iterative:
        kwargs["sparsity"] = sparsity
    scores = crit.scores(graph.model, names_, data, **kwargs)
    sizes = {n: scores[n].numel() for n in names_}
    total = sum(sizes.values())
    target = int(round((1.0 - sparsity) * total))
    floors = {n: min(sizes[n], math.ceil(min_density * sizes[n] - 1e-9)) for n in names_}
    if sum(floors.values()) > target:
        raise PlanError(f"min_density {min_density} keeps {sum(floors.values())} weights, more than sparsity "
                        f"{sparsity} allows ({target}); lower min_density or the sparsity")
    flat = torch.cat([scores[n].flatten().double() for n in names_])
    order = torch.sort(flat, descending=True).values
    per_layer = {n: torch.sort(scores[n].flatten().double()).values for n in names_}

    def counts(k: int) -> dict[str, int]:
        if k <= 0:
            return {n: 0 for n in names_}
        thr = order[k - 1]
        return {n: int(per_layer[n].numel() - torch.searchsorted(per_layer[n], thr, right=False)) for n in names_}

    lo, hi = 0, len(order)  # largest k with sum(max(count, floor)) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        c = counts(mid)
        if sum(max(c[n], floors[n]) for n in names_) <= target:
            lo = mid
        else:
            hi = mid - 1
    raw = counts(lo)
    floored = {n: raw[n] < floors[n] for n in names_}
    kept = {n: floors[n] if floored[n] else raw[n] for n in names_}
    short = target - sum(kept.values())  # ties at the threshold leave a few to hand out
    for n in names_:
        if short <= 0:
            break
        if not floored[n]:
            add = min(short, sizes[n] - kept[n])
            kept[n] += add
            short -= add
    choices = {}
    for n in names_:
        ratio = 1.0 - (raw[n] if floored[n] else kept[n]) / sizes[n]
        ratio = min(ratio, 1.0 - 0.5 / sizes[n])  # LayerChoice needs ratio < 1: an empty layer keeps 1
        if ratio > 0:
            choices[n] = LayerChoice("unstructured", ratio)
    log.debug("global plan at sparsity %.4f: %s", sparsity, {n: kept[n] / sizes[n] for n in names_})
    return Plan(choices)


def nm_compressed(model: nn.Module, decisions: Decisions) -> dict[str, patterns.NMCompressed]:
    """The N:M compressed layout (values + packed indices, :func:`hwsearch.core.patterns.nm_compress`)
    of every ``nm`` layer of ``model``, a model folded from ``decisions``
    (``apply(..., mode="fold")``). Raises :class:`PlanError` when a layer's weight does not have
    the decided channel-pruned shape (the model was not folded from these decisions)."""
    mods = dict(model.named_modules())
    out = {}
    res = decisions.resolved
    for layer, sm in decisions.sub_masks.items():
        if res.at[layer, "pattern"] != "nm":
            continue
        w = mods[layer].weight.detach()
        if tuple(w.shape) != tuple(sm.shape):
            raise PlanError(f"{layer!r} has weight {tuple(w.shape)}, the decisions {tuple(sm.shape)}: pass the "
                            "model folded from these decisions (apply(..., mode='fold'))")
        out[layer] = patterns.nm_compress(patterns.gemm_view(w), int(res.at[layer, "n"]),
                                          int(res.at[layer, "m"]), mask=patterns.gemm_view(sm))
    return out
