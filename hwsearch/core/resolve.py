"""Resolve a plan on a model's layer table: kept channels, weight density, MACs and bytes.

:func:`resolve` turns a :class:`~hwsearch.core.plan.Plan` into concrete per-layer figures for a
model's layer table (see :func:`hwsearch.graph.analyze`): kept output/input channels after
channel pruning (rounded to a multiple so tuned shapes repeat), the density of the weight
pattern, and the resulting MACs, parameters and activation sizes. Cost models and pruning both
consume this resolution, so they agree by construction.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan

__all__ = ["resolve", "kept_channels", "kept_units", "head_shapes", "channel_segments", "input_slices"]


def kept_channels(channels: int, ratio: float, multiple: int = 8, min_density: float = 0.0) -> int:
    """Output channels kept when removing ``ratio`` of ``channels``.

    Rounded to the nearest ``multiple`` (so tuned kernel shapes repeat across plans), never
    below one multiple (or 1 when the layer is smaller than a multiple), never below
    ``ceil(min_density * channels)`` and never above ``channels``. A ratio of 0 keeps every
    channel (no rounding: a layer the plan does not prune keeps its shape).
    """
    if ratio <= 0.0:
        return int(channels)
    want = channels * (1.0 - ratio)
    if channels <= multiple:
        kept = max(1, round(want))
    else:
        kept = max(multiple, int(round(want / multiple)) * multiple)
    floor = math.ceil(min_density * channels - 1e-9)
    if kept < floor:
        kept = floor if channels <= multiple else min(channels, math.ceil(floor / multiple) * multiple)
    return int(min(channels, kept))


def kept_units(units: int, ratio: float, min_density: float = 0.0) -> int:
    """Whole units (attention heads, KV groups) kept when removing ``ratio`` of ``units``: the
    nearest count, at least one, at least ``ceil(min_density * units)``, at most ``units``."""
    if ratio <= 0.0:
        return int(units)
    kept = max(1, int(round(units * (1.0 - ratio))), math.ceil(min_density * units - 1e-9))
    return int(min(units, kept))


def _head_rows(table: pd.DataFrame) -> pd.DataFrame:
    if "head_role" not in table.columns:
        return table.iloc[0:0]
    return table[table["head_role"].astype(str) != ""]


def head_shapes(table: pd.DataFrame, plan: Plan, min_density: float = 0.0
                ) -> tuple[dict[str, int], dict[str, int], set[str]]:
    """The shapes a plan's ``head`` / ``qhead`` choices give (see :mod:`hwsearch.graph_heads`):
    kept output features of the q/k/v projections, kept input features of each output
    projection, and the query projections whose ``min_density`` floor kept more heads than the
    ratio asks. ``head`` keeps ``kept_units(Hkv, ratio)`` KV groups with their ``H/Hkv`` query
    heads each; ``qhead`` keeps ``kept_units(H/Hkv, ratio)`` query heads in every KV group and
    every KV head. Raises :class:`PlanError` for a head choice on a layer that is not the query
    projection of a prunable attention block, and for ``qhead`` without grouped-query attention."""
    heads = _head_rows(table)
    out: dict[str, int] = {}
    inp: dict[str, int] = {}
    binds: set[str] = set()
    for layer, choice in plan.items():
        if choice.pattern not in patterns.HEAD_PATTERNS:
            continue
        if layer not in heads.index or heads.at[layer, "head_role"] != "q":
            leaders = sorted(set(heads["head_leader"])) if len(heads) else []
            raise PlanError(f"{choice.pattern} pruning is given on an attention block's query projection; "
                            f"{layer!r} is not one (query projections: {', '.join(leaders) or 'none in this model'})")
        row = heads.loc[layer]
        h, hkv, d, dv = (int(row[c]) for c in ("heads", "kv_heads", "head_dim", "v_head_dim"))
        g = h // hkv
        if choice.pattern == "qhead":
            if g <= 1:
                raise PlanError(f"qhead pruning needs grouped-query attention (more query heads than KV heads); "
                                f"{layer!r} has {h} query and {hkv} KV heads: use pattern 'head'")
            k = kept_units(g, choice.ratio, min_density)
            kept_h, kept_kv = hkv * k, hkv
            binds_ = k > kept_units(g, choice.ratio)
        else:
            k = kept_units(hkv, choice.ratio, min_density)
            kept_h, kept_kv = k * g, k
            binds_ = k > kept_units(hkv, choice.ratio)
        if binds_:
            binds.add(layer)
        block = heads[heads["head_leader"] == layer]
        for member, role in zip(block.index, block["head_role"]):
            if role == "q":
                out[member] = kept_h * d
            elif role == "k":
                out[member] = kept_kv * d
            elif role == "v":
                out[member] = kept_kv * dv
            elif role == "o":
                inp[member] = kept_h * dv
    return out, inp, binds


def _is_coupled_depthwise(row: pd.Series) -> bool:
    """A depthwise conv whose input and output channels are the same group (pruned together)."""
    return row["kind"] == "depthwise" and int(row["in_channels"]) == int(row["out_channels"])


def input_slices(row: pd.Series) -> tuple[tuple[int, int, int], ...]:
    """``(gid, offset, expand)`` for every channel group feeding the layer of table row ``row``
    (see :mod:`hwsearch.graph`); falls back to ``in_group``/``in_expand`` for tables made
    before the ``in_slices`` column existed."""
    sl = row["in_slices"] if "in_slices" in row.index else None
    if sl is None or isinstance(sl, float):
        ig = int(row["in_group"])
        return ((ig, 0, int(row["in_expand"])),) if ig >= 0 else ()
    return tuple((int(g), int(o), int(e)) for g, o, e in sl)


def channel_segments(table: pd.DataFrame, groups: Mapping, gid: int) -> list[int] | None:
    """Segment id of every channel of group ``gid`` when grouped convolutions constrain it.

    A grouped conv (``1 < groups``, not a plain depthwise) can only lose the same number of
    channels in each of its conv groups, on its output side (it produces ``gid``) and on its
    input side (it consumes ``gid``). The channels of ``gid`` are split into the common
    refinement of all those conv-group boundaries; a pruning decision keeps the same count in
    every segment. Returns ``None`` when no grouped conv touches the group. Raises
    :class:`PlanError` when the boundaries give segments of unequal size (then no balanced
    choice exists).
    """
    g = groups[gid]
    channels = int(g.channels)
    keys: list[list[int]] = [[] for _ in range(channels)]
    constrained = False
    for p in g.producers:
        row = table.loc[p]
        ng = int(row["groups"])
        if ng > 1 and not _is_coupled_depthwise(row):
            per = channels // ng
            for c in range(channels):
                keys[c].append(c // per)
            constrained = True
    for layer in g.consumers:
        if layer not in table.index:
            continue
        row = table.loc[layer]
        ng = int(row["groups"])
        if ng <= 1 or _is_coupled_depthwise(row):
            continue
        per_in = int(row["in_channels"]) // ng
        for sg, off, e in input_slices(row):
            if sg == gid:
                for c in range(channels):
                    keys[c].append((off + c * e) // per_in)
                constrained = True
    if not constrained:
        return None
    ids: dict[tuple[int, ...], int] = {}
    seg = [ids.setdefault(tuple(k), len(ids)) for k in keys]
    sizes = {seg.count(i) for i in ids.values()}
    if len(sizes) > 1:
        raise PlanError(f"channel group of {g.leader!r} meets grouped convolutions whose group boundaries "
                        f"cut it into unequal parts (sizes {sorted(sizes)}); no balanced channel choice "
                        "exists — leave this group dense or use a weight pattern")
    return seg


def _kept_in_group(channels: int, ratio: float, multiple: int, min_density: float, nseg: int,
                   leader: str) -> int:
    """Channels kept in a group whose choice must keep the same count in each of ``nseg``
    equal segments (``nseg`` = 1: unconstrained, see :func:`kept_channels`)."""
    if nseg <= 1:
        return kept_channels(channels, ratio, multiple, min_density)
    if nseg >= channels:
        raise PlanError(f"channel group of {leader!r} cannot be pruned: a grouped convolution has one "
                        "channel per conv group there; leave the group dense")
    step = math.lcm(multiple, nseg)
    if channels <= multiple or channels % step:
        step = nseg
    kept = max(step, int(round(channels * (1.0 - ratio) / step)) * step)
    floor = math.ceil(min_density * channels - 1e-9)
    if kept < floor:
        kept = math.ceil(floor / step) * step
    return int(min(channels, kept))


def resolve(table: pd.DataFrame, groups: Mapping, plan: Plan, *, channel_multiple: int = 8,
            min_density: float = 0.0) -> pd.DataFrame:
    """Concrete per-layer figures of ``plan`` on a layer table (see :func:`hwsearch.graph.analyze`).

    Returns a copy of ``table`` with columns ``pattern``, ``ratio``, ``n``, ``m``, ``block``,
    ``kept_out``, ``kept_in``, ``out_frac``, ``in_frac`` (fractions of channels kept),
    ``weight_density`` (density of the weight-level pattern on the remaining weights),
    ``dense_macs`` (MACs after channel removal), ``dense_weights`` (weights after channel removal),
    ``nnz`` (nonzero weights kept) and ``min_density_binds`` (the ``min_density`` floor raised
    this layer's kept weights or its group's kept channels above what the ratio asks).
    A layer fed by several channel groups (``torch.cat``) loses the pruned columns of each.
    Grouped convolutions keep the same number of channels in every conv group (the kept count
    is rounded to a multiple of the number of segments, see :func:`channel_segments`).
    ``head`` / ``qhead`` choices on an attention block's query projection shrink its q/k/v
    projections' outputs and its output projection's inputs (:func:`head_shapes`); the q/k/v rows
    narrowed so have ``head_pruned`` True.
    Raises :class:`PlanError` for unknown layers, channel ratios on layers that cannot take
    them, head choices off a query projection, grouped convs left unbalanced, and shapes a pattern
    cannot tile.
    """
    unknown = set(plan) - set(table.index)
    if unknown:
        raise PlanError(f"plan names layers not in the model: {sorted(unknown)}; valid layers: "
                        f"{', '.join(table.index)}")
    group_kept: dict[int, int] = {}
    group_binds: dict[int, bool] = {}
    for layer in table.index:
        choice = plan.get_choice(layer)
        if choice.pattern != "channel":
            continue
        gid = int(table.at[layer, "out_group"])
        if gid < 0 or not bool(table.at[layer, "channel_prunable"]):
            why = (getattr(groups.get(gid), "reason", "") if gid >= 0 else "") or \
                "its output channels are the model's output or not traceable"
            raise PlanError(f"layer {layer!r} cannot take channel pruning ({why}); use a weight pattern instead")
        if not bool(table.at[layer, "group_leader"]):
            leader = groups[gid].leader
            raise PlanError(f"layer {layer!r} is coupled with {leader!r} (channel group {gid}); "
                            f"give the channel ratio on {leader!r}")
        c = int(table.at[layer, "out_channels"])
        seg = channel_segments(table, groups, gid)
        nseg = len(set(seg)) if seg is not None else 1
        k = _kept_in_group(c, choice.ratio, channel_multiple, min_density, nseg, layer)
        group_kept[gid] = k
        group_binds[gid] = min_density > 0 and k > _kept_in_group(c, choice.ratio, channel_multiple, 0.0, nseg, layer)

    def removed_frac(gid: int) -> float:
        return 1.0 - group_kept[gid] / int(groups[gid].channels)

    head_out, head_in, head_binds = head_shapes(table, plan, min_density)

    out = table.copy()
    rows = []
    for layer, row in table.iterrows():
        choice = plan.get_choice(layer)
        og = int(row["out_group"])
        in_c, out_c = int(row["in_channels"]), int(row["out_channels"])
        groups_ = int(row["groups"])
        kept_out = head_out.get(layer, group_kept.get(og, out_c))
        of = kept_out / out_c
        slices = [sl for sl in input_slices(row) if sl[0] in group_kept]
        if _is_coupled_depthwise(row):
            kept_in = kept_out
        else:
            kept_in = in_c - sum(int(round(groups[g].channels * removed_frac(g))) * e for g, _, e in slices)
        kept_in = head_in.get(layer, kept_in)
        inf = kept_in / in_c
        if _is_coupled_depthwise(row):
            per_group_in, eff_groups = 1, kept_out
        else:
            if groups_ > 1 and slices:
                per = in_c // groups_
                kept_per_conv_group = [per] * groups_
                for g, off, e in slices:
                    frac = removed_frac(g)
                    for j in range(groups_):
                        n_in_j = sum(1 for c in range(groups[g].channels) if j * per <= off + c * e < (j + 1) * per)
                        kept_per_conv_group[j] -= int(round(n_in_j * frac))
                if len(set(kept_per_conv_group)) > 1:
                    feeders = ", ".join(repr(groups[g].leader) for g, _, _ in input_slices(row))
                    raise PlanError(f"grouped conv {layer!r} (groups={groups_}) would keep unequal input "
                                    f"channels per conv group {kept_per_conv_group}; give the channel groups "
                                    f"feeding it ({feeders}) ratios that remove the same share of every "
                                    "conv group, or leave them dense")
            per_group_in, eff_groups = kept_in // groups_, groups_
        spatial = int(row["macs"]) // max(1, out_c * (in_c // groups_) * int(row["kernel_elems"]))
        dense_macs = spatial * kept_out * per_group_in * int(row["kernel_elems"])
        dense_weights = kept_out * per_group_in * int(row["kernel_elems"])
        pat = patterns.get(choice.pattern)
        cols = per_group_in * int(row["kernel_elems"])
        pat.check(layer, kept_out, cols, choice, channels=per_group_in)
        density = pat.weight_density(kept_out, cols, choice, min_density)
        weight_binds = bool(min_density > 0 and choice.pattern in ("unstructured", "block")
                            and density > pat.weight_density(kept_out, cols, choice, 0.0) + 1e-12)
        rows.append({
            "pattern": choice.pattern, "ratio": choice.ratio, "n": choice.n, "m": choice.m,
            "block": choice.block, "kept_out": kept_out, "kept_in": kept_in, "eff_groups": eff_groups,
            "out_frac": of, "in_frac": inf, "rows2d": kept_out, "cols2d": cols,
            "weight_density": density, "dense_macs": int(dense_macs), "dense_weights": int(dense_weights),
            "nnz": int(round(dense_weights * density)),
            "act_out_bytes_kept": int(round(row["act_out_bytes"] * of)),
            "act_in_bytes_kept": int(round(row["act_in_bytes"] * inf)),
            "min_density_binds": weight_binds or (choice.pattern == "channel" and group_binds.get(og, False))
            or layer in head_binds,
            "head_pruned": layer in head_out,  # outputs narrowed by pruned heads (q, k, v), not by a channel group
        })
    extra = pd.DataFrame(rows, index=table.index)
    for col in extra.columns:
        out[col] = extra[col]
    return out
