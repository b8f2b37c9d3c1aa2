"""The Pareto front of a round's study, what a plan's kernels are, and the front beside its
measurements."""
from __future__ import annotations

import math

import optuna
import pandas as pd

from costmodels.kernels import kernel_keys
from hwsearch.core.budgets import Budgets
from hwsearch.core.plan import Plan
from hwsearch.deploy import speedup_text
from hwsearch.searching.config import DENSE_PLAN, SearchConfig
from targets.spec import TargetSpec

__all__ = ["pareto_front", "front_with_measurements", "closest_to_budgets", "config_key", "kernel_configs"]


def pareto_front(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front of a study, one row per distinct plan, by predicted latency: feasible
    plans only when any trial met the budgets, else the least-violating trials."""
    rows = []
    seen = set()
    best = study.best_trials
    if not best:  # nothing feasible: rank by total violation, then by the objectives
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        viol = lambda t: Budgets.total_violation(t.user_attrs.get("constraints", []))  # noqa: E731
        best = sorted(done, key=lambda t: (viol(t), -t.values[0], t.values[1]))[:5]
    for t in best:
        key = t.user_attrs.get("plan_key")
        if key in seen or key is None:
            continue
        seen.add(key)
        rows.append({"trial": t.number, "plan_key": key, "plan": t.user_attrs["plan"], "accuracy": t.values[0],
                     "predicted_latency_s": t.values[1], "flash_bytes": t.user_attrs.get("flash_bytes"),
                     "sram_bytes": t.user_attrs.get("sram_bytes"),
                     "feasible": Budgets.feasible(t.user_attrs.get("constraints", []))})
    df = pd.DataFrame(rows, columns=["trial", "plan_key", "plan", "accuracy", "predicted_latency_s", "flash_bytes",
                                     "sram_bytes", "feasible"])
    return df.sort_values("predicted_latency_s").reset_index(drop=True)


def front_with_measurements(front: pd.DataFrame, recs: list[dict], target_identity: str) -> pd.DataFrame:
    meas = {r["plan_key"]: r for r in recs if r.get("target") == target_identity and not r.get("error")}
    df = front.copy()
    df["measured_latency_s"] = [meas[k]["latency_s"] if k in meas else math.nan for k in df["plan_key"]]
    df["measured_iqr_s"] = [meas[k].get("latency_iqr_s") if k in meas else math.nan for k in df["plan_key"]]
    df["speedup_vs_fastest"] = [meas[k].get("speedup_vs_fastest", math.nan) if k in meas else math.nan
                                for k in df["plan_key"]]
    df["speedup_same_runtime"] = [meas[k].get("speedup_same_runtime", math.nan) if k in meas else math.nan
                                  for k in df["plan_key"]]
    df["speedup"] = ["= dense" if k == DENSE_PLAN.key else speedup_text(meas[k]) if k in meas else "—"
                     for k in df["plan_key"]]
    df["describe"] = [Plan.from_dict(p).describe() for p in df["plan"]]
    dense = meas.get(DENSE_PLAN.key)
    df.attrs["dense_latency_s"] = dense["latency_s"] if dense else None
    df.attrs["dense_accuracy"] = dense.get("accuracy") if dense else None
    return df


def closest_to_budgets(study: optuna.Study, cfg: SearchConfig) -> str:
    """The smallest predicted latency / flash / SRAM any trial reached, beside each budget."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return "no completed trial"
    keys = {"latency": "predicted_latency_s", "flash": "flash_bytes", "sram": "sram_bytes"}
    best = {name: min(float(t.user_attrs.get(key, math.inf)) for t in done) for name, key in keys.items()}
    return cfg.budgets.closest_text(best) or "no completed trial"


def config_key(resolved: pd.DataFrame) -> tuple:
    """What a plan does to the model (kept channels, pattern, density per layer): plans whose
    ratios round to the same channel counts are one configuration."""
    return tuple((layer, int(r["kept_in"]), int(r["kept_out"]), str(r["pattern"]), round(float(r["weight_density"]), 4))
                 for layer, r in resolved.iterrows())


def kernel_configs(resolved: pd.DataFrame, target: TargetSpec) -> set[tuple[str, str]]:
    """The kernels a plan runs, as ``(layer, kernel key)`` (:func:`costmodels.kernels.kernel_key`:
    shape, kept channels, and the density of a pattern the target accelerates — one that it does
    not accelerate runs the dense kernel of its shape). The cost model's refit uses the same keys."""
    return set(kernel_keys(resolved, target.accelerates).items())
