"""Local search around the most accurate feasible plans, after the sampler's trials."""
from __future__ import annotations

from typing import Any

import optuna

from hwsearch.core.budgets import Budgets
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan
from hwsearch.searching.config import SearchConfig
from hwsearch.searching.evaluator import Evaluator
from hwsearch.searching.front import config_key
from hwsearch.searching.trials import run_trials
from hwsearch.space import SearchSpace

__all__ = ["polish"]


def polish(study: optuna.Study, space: SearchSpace, ev: Evaluator, pricer: Any,
           cfg: SearchConfig) -> tuple[float, float, int] | None:
    """Local search after the sampler's trials, when budgets are set (a memetic step): NSGA-II
    spreads its trials along the whole accuracy/latency front, while a user with a budget wants
    the most accurate plan *at* the budget. From the most accurate feasible plans, evaluate their
    feasible neighbours on the grid (:meth:`SearchSpace.neighbours`: one layer's sparsity up or
    down, or a trade between two layers), priced first in one batch, configurations already
    tried skipped, the 16 nearest the budget first; repeat from the new best ones until two
    batches bring no gain, up to ``cfg.polish_trials`` trials per worker and round. The trials
    go through the study (enqueued, then asked and told like any other, tagged
    ``phase=polish``), so a resumed worker continues the count. Returns (best accuracy before, after, trials run), or None when
    the study has no feasible plan to start from or the local search has already run."""
    def mine_polish() -> int:
        return sum(1 for t in study.trials if t.user_attrs.get("worker") == cfg.worker
                   and t.user_attrs.get("phase") == "polish")

    def feasible(t: optuna.trial.FrozenTrial) -> bool:
        return (t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("plan") is not None
                and Budgets.feasible(t.user_attrs.get("constraints", [])))

    left = cfg.polish_trials - mine_polish()
    ok = sorted((t for t in study.trials if feasible(t)), key=lambda t: (-t.values[0], t.values[1]))
    if left <= 0 or not ok:
        return None
    start = ok[0].values[0]
    best = start
    n_run = stale = 0
    seen = {config_key(ev.decisions(Plan.from_dict(t.user_attrs["plan"])).resolved)
            for t in study.trials if t.user_attrs.get("plan") is not None}
    while left > 0:
        ok = sorted((t for t in study.trials if feasible(t)), key=lambda t: (-t.values[0], t.values[1]))
        cands: dict[tuple, Plan] = {}
        for t in ok[:3]:
            for p in space.neighbours(Plan.from_dict(t.user_attrs["plan"]), seed=cfg.seed + t.number):
                try:
                    key = config_key(ev.decisions(p).resolved)
                except PlanError:
                    continue
                if key not in seen and key not in cands:
                    cands[key] = p
        if not cands:
            break
        keys, plans = list(cands), list(cands.values())
        priced = pricer.price_plans(plans)
        viol = [max(ev.violations(float(priced["latency_s"][i]), int(priced["flash_bytes"][i]),
                                  int(priced["sram_bytes"][i])) or [0.0]) for i in range(len(plans))]
        # feasible ones, nearest the budget first (the accuracy is where the budget is spent)
        order = sorted((v, i) for i, v in enumerate(viol) if v <= 0)
        chosen = [i for _, i in order[::-1][:min(left, 16)]]
        if not chosen:
            break
        batch = [plans[i] for i in chosen]
        seen.update(keys[i] for i in chosen)
        for p in batch:
            study.enqueue_trial(space.params_of(p))
        run_trials(study, space, ev, pricer, len(batch), cfg, False, phase="polish")
        left -= len(batch)
        n_run += len(batch)
        new_best = max(t.values[0] for t in study.trials if feasible(t))
        stale = stale + 1 if new_best <= best else 0
        if stale >= 2:  # two batches without a gain: the neighbourhood is spent
            break
        best = max(best, new_best)
    return start, best, n_run
