"""The per-layer search space for a model on a target.

Each layer gets a categorical ``<layer>:pattern`` among the patterns the target can run and the
layer's shape allows, and a ``<layer>:ratio`` in [0, max_ratio] (step 0.05). Channel pruning is
offered only on a channel group's leader (coupled layers follow it), head pruning (``head``,
``qhead``: :mod:`hwsearch.graph_heads`) only on an attention block's query projection. The
layer-collapse guard
is ``min_density``: no layer keeps fewer than that fraction of its weights or channels, and
:meth:`SearchSpace.guard_report` names the layers where it binds.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import optuna

from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.graph import ModelGraph
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import kept_units, resolve

__all__ = ["SearchSpace"]


@dataclass
class SearchSpace:
    graph: ModelGraph
    allowed: dict[str, tuple[str, ...]]
    max_ratio: float = 0.9
    min_density: float = 0.05
    step: float = 0.05
    nm: tuple[int, int] = (2, 4)
    block: tuple[int, int] = (1, 4)
    dropped: dict[str, dict[str, str]] | None = None  # layer -> pattern -> why it is not offered

    @classmethod
    def build(cls, graph: ModelGraph, target, *, patterns_wanted: tuple[str, ...] = ("dense", "unstructured", "channel"),
              max_ratio: float = 0.9, min_density: float = 0.05, nm: tuple[int, int] | None = None,
              block: tuple[int, int] | None = None, cost_model=None, memory_matters: bool = True) -> SearchSpace:
        """Patterns per layer: those wanted, runnable on ``target``, valid for the layer's shape
        and — when ``cost_model`` is given — priced by it (a pattern the model cannot price for
        a layer is not offered, and :attr:`dropped` says why). N:M and block sizes default to the
        target spec's ``[patterns.nm] n, m`` and ``[patterns.block] block``.

        A weight-level pattern (unstructured, N:M, block) is offered only where ``cost_model``
        predicts it lowers the layer's latency when it is sold as a speed-up (GPU 2:4), or when
        ``memory_matters`` is False (no flash or SRAM budget): then a pattern that saves no time
        could only cost accuracy — on ``host-x86`` TVM runs zeros through dense kernels — and
        would take a share of the trials for nothing."""
        nm = nm or (int(target.patterns.get("nm", {}).get("n", 2)), int(target.patterns.get("nm", {}).get("m", 4)))
        block = block or tuple(target.patterns.get("block", {}).get("block", (1, 4)))
        bad = set(patterns_wanted) - set(patterns.names())
        if bad:
            raise PlanError(f"unknown patterns {sorted(bad)}; valid: {', '.join(patterns.names())}")
        if not (0.0 < max_ratio < 1.0):
            raise PlanError(f"max_ratio {max_ratio} out of range: give 0 < max_ratio < 1")
        if not (0.0 <= min_density < 1.0):
            raise PlanError(f"min_density {min_density} out of range: give 0 <= min_density < 1")
        allowed: dict[str, tuple[str, ...]] = {}
        dropped: dict[str, dict[str, str]] = {}
        t = graph.table
        for layer in t.index:
            opts = ["dense"]
            rows, cols = int(t.at[layer, "out_channels"]), int(t.at[layer, "weight_params"]) // int(t.at[layer, "out_channels"])
            for p in patterns_wanted:
                if p == "dense":
                    continue
                if not target.allows(p):
                    dropped.setdefault(layer, {})[p] = f"{target.identity} has no kernel for it"
                    continue
                if p == "channel":
                    if bool(t.at[layer, "group_leader"]) and bool(t.at[layer, "channel_prunable"]):
                        opts.append(p)
                    elif bool(t.at[layer, "group_leader"]):
                        why = getattr(graph.groups.get(int(t.at[layer, "out_group"])), "reason", "")
                        if why:  # refused at analysis (attention heads, a residual stream): say so
                            dropped.setdefault(layer, {})[p] = why
                    continue
                if p in patterns.HEAD_PATTERNS:
                    why = _head_refusal(graph, layer, p)
                    if why is None:
                        opts.append(p)
                    elif why:
                        dropped.setdefault(layer, {})[p] = why
                    continue
                choice = LayerChoice(p, 0.5 if p != "nm" else 0.0, n=nm[0], m=nm[1], block=block)
                try:
                    per_group = int(t.at[layer, "in_channels"]) // int(t.at[layer, "groups"])
                    patterns.get(p).check(layer, rows, cols, choice, channels=per_group)
                    # channel pruning of the producer shrinks cols to multiples of 8: recheck at the floor
                    if int(t.at[layer, "in_group"]) >= 0 and t.at[layer, "kind"] != "depthwise":
                        patterns.get(p).check(layer, rows, 8 * int(t.at[layer, "kernel_elems"]), choice, channels=8)
                except PlanError as exc:
                    dropped.setdefault(layer, {})[p] = str(exc)
                    continue
                if cost_model is not None:
                    cost = cost_model.predict(graph, Plan({layer: choice}), allow_gaps=True)
                    if layer in cost.coverage_gaps:
                        dropped.setdefault(layer, {})[p] = f"the {cost_model.kind} cost model does not cover it"
                        continue
                    if (target.accelerates(p) and target.kind == "gpu") or not memory_matters:
                        # sold as a speed-up, or latency is all that counts: offer it only where
                        # the model predicts a gain
                        dense_s = float(cost_model.predict(graph, Plan(), allow_gaps=True).layers.at[layer, "latency_s"])
                        # at the highest sparsity offered: a sparse kernel that pays at all pays there
                        hi = LayerChoice(p, max_ratio if p != "nm" else 0.0, n=nm[0], m=nm[1], block=block)
                        hi_cost = cost_model.predict(graph, Plan({layer: hi}), allow_gaps=True)
                        sparse_s = float(hi_cost.layers.at[layer, "latency_s"])
                        need = MIN_PREDICTED_GAIN if target.kind == "gpu" else 0.0
                        if not sparse_s < dense_s * (1.0 - need):
                            why = "" if memory_matters else " and no flash/SRAM budget is set (it would only cost accuracy)"
                            under = f" (under {need:.0%})" if need else ""
                            dropped.setdefault(layer, {})[p] = (f"predicted no gain: {sparse_s * 1e6:.2f} µs vs "
                                                                f"{dense_s * 1e6:.2f} µs dense{under}{why}")
                            continue
                opts.append(p)
            allowed[layer] = tuple(opts)
        return cls(graph, allowed, max_ratio, min_density, nm=nm, block=block, dropped=dropped)

    def not_offered_lines(self) -> list[str]:
        """The patterns asked for but not offered on some layers (:attr:`dropped`), for a
        terminal: per pattern one line ``pattern nm not offered on 7 of 7 layers:``, then one
        indented line per distinct reason with the layers it applies to. The reasons are
        shortened (layer name and remedy left out, "predicted no gain: …" without its numbers);
        ``summary.json`` keeps them in full. A last line says so when no layer is left any
        pattern but dense. Empty when every pattern asked for is offered everywhere it can be."""
        by_pattern: dict[str, dict[str, list[str]]] = {}
        for layer, why in (self.dropped or {}).items():
            for pat, reason in why.items():
                by_pattern.setdefault(pat, {}).setdefault(_short_reason(layer, reason), []).append(layer)
        lines = []
        n = len(self.allowed)
        for pat in sorted(by_pattern, key=lambda p: patterns.names().index(p) if p in patterns.names() else 99):
            groups = by_pattern[pat]
            lines.append(f"pattern {pat} not offered on {sum(len(v) for v in groups.values())} of {n} layers:")
            lines += [f"  {', '.join(layers)}: {reason}" for reason, layers in groups.items()]
        if by_pattern and all(opts == ("dense",) for opts in self.allowed.values()):
            lines.append("no layer is left any pattern but dense: this search can only return the dense model")
        return lines

    def suggest(self, trial: optuna.Trial) -> Plan:
        """Sample a plan: one pattern and one ratio parameter per layer (a static space, which
        NSGA-II and TPE both handle)."""
        nm, block = self.nm, self.block
        choices = {}
        for layer, opts in self.allowed.items():
            pat = trial.suggest_categorical(f"{layer}:pattern", list(opts)) if len(opts) > 1 else "dense"
            ratio = trial.suggest_float(f"{layer}:ratio", 0.0, self.max_ratio, step=self.step) if len(opts) > 1 else 0.0
            if pat in patterns.HEAD_PATTERNS:
                pat, ratio = self._whole_heads(layer, pat, ratio)
            if pat != "dense" and (ratio > 0 or pat == "nm"):  # a ratio of 0 removes nothing: dense
                choices[layer] = LayerChoice(pat, ratio, n=nm[0], m=nm[1], block=block)
        return Plan(choices)

    def _whole_heads(self, layer: str, pattern: str, ratio: float) -> tuple[str, float]:
        """A head ratio as the share of whole units it removes (2 KV groups at 0.3 keep both:
        dense; at 0.6 keep one: 0.5), so that a plan says what it removes."""
        h = self.graph.heads[layer]
        units = h.kv_heads if pattern == "head" else h.group_size
        kept = kept_units(units, ratio, self.min_density)
        return ("dense", 0.0) if kept >= units else (pattern, round(1.0 - kept / units, 6))

    def whole_heads(self, plan: Plan) -> Plan:
        """``plan`` with its head choices stated as the whole heads they remove (see
        :meth:`_whole_heads`; a head choice that removes none is dropped)."""
        if not any(c.pattern in patterns.HEAD_PATTERNS for c in plan.values()):
            return plan
        out = {}
        for layer, c in plan.items():
            if c.pattern in patterns.HEAD_PATTERNS and layer in (self.graph.heads or {}):
                pat, r = self._whole_heads(layer, c.pattern, c.ratio)
                if pat != "dense":
                    out[layer] = LayerChoice(pat, r)
            else:
                out[layer] = c
        return Plan(out)

    def params_of(self, plan: Plan) -> dict[str, object]:
        """Optuna parameters that reproduce ``plan`` (for ``study.enqueue_trial``)."""
        params: dict[str, object] = {}
        for layer, opts in self.allowed.items():
            if len(opts) <= 1:
                continue
            c = plan.get_choice(layer)
            params[f"{layer}:pattern"] = c.pattern if c.pattern in opts else "dense"
            params[f"{layer}:ratio"] = min(self.max_ratio, round(c.ratio / self.step) * self.step)
        return params

    def channel_layers(self) -> list[str]:
        """The layers that may lose channels (channel-group leaders offered ``channel``)."""
        return [layer for layer, opts in self.allowed.items() if "channel" in opts]

    def head_layers(self) -> list[str]:
        """The query projections of attention blocks offered ``head``."""
        return [layer for layer, opts in self.allowed.items() if "head" in opts]

    def seed_plans(self, ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)) -> list[Plan]:
        """Uniform structured plans (every layer that may lose channels, and every attention
        block that may lose heads, at one ratio; ratios on the space's grid and at most
        ``max_ratio``): the first generation of a search starts from these classic hand-set points
        as well as from random ones, so the search begins where the uniform baseline ends. Empty
        when no layer may lose channels or heads."""
        layers = [(layer, "channel") for layer in self.channel_layers()] + [(q, "head") for q in self.head_layers()]
        if not layers:
            return []
        out = []
        for r in ratios:
            r = min(self.max_ratio, round(r / self.step) * self.step)
            out.append(self.whole_heads(Plan({layer: LayerChoice(pat, round(r, 6)) for layer, pat in layers})))
        return list({p.key: p for p in out}.values())

    def channel_levels(self, channel_multiple: int = 8) -> dict[str, list[float]]:
        """Per layer that may lose channels: the grid ratios that keep distinct channel counts
        (the smallest ratio of each count, 0 first): the lattice channel plans live on, once
        kept channels are rounded to ``channel_multiple``."""
        out: dict[str, list[float]] = {}
        t, groups = self.graph.table, self.graph.groups
        for layer in self.channel_layers():
            seen: dict[int, float] = {}
            for k in range(int(round(self.max_ratio / self.step)) + 1):
                r = round(k * self.step, 6)
                plan = Plan({layer: LayerChoice("channel", r)}) if r > 0 else Plan()
                res = resolve(t, groups, plan, channel_multiple=channel_multiple, min_density=self.min_density)
                seen.setdefault(int(res.at[layer, "kept_out"]), r)
            out[layer] = sorted(seen.values())
        return out

    def edge_plans(self, price, budget_s: float, *, channel_multiple: int = 8, limit: int = 64,
                   max_lattice: int = 50_000, seed: int = 0, levels: int = 41) -> list[Plan]:
        """Channel plans on the edge of a latency budget: within it (by ``price``, a callable
        from a list of plans to latencies in seconds, e.g. a
        :class:`~costmodels.batch.BatchPricer`'s), while one level less pruning of any single
        layer would exceed it. Accuracy falls as channels go, so the most accurate feasible
        channel plans are among these: a search seeded here spends its trials where the answer
        is (NetAdapt, AMC and HALP likewise aim every step at the budget).

        When the lattice of kept-channel counts (:meth:`channel_levels`) has at most
        ``max_lattice`` points, every point is priced in one batch and the edge is exact; at
        most ``limit`` of its plans are returned (a seeded sample when there are more).
        Otherwise, for ``limit`` seeded random directions (a weight per layer, about 40 % of
        layers left dense) the least pruning along each direction that meets the budget."""
        lv = self.channel_levels(channel_multiple)
        layers = list(lv)
        if not layers or limit <= 0:
            return []
        rng = np.random.default_rng(seed)

        def plan_of(ratios) -> Plan:
            return Plan({layer: LayerChoice("channel", round(float(r), 6)) for layer, r in zip(layers, ratios) if r > 0})

        shape = tuple(len(lv[layer]) for layer in layers)
        if math.prod(shape) <= max_lattice:
            combos = list(itertools.product(*(range(n) for n in shape)))
            plans = [plan_of([lv[layer][i] for layer, i in zip(layers, c)]) for c in combos]
            feas = (np.asarray(price(plans), dtype=float) <= budget_s).reshape(shape)
            edge = feas.copy()
            for ax in range(len(shape)):   # one level less pruning on axis ax must be over the budget
                less = np.ones(shape, dtype=bool)
                sl_to = [slice(None)] * len(shape)
                sl_from = [slice(None)] * len(shape)
                sl_to[ax], sl_from[ax] = slice(1, None), slice(None, -1)
                less[tuple(sl_to)] = ~feas[tuple(sl_from)]
                edge &= less
            flat = np.flatnonzero(edge.ravel())
            if len(flat) > limit:
                flat = np.sort(rng.choice(flat, size=limit, replace=False))
            return [plans[int(i)] for i in flat]
        # too many points to price them all: along random directions
        alphas = np.linspace(0.0, 1.0, levels)
        grid: list[Plan] = []
        for _ in range(limit):
            w = rng.uniform(0.0, 1.0, len(layers)) * (rng.uniform(size=len(layers)) < 0.6)
            if not w.any():
                w[rng.integers(len(layers))] = 1.0
            w = w / w.max()
            for a in alphas:
                grid.append(plan_of(np.round(a * w * self.max_ratio / self.step) * self.step))
        lat = np.asarray(price(grid), dtype=float).reshape(limit, levels)
        out: dict[str, Plan] = {}
        for i in range(limit):
            ok = np.flatnonzero(lat[i] <= budget_s)
            if len(ok):
                p = grid[i * levels + int(ok[0])]
                out.setdefault(p.key, p)
        return list(out.values())

    def neighbours(self, plan: Plan, *, steps: tuple[int, ...] = (1, 2, 3, 4), max_pairs: int = 400,
                   seed: int = 0) -> list[Plan]:
        """Plans one move from ``plan`` on the space's grid: one layer's sparsity up or down by
        each of ``steps`` grid steps (a dense layer takes up any of its patterns; a layer moved
        to ratio 0 becomes dense), or one layer up and another down — a trade of sparsity
        between layers, the move that keeps a plan at its budget while it looks for accuracy.
        Up to 4 steps, because kept channels are rounded to a multiple (8 by default): on a
        64-channel layer one step of 0.05 often keeps the same channels. With many layers a
        seeded sample of ``max_pairs`` trades is taken."""
        import random

        nm, block = self.nm, self.block

        def choice(pat: str, k: int) -> LayerChoice | None:
            return None if pat == "dense" or k <= 0 and pat != "nm" else LayerChoice(
                pat, round(k * self.step, 6) if pat != "nm" else 0.0, n=nm[0], m=nm[1], block=block)

        kmax = int(round(self.max_ratio / self.step))
        up: dict[str, list[LayerChoice | None]] = {}
        down: dict[str, list[LayerChoice | None]] = {}
        for layer, opts in self.allowed.items():
            if len(opts) <= 1:
                continue
            c = plan.get_choice(layer)
            k = int(round(c.ratio / self.step)) if c.pattern != "dense" else 0
            if c.pattern == "dense":
                up[layer] = [choice(p, d) for p in opts if p != "dense" for d in steps if d <= kmax]
                down[layer] = []
            elif c.pattern == "nm":
                up[layer], down[layer] = [], [None]
            else:
                up[layer] = [choice(c.pattern, k + d) for d in steps if k + d <= kmax]
                down[layer] = [choice(c.pattern, k - d) for d in steps if k - d >= 0]
        base = dict(plan.items())

        def with_(changes: dict[str, LayerChoice | None]) -> Plan:
            ch = dict(base)
            for layer, c in changes.items():
                if c is None:
                    ch.pop(layer, None)
                else:
                    ch[layer] = c
            return Plan(ch)

        out = [with_({layer: c}) for layer in up for c in up[layer] + down[layer]]
        pairs = [(i, ci, j, cj) for i in up for ci in up[i] for j in down if j != i for cj in down[j]]
        if len(pairs) > max_pairs:
            pairs = random.Random(seed).sample(pairs, max_pairs)
        out += [with_({i: ci, j: cj}) for i, ci, j, cj in pairs]
        out = [self.whole_heads(p) for p in out]
        return [p for p in {p.key: p for p in out}.values() if p.key != plan.key]

    def guard_report(self, resolved) -> list[str]:
        """Layers where the minimum density (layer-collapse guard) capped the requested ratio."""
        out = []
        for layer, r in resolved.iterrows():
            if bool(r.get("min_density_binds", False)):
                out.append(f"{layer}: {r['pattern']} ratio {r['ratio']:.2f} capped at density {self.min_density:.2f}")
            elif r["pattern"] == "channel" and r["out_frac"] > 1.0 - r["ratio"] + 1e-9 and \
                    r["out_frac"] * r["out_channels"] <= max(self.min_density * r["out_channels"], 8) + 1e-9 and r["ratio"] > 0:
                out.append(f"{layer}: channel ratio {r['ratio']:.2f} kept {int(r['kept_out'])} channels (floor)")
        return out


def _head_refusal(graph: ModelGraph, layer: str, pattern: str) -> str | None:
    """None when ``layer`` may take head pattern ``pattern``; why not ("" for a layer that is no
    attention block's query projection: nothing to report there)."""
    h = (graph.heads or {}).get(layer)
    if h is None:
        return ""
    if h.reason:
        return f"attention heads cannot be pruned: {h.reason}"
    if pattern == "qhead" and h.group_size <= 1:
        return ""  # multi-head attention: 'head' removes single heads already
    return None


# On a GPU, 2:4 (sold as a speed-up) is offered on a layer only when the cost model predicts it
# at least this much faster there: a predicted 0.1 % is a launch-bound layer, not a gain.
MIN_PREDICTED_GAIN = 0.02


def _short_reason(layer: str, reason: str) -> str:
    """A reason of :attr:`SearchSpace.dropped` without the layer's name, the remedy (after
    ';') and the per-layer numbers of a predicted-no-gain verdict, so layers group by it."""
    r = reason.split("; ")[0]
    r = r.replace(f" on {layer!r}", "").replace(f"{layer!r}'s", "the layer's").replace(repr(layer), "the layer")
    r = re.sub(r"'[^']*' \(aten\.(\w+)\.\w+\)", r"\1", r)   # graph node names: one line per kind of reason
    r = re.sub(r"with '[^']*', which", "with a tensor which", r)
    r = re.sub(r"channel group '[^']*'", "another channel group", r)
    return re.sub(r"predicted no gain: \S+ µs vs \S+ µs dense( \(under \d+%\))?", "no predicted speed-up on this target", r)
