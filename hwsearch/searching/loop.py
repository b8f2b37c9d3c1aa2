"""The refine loop: search on the cost model → measure the Pareto winners → refit → repeat.

Round r is the Optuna study ``<study>-round<r>`` in one storage (a SQLite file in the output
directory by default; any Optuna storage URL works). Trials are multi-objective (accuracy up,
predicted latency down) with the budgets as constraints (feasible plans first); round 1 starts
from uniform channel plans (and, with a latency budget, a NetAdapt-style greedy plan and the
channel plans on the budget's edge, :mod:`~hwsearch.searching.seeds`) as well as random ones,
and with budgets a local search around the most accurate feasible plans follows the sampler's
trials (:mod:`~hwsearch.searching.polish`). After the trials of a round, the top-K Pareto plans
not measured yet (:mod:`~hwsearch.searching.picks`) are folded, measured in the target's
runtime (:mod:`~hwsearch.searching.measuring`) and appended to ``measurements.jsonl``; the cost
model is refit from every successful record and saved (``costmodel.json``); the next round's
study starts from the previous front (enqueued) and prices plans with the refit model.

Rerunning the same command resumes: finished trials, measurements and fits are kept; only what
is missing is done.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

import costmodels
from costmodels.base import fidelity
from costmodels.batch import BatchPricer
from hwsearch import importance
from hwsearch.core import records
from hwsearch.core.errors import PlanError, StoreError
from hwsearch.core.plan import Plan
from hwsearch.deploy import SITTING_RUNTIMES, DenseBaseline, baseline_record, choose_runtime
from hwsearch.graph import ModelGraph
from hwsearch.measure import plan_record
from hwsearch.searching.config import DENSE_PLAN, RoundResult, SearchConfig, SearchResult
from hwsearch.searching.evaluator import Evaluator, load_model_and_data
from hwsearch.searching.front import closest_to_budgets, front_with_measurements, pareto_front
from hwsearch.searching.measuring import dense_baseline_for, measure_each, measure_sitting
from hwsearch.searching.picks import round_picks
from hwsearch.searching.polish import polish
from hwsearch.searching.refit import fit_cost_model
from hwsearch.searching.seeds import edge_seeds, greedy_seeds
from hwsearch.searching.storage import fail_stale, open_storage
from hwsearch.searching.summary import write_outputs
from hwsearch.searching.trials import make_sampler, run_trials
from hwsearch.space import SearchSpace
from targets.spec import TargetSpec, get_target

__all__ = ["search"]

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What every round of one search shares."""

    cfg: SearchConfig
    target: TargetSpec
    graph: ModelGraph
    data: object
    space: SearchSpace
    storage: optuna.storages.BaseStorage
    store: records.StudyRecords
    out: Path
    work_dir: Path
    baseline: DenseBaseline | None
    say: Callable[[str], None]
    show_bars: bool

    def pricer(self, model: costmodels.CostModel) -> BatchPricer:
        return BatchPricer(self.graph, self.target, model, channel_multiple=self.cfg.channel_multiple,
                           min_density=self.cfg.min_density, dtype=getattr(model, "dtype", "fp32"),
                           nm=self.space.nm, block=self.space.block)


def search(cfg: SearchConfig, *, progress: Callable[[str], None] | None = None, show_bars: bool = False) -> SearchResult:
    """Run (or resume) the refine loop described in the module docstring."""
    say = progress or (lambda msg: log.info(msg))
    cfg.validate()
    importance.get(cfg.criterion)  # an unknown criterion fails here, before any work
    target = get_target(cfg.target)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(cfg.storage_url())
    graph, data = load_model_and_data(cfg)
    # one tuning database per target (records are keyed by kernel); a shared one (``tvm_dir``)
    # lets runs reuse each other's schedules, so a plan measures the same in all of them
    work_dir = Path(cfg.tvm_dir) if cfg.tvm_dir else out / f"tvm-{target.name}"
    target, cfg, baseline, why = _deployment(target, graph, cfg, out, work_dir, say)
    space = SearchSpace.build(graph, target, patterns_wanted=cfg.patterns, max_ratio=cfg.max_ratio,
                              min_density=cfg.min_density, cost_model=fit_cost_model(target, graph, [], cfg)[0],
                              memory_matters=cfg.memory_matters)
    for line in space.not_offered_lines():  # patterns asked for but not offered; in full in summary.json
        say(line)
    store = records.StudyRecords(storage, cfg.study_name, mirror=out / "measurements.jsonl", worker=cfg.worker)
    run = _Run(cfg, target, graph, data, space, storage, store, out, work_dir, baseline, say, show_bars)
    result = SearchResult(cfg, out_dir=out, baseline=baseline, runtime=target.runtime, runtime_reason=why)
    recs = _round_zero(run)
    prev_front: list[Plan] = []
    for rnd in range(1, cfg.rounds + 1):
        study, front, recs, round_result = _round(run, rnd, prev_front, recs)
        prev_front = [Plan.from_dict(p) for p in front["plan"]]
        result.rounds.append(round_result)
    result.front = front_with_measurements(front, recs, target.identity)
    result.front.attrs["deployment"] = {"runtime": target.runtime, "runtime_reason": why,
                                        "dense_baseline": baseline.to_dict() if baseline else None}
    result.files = write_outputs(out, study, result.front, recs, cfg, target, not_offered=space.dropped or {})
    result.files.update({"study": Path(cfg.storage_url()), "measurements": out / "measurements.jsonl",
                         "costmodel": out / "costmodel.json"})
    return result


def _deployment(target: TargetSpec, graph: ModelGraph, cfg: SearchConfig, out: Path, work_dir: Path,
                say: Callable[[str], None]) -> tuple[TargetSpec, SearchConfig, DenseBaseline | None, str]:
    """The dense model timed in each runtime of the device, the runtime plans are measured in,
    and a budget given as a fraction of the fastest dense latency turned into seconds."""
    baseline, why = None, ""
    if cfg.runtime != "auto" and not target.runtimes:
        target.with_runtime(cfg.runtime)  # raises: this device has no such runtime
    if target.runtimes:
        baseline = dense_baseline_for(target, graph, cfg, out, work_dir, say)
        rt, why = choose_runtime(cfg.runtime, baseline, target)
        target = target.with_runtime(rt)
        say(f"measuring plans in {rt} ({why}); speed-ups are against the dense model in "
            f"{baseline.fastest or rt}, the fastest runtime")
    if cfg.latency_budget_x is not None:
        if baseline is None or baseline.fastest_latency_s is None:
            raise PlanError(f"--latency-budget-x needs the dense model timed in a runtime of {target.identity}; "
                            "give the budget in µs (--latency-budget-us) instead")
        cfg = dataclasses.replace(cfg, latency_budget_s=cfg.latency_budget_x * baseline.fastest_latency_s)
        say(f"latency budget: {cfg.latency_budget_x:g} x the dense model in {baseline.fastest} = "
            f"{cfg.latency_budget_s * 1e6:.1f} µs")
    return target, cfg, baseline, why


def _round_zero(run: _Run) -> list[dict]:
    """Every record so far; on a first run, the dense model as the baseline measured it is
    recorded as round 0, so it calibrates the cost model of round 1."""
    recs = run.store.load()
    fields = baseline_record(run.baseline, run.target.runtime) if run.baseline is not None else None
    if fields and not any(r.get("target") == run.target.identity and r.get("sitting") == "baseline" for r in recs):
        cm0 = fit_cost_model(run.target, run.graph, [], run.cfg)[0]
        ev0 = Evaluator(run.graph, run.data, run.target, cm0, run.cfg)
        dec0 = ev0.decisions(DENSE_PLAN)
        recs.append(run.store.append(plan_record(plan=DENSE_PLAN, target=run.target, measured=fields,
                                                 predicted_latency_s=ev0.cost(DENSE_PLAN, dec0).latency_s,
                                                 costmodel=cm0.identity, round_=0, study="baseline",
                                                 accuracy=ev0.accuracy(dec0))))
    return recs


def _round(run: _Run, rnd: int, prev_front: list[Plan],
           recs: list[dict]) -> tuple[optuna.Study, object, list[dict], RoundResult]:
    """One round: trials on the model fitted on rounds < ``rnd``, the front, its picks measured,
    the model refit on everything measured so far."""
    cfg, target, say = run.cfg, run.target, run.say
    name = f"{cfg.study_name}-round{rnd}"
    cm, _ = fit_cost_model(target, run.graph, [r for r in recs if r.get("round", 0) < rnd], cfg)
    ev = Evaluator(run.graph, run.data, target, cm, cfg)
    study = _open_study(run, name, cm)
    _trials(run, study, ev, cm, rnd, prev_front)
    front = pareto_front(study)
    if cfg.budgets.given and not front["feasible"].any():
        say(f"round {rnd}: no plan met the budgets — {closest_to_budgets(study, cfg)}; the front below is "
            "the least-violating plans: relax a budget or allow more patterns / higher ratios")
    recs = run.store.load()  # other workers may have measured meanwhile
    todo = round_picks(study, front, recs, ev, run.graph, target, cfg)
    measure = measure_sitting if target.backend in SITTING_RUNTIMES else measure_each
    new, dense_rec = measure(todo, graph=run.graph, ev=ev, target=target, cfg=cfg, cm=cm, rnd=rnd, name=name,
                             store=run.store, recs=recs, work_dir=run.work_dir, baseline=run.baseline, say=say)
    ok_new = [r for r in new if not r.get("error") and r.get("latency_s")]
    heldout = fidelity(np.array([r["predicted_latency_s"] for r in ok_new]),
                       np.array([r["latency_s"] * (r.get("drift_factor") or 1.0) for r in ok_new])) if ok_new else {}
    cm, report = fit_cost_model(target, run.graph, [r for r in recs if r.get("round", 0) <= rnd], cfg)
    if report is not None:
        cm.save(run.out / f"costmodel-round{rnd}.json")
        cm.save(run.out / "costmodel.json")
        say(f"round {rnd}: refit on {report.n} measured plans ({report.layer_rows} layer timings): "
            f"mean error {report.mape_before:.1%} before ({cm.kind} prior) -> {report.mape_after:.1%} refit; "
            f"within ±10%: {report.within10_before:.0%} -> {report.within10_after:.0%}")
    return study, front, recs, RoundResult(rnd, name, len(study.trials), new, report, heldout, dense_rec)


def _open_study(run: _Run, name: str, cm: costmodels.CostModel) -> optuna.Study:
    try:
        study = optuna.create_study(study_name=name, storage=run.storage, directions=["maximize", "minimize"],
                                    sampler=make_sampler(run.cfg, run.cfg.budgets.given), load_if_exists=True)
    except Exception as exc:
        raise StoreError(f"cannot create or load study {name!r} in {run.cfg.storage_url()}: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "predicted_latency_s"])
    study.set_user_attr("costmodel", cm.identity)
    study.set_user_attr("target", run.target.identity)
    return study


def _trials(run: _Run, study: optuna.Study, ev: Evaluator, cm: costmodels.CostModel, rnd: int,
            prev_front: list[Plan]) -> None:
    """The round's trials for this worker (those a killed run left are topped up), then, with
    budgets, the local search around the best feasible plans."""
    cfg, say = run.cfg, run.say
    mine = [t for t in study.trials if t.user_attrs.get("worker") == cfg.worker]
    fail_stale(study, mine)
    finished = [t for t in mine if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("phase") != "polish"]
    if not study.trials:
        # round 1 starts from uniform channel plans, the greedy path's end and the budget's
        # edge as well as random ones; later rounds from the previous round's front
        seeds = prev_front if rnd > 1 else (run.space.seed_plans() + greedy_seeds(run.graph, ev, cm, cfg, say)
                                            + edge_seeds(run.space, ev, run.pricer(cm), cfg, say))
        for p in seeds:
            study.enqueue_trial(run.space.params_of(p), skip_if_exists=True)
    remaining = cfg.trials - len(finished)
    say(f"round {rnd}: worker {cfg.worker!r} has {len(finished)} trials in study {study.study_name!r}, running "
        f"{max(0, remaining)} more on cost model {cm.identity}")
    if remaining > 0:
        run_trials(study, run.space, ev, run.pricer(cm), remaining, cfg, run.show_bars)
    if cfg.budgets.given and cfg.polish_trials > 0:
        gained = polish(study, run.space, ev, run.pricer(cm), cfg)
        if gained is not None:
            say(f"round {rnd}: local search around the best feasible plans: accuracy "
                f"{gained[0]:.4f} -> {gained[1]:.4f} in {gained[2]} trials")
