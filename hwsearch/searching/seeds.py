"""Where round 1 starts: a NetAdapt-style greedy plan and channel plans on the budget's edge
(beside the space's uniform channel plans and the sampler's random ones)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import costmodels
from hwsearch import baselines
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan
from hwsearch.graph import ModelGraph
from hwsearch.searching.config import SearchConfig
from hwsearch.searching.evaluator import Evaluator
from hwsearch.searching.front import config_key
from hwsearch.space import SearchSpace

__all__ = ["greedy_seeds", "edge_seeds"]

log = logging.getLogger(__name__)


def greedy_seeds(graph: ModelGraph, ev: Evaluator, cm: costmodels.CostModel, cfg: SearchConfig,
                 say: Callable[[str], None]) -> list[Plan]:
    """With a latency budget and ``cfg.greedy_seed``: the last plans of a NetAdapt-style greedy
    channel pruning down to the budget (:func:`hwsearch.baselines.netadapt`, priced by ``cm``,
    scored by ``ev``; a few seconds), to start round 1 from. A greedy path is strong near a
    budget and NSGA-II is strong at recombining: the search starts where the greedy ends, so it
    cannot do worse than it on the cost model. Empty when there is no budget, nothing to prune
    or the greedy fails."""
    if not cfg.greedy_seed or cfg.latency_budget_s is None:
        return []
    try:
        run = baselines.netadapt(graph, ev, cm, cfg.latency_budget_s, step=0.05)
    except PlanError as exc:
        log.info("greedy seed skipped: %s", exc)
        return []
    tail = [p for p in run.plans[-3:] if p.choices]
    if tail:
        last = run.table.iloc[-1]
        say(f"greedy seed: {len(run.plans) - 1} NetAdapt-style steps in {run.seconds:.1f} s, last plan predicted "
            f"{last['predicted_latency_s'] * 1e6:.1f} µs, accuracy {last['accuracy']:.4f}")
    return tail


def edge_seeds(space: SearchSpace, ev: Evaluator, pricer: Any, cfg: SearchConfig,
               say: Callable[[str], None]) -> list[Plan]:
    """With a latency budget: up to ``cfg.edge_seeds`` channel plans on the budget's edge
    (:meth:`SearchSpace.edge_plans`, priced by the round's model; every one of them when the
    kept-channel lattice is small), one per configuration, to start round 1 from. Empty
    without a budget."""
    if cfg.latency_budget_s is None or cfg.edge_seeds <= 0:
        return []
    # at most half the round's trials: the sampler keeps the rest
    n = min(cfg.edge_seeds, max(1, cfg.trials // 2))
    plans = space.edge_plans(lambda ps: pricer.price_plans(ps)["latency_s"], cfg.latency_budget_s,
                             channel_multiple=cfg.channel_multiple, limit=n, seed=cfg.seed)
    seen: set[tuple] = set()
    out = []
    for p in plans:
        key = config_key(ev.decisions(p).resolved)
        if key not in seen:
            seen.add(key)
            out.append(p)
    if out:
        say(f"edge seeds: {len(out)} distinct plans on the edge of the {cfg.latency_budget_s * 1e6:.1f} µs budget")
    return out
