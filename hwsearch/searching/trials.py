"""Optuna trials: the sampler, and plans asked, priced in batches and told."""
from __future__ import annotations

from typing import Any

import optuna
from tqdm import tqdm

from hwsearch.core.errors import PlanError
from hwsearch.searching.config import SearchConfig
from hwsearch.searching.evaluator import Evaluator
from hwsearch.space import SearchSpace

__all__ = ["TRIAL_CONSTRAINTS", "make_sampler", "run_trials"]

# Optuna 5 stores constraints on the trial (Trial.set_constraint) and deprecates samplers'
# constraints_func; Optuna 4 has only the latter.
TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def make_sampler(cfg: SearchConfig, constrained: bool) -> optuna.samplers.BaseSampler:
    cons = (lambda t: t.user_attrs.get("constraints", [])) if constrained and not TRIAL_CONSTRAINTS else None
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed, constraints_func=cons, population_size=20)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, constraints_func=cons, multivariate=True)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    raise PlanError(f"unknown sampler {cfg.sampler!r}; valid: nsga2, tpe, random")


def run_trials(study: optuna.Study, space: SearchSpace, ev: Evaluator, pricer: Any, n: int, cfg: SearchConfig,
               show_bars: bool, phase: str | None = None) -> None:
    """``n`` trials through Optuna's ask/tell in batches of one NSGA-II population: the batch's
    plans are priced together by the vectorised :class:`~costmodels.batch.BatchPricer` (the
    fast path; it gives the same numbers as ``CostModel.predict``), then each is evaluated for
    accuracy and told. A plan the model or space rejects is a FAIL trial, not a crash."""
    bar = tqdm(total=n, desc="trials", disable=not show_bars, leave=False)
    batch = 20
    while n > 0:
        trials = [study.ask() for _ in range(min(batch, n))]
        n -= len(trials)
        ready = []
        for t in trials:
            t.set_user_attr("worker", cfg.worker)
            if phase:
                t.set_user_attr("phase", phase)
            try:
                plan = space.suggest(t)
                ready.append((t, plan, ev.decisions(plan)))
            except PlanError as exc:
                t.set_user_attr("error", str(exc))
                study.tell(t, state=optuna.trial.TrialState.FAIL)
                bar.update()
        prices = pricer.price_plans([p for _, p, _ in ready]) if ready else {}
        for i, (t, plan, dec) in enumerate(ready):
            lat = float(prices["latency_s"][i])
            flash, sram = int(prices["flash_bytes"][i]), int(prices["sram_bytes"][i])
            violations = ev.violations(lat, flash, sram)
            t.set_user_attr("plan", plan.to_dict())
            t.set_user_attr("plan_key", plan.key)
            t.set_user_attr("predicted_latency_s", lat)
            t.set_user_attr("latency_std_s", lat * ev.cm.relative_std())
            t.set_user_attr("flash_bytes", flash)
            t.set_user_attr("sram_bytes", sram)
            t.set_user_attr("constraints", violations)
            if TRIAL_CONSTRAINTS:
                for name, v in zip(ev.budget_names(), violations):
                    t.set_constraint(name, v)
            guard = space.guard_report(dec.resolved)
            if guard:
                t.set_user_attr("collapse_guard", guard)
            study.tell(t, [ev.accuracy(dec), lat])
            bar.update()
    bar.close()
