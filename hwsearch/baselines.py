"""Baselines the search is compared with, run through the search's own harness.

Every baseline produces :class:`~hwsearch.core.plan.Plan` objects; :func:`evaluate_plans` scores
them exactly as a search trial is scored — accuracy by :class:`hwsearch.searching.Evaluator`
(``prune.decide`` + ``prune.masked_state``, or its short fine-tune when configured), predicted
cost by the evaluator's cost model — so a comparison differs only in how plans are chosen.
Measured latency comes from :func:`hwsearch.measure.measure_model` on the folded plan, as
for the search's winners (see ``studies/baselines``).

* :func:`uniform` — the same ratio and pattern on every layer that can take it;
* :func:`global_magnitude` — unstructured, one global magnitude threshold over all layers
  (the minimum density respected), via :func:`hwsearch.prune.global_plan`;
* :func:`netadapt` — NetAdapt-style greedy channel pruning (Yang et al., ECCV 2018) driven by
  the cost model: each iteration shrinks each channel group just enough to cut the predicted
  latency by a step, keeps the candidate that loses least accuracy, and repeats until a
  predicted-latency budget is met; returns the whole trajectory;
* :func:`random_search` — plans drawn uniformly from the search's :class:`SearchSpace`
  (optionally only those the cost model prices within a budget), deterministic given a seed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from costmodels.base import CostModel
from costmodels.batch import PATTERN_CODES, BatchPricer
from hwsearch.core import patterns as _patterns
from hwsearch import prune
from hwsearch.core.errors import PlanError
from hwsearch.graph import ModelGraph
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import channel_segments
from hwsearch.space import SearchSpace

__all__ = ["BaselineRun", "PlanEvaluator", "uniform", "global_magnitude", "netadapt", "random_search",
           "evaluate_plans", "COLUMNS"]

log = logging.getLogger(__name__)

#: Columns of :attr:`BaselineRun.table` (netadapt adds its trajectory columns).
COLUMNS = ["method", "step", "plan_key", "plan", "describe", "accuracy", "predicted_latency_s", "flash_bytes",
           "sram_bytes", "dense_macs", "nonzero_macs", "error"]


class PlanEvaluator(Protocol):
    """What the baselines need from :class:`hwsearch.searching.Evaluator`: its config
    (``channel_multiple``, ``min_density``), its cost model ``cm`` and target, and the two
    scoring calls."""

    cfg: Any
    cm: CostModel
    target: Any

    def decisions(self, plan: Plan) -> prune.Decisions: ...

    def accuracy(self, dec: prune.Decisions) -> float: ...

    def cost(self, plan: Plan, dec: prune.Decisions) -> Any: ...


@dataclass(frozen=True)
class BaselineRun:
    """Plans one baseline produced and how the harness scored them.

    ``table`` has one row per plan (:data:`COLUMNS`; accuracy as a fraction 0..1, latency in
    seconds, memory in bytes, MACs per inference: ``dense_macs`` after channel removal,
    ``nonzero_macs`` also without the MACs of zeroed weights). For :func:`netadapt` it is the
    trajectory (row 0 the starting plan) with ``layer``, ``kept_before``, ``kept_after``,
    ``candidates`` and ``seconds``; ``met`` says whether its budget was reached.
    """

    method: str
    plans: tuple[Plan, ...]
    table: pd.DataFrame
    met: bool | None = None
    seconds: float = 0.0

    @property
    def trajectory(self) -> pd.DataFrame:
        return self.table

    def best_within(self, latency_budget_s: float, *, column: str = "predicted_latency_s") -> pd.Series | None:
        """The most accurate row whose ``column`` is within the budget (ties: the faster), or
        None when no plan meets it."""
        ok = self.table[(self.table["error"].isna()) & (self.table[column] <= latency_budget_s)]
        if ok.empty:
            return None
        return ok.sort_values(["accuracy", column], ascending=[False, True]).iloc[0]


# ---- plan makers ---------------------------------------------------------------------------------
def _channel_leaders(graph: ModelGraph) -> list[str]:
    t = graph.table
    out = []
    for layer in t.index:
        if not (bool(t.at[layer, "group_leader"]) and bool(t.at[layer, "channel_prunable"])):
            continue
        try:
            seg = channel_segments(t, graph.groups, int(t.at[layer, "out_group"]))
        except PlanError:
            continue
        if seg is not None and len(set(seg)) >= int(t.at[layer, "out_channels"]):
            continue
        out.append(layer)
    return out


def uniform(graph: ModelGraph, ratio: float, pattern: str = "unstructured", *, nm: tuple[int, int] = (2, 4),
            block: tuple[int, int] = (1, 4), target: Any = None) -> Plan:
    """The same ``pattern`` at the same ``ratio`` (fraction removed) on every layer that can take it.

    ``channel``: every prunable channel-group leader (coupled layers follow it; the output
    layer keeps its channels). ``unstructured``: every layer. ``nm`` / ``block``: every layer
    whose weight view they tile (the ratio of ``nm`` is ``1 - n/m``). With ``target``, a
    pattern the target cannot run raises. Raises :class:`PlanError` for an unknown pattern or
    a ratio outside [0, 1).
    """
    if pattern not in _patterns.names():
        raise PlanError(f"unknown pattern {pattern!r}; valid: {', '.join(_patterns.names())}")
    if target is not None and not target.allows(pattern):
        raise PlanError(f"target {target.identity} has no kernel for {pattern!r}; choose one of "
                        f"{[p for p in _patterns.names() if target.allows(p)]}")
    if pattern == "dense":
        return Plan()
    t = graph.table
    layers = _channel_leaders(graph) if pattern == "channel" else list(t.index)
    choices = {}
    pat = _patterns.get(pattern)
    for layer in layers:
        choice = LayerChoice(pattern, ratio, n=nm[0], m=nm[1], block=block)
        rows = int(t.at[layer, "out_channels"])
        cols = int(t.at[layer, "weight_params"]) // rows
        try:
            pat.check(layer, rows, cols, choice)
        except PlanError:
            log.info("uniform %s: %s left dense (%dx%d weight view does not take it)", pattern, layer, rows, cols)
            continue
        choices[layer] = choice
    return Plan(choices)


def global_magnitude(graph: ModelGraph, sparsity: float, *, min_density: float = 0.0) -> Plan:
    """Unstructured plan from one global magnitude threshold removing ``sparsity`` (fraction)
    of all prunable weights; every layer keeps at least ``min_density`` of its weights (the
    threshold is lowered over the others so the total still meets ``sparsity``). Decide and
    evaluate it with the same ``min_density``. Raises :class:`PlanError` as
    :func:`hwsearch.prune.global_plan` does."""
    return prune.global_plan(graph, sparsity, criterion="magnitude", min_density=min_density)


# ---- scoring -------------------------------------------------------------------------------------
def _score(evaluator: PlanEvaluator, plan: Plan, method: str, step: int) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "step": step, "plan_key": plan.key, "plan": plan.to_dict(),
                           "describe": plan.describe(), "accuracy": math.nan, "predicted_latency_s": math.nan,
                           "flash_bytes": -1, "sram_bytes": -1, "dense_macs": -1, "nonzero_macs": -1, "error": None}
    try:
        dec = evaluator.decisions(plan)
    except PlanError as exc:
        row["error"] = str(exc)
        return row
    cost = evaluator.cost(plan, dec)
    res = dec.resolved
    row.update(accuracy=float(evaluator.accuracy(dec)), predicted_latency_s=float(cost.latency_s),
               flash_bytes=int(cost.flash_bytes), sram_bytes=int(cost.sram_bytes),
               dense_macs=int(res["dense_macs"].sum()),
               nonzero_macs=int(round(float((res["dense_macs"] * res["weight_density"]).sum()))))
    return row


def evaluate_plans(evaluator: PlanEvaluator, plans: list[Plan], *, method: str) -> BaselineRun:
    """Score ``plans`` as search trials are scored (accuracy, predicted cost, MACs); a plan the
    model cannot take is a row with ``error`` set, not an exception."""
    t0 = time.perf_counter()
    rows = [_score(evaluator, p, method, i) for i, p in enumerate(plans)]
    return BaselineRun(method, tuple(plans), pd.DataFrame(rows, columns=COLUMNS), seconds=time.perf_counter() - t0)


# ---- NetAdapt ------------------------------------------------------------------------------------
def netadapt(graph: ModelGraph, evaluator: PlanEvaluator, cost_model: CostModel, target_latency_s: float,
             step: float = 0.05, *, step_decay: float = 1.0, start: Plan | None = None,
             max_iterations: int = 200) -> BaselineRun:
    """NetAdapt-style greedy channel pruning to a predicted-latency budget.

    Starting from ``start`` (default dense), each iteration asks for a latency cut of
    ``step`` × the starting plan's predicted latency (× ``step_decay`` per iteration, NetAdapt's
    decaying schedule). For every prunable channel group it takes the *largest* kept channel
    count (on the rounding lattice of ``evaluator.cfg.channel_multiple`` and ``min_density``)
    whose predicted latency — by ``cost_model``, all candidates priced in one
    :class:`BatchPricer` call — makes that cut; groups that cannot make it sit the iteration
    out, and when none can, each group offers its largest achievable cut instead (so the
    greedy continues with smaller steps near the floor). Each candidate's accuracy is
    ``evaluator.accuracy`` (masked evaluation, or its short fine-tune when configured — the
    search's harness); the most accurate wins (ties: the faster). Stops when the predicted
    latency is within ``target_latency_s`` (seconds), when no group can shrink further, or
    after ``max_iterations``.

    Returns a :class:`BaselineRun` whose table is the trajectory (row 0: the start) and whose
    ``met`` says whether the budget was reached. Raises :class:`PlanError` for a step outside
    (0, 1) or a start plan with non-channel patterns.
    """
    if not 0.0 < step < 1.0:
        raise PlanError(f"step {step!r} out of range: give the latency cut per iteration as a fraction "
                        "of the starting latency, 0 < step < 1")
    t_start = time.perf_counter()
    cfg = evaluator.cfg
    pricer = BatchPricer(graph, cost_model.target, cost_model, channel_multiple=int(cfg.channel_multiple),
                         min_density=float(cfg.min_density))
    layers = pricer.layers
    col = {n: j for j, n in enumerate(layers)}
    leaders = pricer.channel_layers
    plan = start if start is not None else Plan()
    if any(c.pattern not in ("dense", "channel") for c in plan.values()):
        raise PlanError("netadapt prunes channels only: give a start plan with channel (or dense) choices")
    codes0, ratios0 = pricer.plans_to_arrays([plan])
    base = pricer.price(codes0, ratios0, details=True)
    if not base["valid"][0]:
        raise PlanError(f"start plan {plan.describe()} is not valid for this model")
    lat = float(base["latency_s"][0])
    kept = {ld: int(base["kept_out"][0, col[ld]]) for ld in leaders}
    cut = step * lat

    def traj_row(it: int, p: Plan, layer: str | None, before: int | None, after: int | None, n_cand: int,
                 secs: float) -> dict[str, Any]:
        r = _score(evaluator, p, "netadapt", it)
        r.update(layer=layer, kept_before=before, kept_after=after, candidates=n_cand, seconds=secs)
        return r

    rows = [traj_row(0, plan, None, None, None, 0, 0.0)]
    plans = [plan]
    it = 0
    while lat > target_latency_s and it < max_iterations:
        it += 1
        t_it = time.perf_counter()
        goal = lat - cut
        # every smaller kept count of every group, as ratios; priced in one batch
        cand_codes, cand_ratios, owner = [], [], []
        for ld in leaders:
            c = int(graph.table.at[ld, "out_channels"])
            for k in range(kept[ld] - 1, 0, -1):
                codes = codes0[0].copy()
                ratios = ratios0[0].copy()
                codes[col[ld]] = PATTERN_CODES["channel"]
                ratios[col[ld]] = round(1.0 - k / c, 6)
                cand_codes.append(codes)
                cand_ratios.append(ratios)
                owner.append(ld)
        if not cand_codes:
            break
        priced = pricer.price(np.array(cand_codes), np.array(cand_ratios), details=True)
        best_per_layer: dict[str, int] = {}   # layer -> candidate index (largest kept meeting the goal)
        fallback: dict[str, int] = {}         # layer -> candidate index with the largest cut
        for i, ld in enumerate(owner):
            if not priced["valid"][i]:
                continue
            k_new = int(priced["kept_out"][i, col[ld]])
            li = float(priced["latency_s"][i])
            if k_new >= kept[ld] or li >= lat:
                continue
            if li <= goal and (ld not in best_per_layer or k_new > int(priced["kept_out"][best_per_layer[ld], col[ld]])):
                best_per_layer[ld] = i
            if ld not in fallback or li < float(priced["latency_s"][fallback[ld]]):
                fallback[ld] = i
        chosen = best_per_layer or fallback
        if not chosen:
            log.info("netadapt: no channel group can lower the predicted latency below %.3g µs", lat * 1e6)
            break
        scored = []
        for ld, i in chosen.items():
            cand_plan = pricer.arrays_to_plans(cand_codes[i][None, :], cand_ratios[i][None, :])[0]
            dec = evaluator.decisions(cand_plan)
            acc = float(evaluator.accuracy(dec))
            scored.append((acc, -float(priced["latency_s"][i]), ld, i, cand_plan))
        acc, neg_lat, ld, i, new_plan = max(scored, key=lambda s: (s[0], s[1]))
        before, after = kept[ld], int(priced["kept_out"][i, col[ld]])
        kept[ld] = after
        lat = -neg_lat
        codes0, ratios0 = cand_codes[i][None, :], cand_ratios[i][None, :]
        plans.append(new_plan)
        rows.append(traj_row(it, new_plan, ld, before, after, len(chosen), time.perf_counter() - t_it))
        log.info("netadapt %d: %s %d -> %d channels, predicted %.3g µs, accuracy %.4f (%d candidates)",
                 it, ld, before, after, lat * 1e6, acc, len(chosen))
        cut *= step_decay
    table = pd.DataFrame(rows, columns=COLUMNS + ["layer", "kept_before", "kept_after", "candidates", "seconds"])
    met = bool(lat <= target_latency_s)
    if not met:
        log.warning("netadapt stopped at predicted %.3g µs, above the budget %.3g µs", lat * 1e6,
                    target_latency_s * 1e6)
    return BaselineRun("netadapt", tuple(plans), table, met=met, seconds=time.perf_counter() - t_start)


# ---- random search -------------------------------------------------------------------------------
def random_search(space: SearchSpace, evaluator: PlanEvaluator, n: int, seed: int = 0, *,
                  latency_budget_s: float | None = None, max_draws: int = 100_000,
                  nm: tuple[int, int] | None = None, block: tuple[int, int] | None = None) -> BaselineRun:
    """``n`` plans drawn uniformly from ``space`` (per layer: a pattern among its allowed ones,
    a ratio on its grid ``0, step, …, max_ratio`` — the distribution of
    :meth:`SearchSpace.suggest` under Optuna's random sampler), scored like search trials.
    N:M and block shapes default to the space's (``space.nm`` / ``space.block``).

    Plans ``resolve`` refuses are redrawn. With ``latency_budget_s`` only plans the
    evaluator's cost model prices within it are kept (drawn in batches and priced with
    :class:`BatchPricer`; at most ``max_draws`` draws — fewer than ``n`` plans come back, with
    a warning, when the budget is that hard). Deterministic given ``seed``.
    """
    if n < 1:
        raise PlanError(f"n must be >= 1, got {n}")
    t0 = time.perf_counter()
    nm = tuple(nm or getattr(space, "nm", (2, 4)))
    block = tuple(block or getattr(space, "block", (1, 4)))
    rng = np.random.default_rng(seed)
    pricer = BatchPricer(space.graph, evaluator.cm.target, evaluator.cm,
                         channel_multiple=int(evaluator.cfg.channel_multiple),
                         min_density=float(evaluator.cfg.min_density), nm=nm, block=block)
    layers = pricer.layers
    nsteps = int(round(space.max_ratio / space.step))
    opts = [tuple(space.allowed.get(layer, ("dense",))) for layer in layers]
    chosen_codes: list[np.ndarray] = []
    chosen_ratios: list[np.ndarray] = []
    draws = 0
    batch = max(64, 4 * n)
    while len(chosen_codes) < n and draws < max_draws:
        size = min(batch, max_draws - draws)
        codes = np.zeros((size, len(layers)), dtype=np.int64)
        ratios = np.zeros((size, len(layers)))
        for j, o in enumerate(opts):
            if len(o) <= 1:
                continue
            pick = rng.integers(0, len(o), size=size)
            codes[:, j] = np.array([PATTERN_CODES[p] for p in o])[pick]
            ratios[:, j] = np.round(rng.integers(0, nsteps + 1, size=size) * space.step, 6)
        ratios = np.where(codes == PATTERN_CODES["dense"], 0.0, ratios)
        draws += size
        priced = pricer.price(codes, ratios)
        keep = priced["valid"].copy()
        if latency_budget_s is not None:
            keep &= priced["latency_s"] <= latency_budget_s
        for i in np.nonzero(keep)[0]:
            if len(chosen_codes) < n:
                chosen_codes.append(codes[i])
                chosen_ratios.append(ratios[i])
    if len(chosen_codes) < n:
        log.warning("random search: %d of %d plans within the budget after %d draws", len(chosen_codes), n, draws)
    plans = pricer.arrays_to_plans(np.array(chosen_codes).reshape(-1, len(layers)),
                                   np.array(chosen_ratios).reshape(-1, len(layers)))
    run = evaluate_plans(evaluator, plans, method="random")
    return BaselineRun("random", run.plans, run.table, seconds=time.perf_counter() - t0)
