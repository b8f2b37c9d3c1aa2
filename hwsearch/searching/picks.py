"""Which of a round's front plans are measured: near dense accuracy, not measured yet, not a
configuration already measured, spread along the front and chosen for what they teach."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd

from hwsearch.core.plan import Plan
from hwsearch.deploy import SITTING_RUNTIMES
from hwsearch.graph import ModelGraph
from hwsearch.searching.config import DENSE_PLAN, SearchConfig
from hwsearch.searching.evaluator import Evaluator
from hwsearch.searching.front import kernel_configs
from hwsearch.searching.refit import samples_from_records
from targets.spec import TargetSpec

__all__ = ["round_picks", "pick"]


def round_picks(study: optuna.Study, front: pd.DataFrame, recs: list[dict], ev: Evaluator, graph: ModelGraph,
                target: TargetSpec, cfg: SearchConfig) -> list[tuple[Plan, float]]:
    """The round's plans to measure, with their accuracy, less those measured already.

    The picks are stored on the study (``to_measure:<worker>``) before anything is measured, so a
    resumed worker measures exactly the plans it chose, never a new selection."""
    measured_keys = {r["plan_key"] for r in recs if r.get("target") == target.identity}
    pick_key = f"to_measure:{cfg.worker}"
    if pick_key not in study.user_attrs:
        picks = _select(front, recs, measured_keys, ev, graph, target, cfg)
        study.set_user_attr(pick_key, [{"plan": p.to_dict(), "accuracy": a} for p, a in picks])
    todo = [(Plan.from_dict(d["plan"]), d["accuracy"]) for d in study.user_attrs[pick_key]]
    return [(p, a) for p, a in todo if p.key not in measured_keys]


def _select(front: pd.DataFrame, recs: list[dict], measured_keys: set[str], ev: Evaluator, graph: ModelGraph,
            target: TargetSpec, cfg: SearchConfig) -> list[tuple[Plan, float]]:
    dense_acc = ev.accuracy(ev.decisions(DENSE_PLAN))
    # a sitting measures the dense model itself, beside the plans
    sitting = target.backend in SITTING_RUNTIMES
    picks = [] if DENSE_PLAN.key in measured_keys or sitting else [(DENSE_PLAN, dense_acc)]
    unmeasured = front[~front["plan_key"].isin(measured_keys)]
    if sitting:
        unmeasured = _new_configurations(unmeasured, recs, ev, target)
    useful = unmeasured[unmeasured["accuracy"] >= dense_acc - cfg.max_accuracy_drop]
    if len(useful) < cfg.measure_top_k:
        # too few plans near dense accuracy: top up with the most accurate of the rest,
        # so every round still measures (and teaches the model) k plans
        rest = unmeasured.drop(useful.index).sort_values("accuracy", ascending=False)
        useful = pd.concat([useful, rest.head(cfg.measure_top_k - len(useful))]).sort_values("predicted_latency_s")
    seen = set().union(*[kernel_configs(s.resolved, target) for s in samples_from_records(graph, recs, cfg)]
                       or [set()])

    def novelty(plan: Plan) -> int:
        return len(kernel_configs(ev.decisions(plan).resolved, target) - seen)

    return picks + pick(useful, measured_keys, cfg.measure_top_k, novelty)


def _new_configurations(unmeasured: pd.DataFrame, recs: list[dict], ev: Evaluator,
                        target: TargetSpec) -> pd.DataFrame:
    """A plan that runs the dense model's kernels, or those of a plan measured already, needs no
    measurement (it would only measure noise); and one plan per configuration."""
    def kernels(p: dict) -> frozenset:
        return frozenset(kernel_configs(ev.decisions(Plan.from_dict(p)).resolved, target))

    known = {kernels(DENSE_PLAN.to_dict())} | {kernels(r["plan"]) for r in recs
                                               if r.get("target") == target.identity and r.get("plan")}
    keep = []
    for p in unmeasured["plan"]:
        k = kernels(p)
        keep.append(k not in known)
        known.add(k)
    return unmeasured.loc[np.array(keep, dtype=bool)]


def pick(front: pd.DataFrame, measured: set[str], k: int,
         novelty: Callable[[Plan], int] | None = None) -> list[tuple[Plan, float]]:
    """Up to ``k`` unmeasured front plans: the front (by predicted latency) is cut into ``k``
    equal runs — merit spread from the most accurate to the fastest end — and in each run the
    plan with the most kernels the cost model has never seen measured (``novelty``, its
    uncertainty) is taken, so each round's measurements teach the model most."""
    cand = front[~front["plan_key"].isin(measured)].reset_index(drop=True)
    if k <= 0 or cand.empty:
        return []
    plans = [Plan.from_dict(p) for p in cand["plan"]]
    nov = [novelty(p) if novelty else 0 for p in plans]
    picks = []
    for run in np.array_split(np.arange(len(cand)), min(k, len(cand))):
        centre = run[len(run) // 2]
        best = max(run, key=lambda i: (nov[i], -abs(i - centre)))
        picks.append((plans[best], float(cand.iloc[best]["accuracy"])))
    return picks
