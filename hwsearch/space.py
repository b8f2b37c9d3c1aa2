"""The per-layer search space for a model on a target.

Each layer gets a categorical ``<layer>:pattern`` among the patterns the target can run and the
layer's shape allows, and a ``<layer>:ratio`` in [0, max_ratio] (step 0.05). Channel pruning is
offered only on a channel group's leader (coupled layers follow it). The layer-collapse guard
is ``min_density``: no layer keeps fewer than that fraction of its weights or channels, and
:meth:`SearchSpace.guard_report` names the layers where it binds.
"""
from __future__ import annotations

from dataclasses import dataclass

import optuna

from hwsearch import patterns
from hwsearch.errors import PlanError
from hwsearch.graph import ModelGraph
from hwsearch.plan import LayerChoice, Plan, PATTERN_NAMES

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
              block: tuple[int, int] | None = None, cost_model=None) -> SearchSpace:
        """Patterns per layer: those wanted, runnable on ``target``, valid for the layer's shape
        and — when ``cost_model`` is given — priced by it (a pattern the model cannot price for
        a layer is not offered, and :attr:`dropped` says why). N:M and block sizes default to the
        target spec's ``[patterns.nm] n, m`` and ``[patterns.block] block``."""
        nm = nm or (int(target.patterns.get("nm", {}).get("n", 2)), int(target.patterns.get("nm", {}).get("m", 4)))
        block = block or tuple(target.patterns.get("block", {}).get("block", (1, 4)))
        bad = set(patterns_wanted) - set(PATTERN_NAMES)
        if bad:
            raise PlanError(f"unknown patterns {sorted(bad)}; valid: {', '.join(PATTERN_NAMES)}")
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
                if p == "dense" or not target.allows(p):
                    continue
                if p == "channel":
                    if bool(t.at[layer, "group_leader"]) and bool(t.at[layer, "channel_prunable"]):
                        opts.append(p)
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
                    if target.accelerates(p) and target.kind == "gpu":
                        # sold as a speed-up: offer it only where the model predicts one
                        dense_s = float(cost_model.predict(graph, Plan(), allow_gaps=True).layers.at[layer, "latency_s"])
                        sparse_s = float(cost.layers.at[layer, "latency_s"])
                        if not sparse_s < dense_s:
                            dropped.setdefault(layer, {})[p] = (f"predicted no gain: {sparse_s * 1e6:.2f} µs vs "
                                                                f"{dense_s * 1e6:.2f} µs dense")
                            continue
                opts.append(p)
            allowed[layer] = tuple(opts)
        return cls(graph, allowed, max_ratio, min_density, nm=nm, block=block, dropped=dropped)

    def suggest(self, trial: optuna.Trial) -> Plan:
        """Sample a plan: one pattern and one ratio parameter per layer (a static space, which
        NSGA-II and TPE both handle)."""
        nm, block = self.nm, self.block
        choices = {}
        for layer, opts in self.allowed.items():
            pat = trial.suggest_categorical(f"{layer}:pattern", list(opts)) if len(opts) > 1 else "dense"
            ratio = trial.suggest_float(f"{layer}:ratio", 0.0, self.max_ratio, step=self.step) if len(opts) > 1 else 0.0
            if pat != "dense":
                choices[layer] = LayerChoice(pat, ratio, n=nm[0], m=nm[1], block=block)
        return Plan(choices)

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
