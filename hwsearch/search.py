"""The refine loop: search on the cost model → measure the Pareto winners → refit → repeat.

Round r is the Optuna study ``<study>-round<r>`` in one storage (a SQLite file in the output
directory by default; any Optuna storage URL works). Trials are multi-objective (accuracy up,
predicted latency down) with the budgets as constraints (feasible plans first); round 1 starts
from uniform channel plans (and, with a latency budget, a NetAdapt-style greedy plan and the
channel plans on the budget's edge, :meth:`SearchSpace.edge_plans`) as well as random ones,
and with budgets a local search around the most accurate feasible plans follows the
sampler's trials (``polish_trials``). After the trials of a round, the top-K Pareto plans not
measured yet are folded, measured by the target's backend (TVM here) and appended to
``measurements.jsonl``; the cost model is refit from every successful record and saved
(``costmodel.json``); the next round's study starts from the previous front (enqueued) and
prices plans with the refit model.

Rerunning the same command resumes: finished trials, measurements and fits are kept; only what
is missing is done.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

import costmodels
from costmodels.analytical import Sample
from costmodels.base import FitReport, fidelity
from hwsearch import prune, recalibrate, zoo
from hwsearch.core import patterns, records
from hwsearch.core.errors import PlanError, StoreError
from hwsearch.deploy import (
    SITTING_RUNTIMES,
    DenseBaseline,
    baseline_record,
    choose_runtime,
    dense_baseline,
    measure_round,
    speedup_text,
)
from hwsearch.graph import ModelGraph, analyze
from hwsearch.measure import measure_model, plan_record
from hwsearch.core.plan import Plan
from hwsearch.core.resolve import resolve
from hwsearch.space import SearchSpace
from targets.spec import TargetSpec, get_target

__all__ = ["SearchConfig", "SearchResult", "RoundResult", "search", "open_storage", "Evaluator"]

log = logging.getLogger(__name__)
DENSE_PLAN = Plan()


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs. Times in seconds, memory in bytes, ratios as fractions."""

    out_dir: Path
    target: str = "host-x86"
    model: str = zoo.REFERENCE[0]
    data: str = zoo.REFERENCE[1]
    storage: str | None = None            # Optuna storage URL; default sqlite:///<out_dir>/study.db
    study_name: str = "hwsearch"
    rounds: int = 2
    trials: int = 60                      # per round
    measure_top_k: int = 3                # Pareto plans measured per round
    max_accuracy_drop: float = 0.05       # measure front plans within this (absolute) of dense accuracy
    repeats: int = 10                     # time_evaluator repeats (median and IQR over these)
    min_repeat_ms: int = 20               # each repeat runs at least this long
    mode: str | None = None               # TVM measuring mode; default from the target spec ("tuned" for --runtime tvm)
    runtime: str = "auto"                 # the runtime plans are measured in; auto: the fastest dense one
    baseline_runtimes: tuple[str, ...] | None = None  # runtimes the dense model is timed in first (None: all)
    passes: int = 3                       # fresh processes per sitting (ONNX Runtime / torch)
    sitting_rounds: int = 15              # interleaved rounds per pass
    tuning_trials: int = 64               # MetaSchedule trials per model in "tuned" mode
    samples: int = 8                      # schedules sampled per function in "quick" mode
    patterns: tuple[str, ...] = ("dense", "unstructured", "channel")
    criterion: str = "magnitude"
    max_ratio: float = 0.9
    min_density: float = 0.05
    channel_multiple: int = 8
    finetune_steps: int = 0
    bn_recalibration: int = 8             # training batches to re-estimate BatchNorm statistics per plan (0: off)
    sampler: str = "nsga2"
    polish_trials: int = 40               # per round, with budgets: local search around the best feasible plans
    greedy_seed: bool = True              # with a latency budget: round 1 also starts from a NetAdapt-style greedy plan
    edge_seeds: int = 64                  # with a latency budget: round 1 also starts from up to this many plans on its edge
    costmodel_path: Path | None = None    # start each fit from this saved model (e.g. a profile's LUT)
    tvm_dir: Path | None = None           # TVM tuning database to use; default <out_dir>/tvm-<target>
    seed: int = 0
    worker: str = "main"                  # trials are counted per worker: N workers add N x trials
    latency_budget_s: float | None = None
    latency_budget_x: float | None = None  # budget as a fraction of the fastest dense runtime's latency
    flash_budget_bytes: int | None = None
    sram_budget_bytes: int | None = None

    @property
    def memory_matters(self) -> bool:
        """Whether a flash or SRAM budget is set (else weight-level patterns that save no time are
        not searched: see :meth:`hwsearch.space.SearchSpace.build`)."""
        return self.flash_budget_bytes is not None or self.sram_budget_bytes is not None

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve() / 'study.db'}"

    def validate(self) -> None:
        """Cheap checks before any model is loaded; :class:`PlanError` names the bad value."""

        if self.rounds < 1 or self.trials < 1 or self.measure_top_k < 0:
            raise PlanError(f"rounds ({self.rounds}) and trials ({self.trials}) must be >= 1 and "
                            f"measure_top_k ({self.measure_top_k}) >= 0")
        if not 0.0 < self.max_ratio < 1.0:
            raise PlanError(f"max_ratio {self.max_ratio} out of range: give 0 < max_ratio < 1")
        if not 0.0 <= self.min_density < 1.0:
            raise PlanError(f"min_density {self.min_density} out of range: give 0 <= min_density < 1")
        bad = sorted(set(self.patterns) - set(patterns.names()))
        if bad:
            raise PlanError(f"unknown patterns {bad}; valid: {', '.join(patterns.names())}")
        if self.latency_budget_x is not None and not 0 < self.latency_budget_x:
            raise PlanError(f"latency_budget_x {self.latency_budget_x} must be positive (e.g. 0.7: 70% of the "
                            "dense model's latency in the fastest runtime)")
        if self.latency_budget_x is not None and self.latency_budget_s is not None:
            raise PlanError("give a latency budget either in seconds or as a fraction of the dense latency, not both")
        for name in ("latency_budget_s", "flash_budget_bytes", "sram_budget_bytes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlanError(f"{name} {v} must be positive")
        if min(self.bn_recalibration, self.finetune_steps, self.polish_trials, self.edge_seeds) < 0:
            raise PlanError(f"bn_recalibration ({self.bn_recalibration}), finetune_steps ({self.finetune_steps}), "
                            f"polish_trials ({self.polish_trials}) and edge_seeds ({self.edge_seeds}) must be >= 0")
        from targets.spec import RUNTIMES

        if self.runtime != "auto" and self.runtime not in RUNTIMES:
            raise PlanError(f"runtime {self.runtime!r} unknown; valid: auto, {', '.join(RUNTIMES)}")
        bad_rt = sorted(set(self.baseline_runtimes or ()) - set(RUNTIMES))
        if bad_rt:
            raise PlanError(f"baseline runtimes {bad_rt} unknown; valid: {', '.join(RUNTIMES)}")
        if self.passes < 1 or self.sitting_rounds < 1:
            raise PlanError(f"passes ({self.passes}) and sitting_rounds ({self.sitting_rounds}) must be >= 1")
        if self.channel_multiple < 1:
            raise PlanError(f"channel_multiple {self.channel_multiple} must be >= 1")


@dataclass
class RoundResult:
    round: int
    study_name: str
    trials: int
    measured: list[dict[str, Any]]
    fit: FitReport | None
    heldout: dict[str, float]             # previous model's error on this round's new measurements
    dense: dict[str, Any] | None = None   # the dense model as measured in this round's sitting


@dataclass
class SearchResult:
    config: SearchConfig
    rounds: list[RoundResult] = field(default_factory=list)
    front: pd.DataFrame | None = None
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    baseline: DenseBaseline | None = None  # the dense model per runtime, timed when the search started
    runtime: str | None = None             # the runtime plans were measured in
    runtime_reason: str = ""


def open_storage(url: str, *, attempts: int = 5) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:///…``, ``postgresql://…``, or ``journal:<file>``
    for a journal file). Raises :class:`StoreError` with the fix when it cannot be opened.

    Workers started together race to create the schema of an empty database (one gets a
    unique-key violation): a failed open is retried a few times before it is reported."""
    import time

    last: Exception | None = None
    for attempt in range(attempts):
        try:
            if url.startswith("journal:"):
                from optuna.storages.journal import JournalFileBackend, JournalStorage
                return JournalStorage(JournalFileBackend(url[len("journal:"):]))
            kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:
            last = exc
            text = str(exc).lower()
            if not any(k in text for k in ("unique", "duplicate", "already exists", "locked")):
                break  # not a creation race: report at once
            time.sleep(0.5 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise StoreError(f"cannot open study storage {url!r}: {first[:200]} — check the URL, that the "
                     "server is running and reachable, or that the file is an Optuna study") from None


class Evaluator:
    """Accuracy and predicted cost of plans on one model, data set and target."""

    def __init__(self, graph: ModelGraph, data: zoo.Dataset, target: TargetSpec, cost_model: costmodels.CostModel,
                 cfg: SearchConfig) -> None:
        self.graph, self.data, self.target, self.cm, self.cfg = graph, data, target, cost_model, cfg
        self._criterion_data = None
        if cfg.criterion != "magnitude" and data.x_train is not None:
            self._criterion_data = lambda: data.batches("train", 128, limit=4)
        self.bn_batches = None
        if cfg.bn_recalibration > 0 and data.x_train is not None and recalibrate.has_batchnorm(graph.model):
            self.bn_batches = recalibrate.calibration_batches(data, cfg.bn_recalibration)

    def decisions(self, plan: Plan) -> prune.Decisions:
        return prune.decide(self.graph, plan, criterion=self.cfg.criterion, data=self._criterion_data,
                            channel_multiple=self.cfg.channel_multiple, min_density=self.cfg.min_density)

    def accuracy(self, dec: prune.Decisions) -> float:
        """Validation accuracy of the plan: after a short fine-tune (``finetune_steps``), else
        with its BatchNorm statistics recalibrated (``bn_recalibration``; see
        :mod:`hwsearch.recalibrate`), else with the masked weights as they are."""
        if self.cfg.finetune_steps > 0 and self.data.x_train is not None:
            model = prune.apply(self.graph, dec, mode="mask")
            zoo.train(model, self.data, steps=self.cfg.finetune_steps, lr=1e-3)
            return zoo.evaluate(model, self.data)
        masked = prune.masked_state(self.graph, dec)
        if self.bn_batches is not None:
            model = recalibrate.masked_model(self.graph, masked)
            recalibrate.recalibrate_bn(model, self.bn_batches())
            return zoo.evaluate(model, self.data)
        return zoo.evaluate(self.graph.model, self.data, params=masked)

    def cost(self, plan: Plan, dec: prune.Decisions) -> costmodels.Cost:
        return self.cm.predict(self.graph, plan, resolved=dec.resolved)

    def budget_names(self) -> list[str]:
        """The names of :meth:`violations`' entries, in order."""
        c = self.cfg
        given = (c.latency_budget_s, c.flash_budget_bytes, c.sram_budget_bytes)
        return [n for n, b in zip(_BUDGET_NAMES, given) if b is not None]

    def violations(self, latency_s: float, flash_bytes: int, sram_bytes: int) -> list[float]:
        """Constraint values for Optuna (≤ 0 is feasible), relative to each budget."""
        c = self.cfg
        out = []
        if c.latency_budget_s is not None:
            out.append(latency_s / c.latency_budget_s - 1.0)
        if c.flash_budget_bytes is not None:
            out.append(flash_bytes / c.flash_budget_bytes - 1.0)
        if c.sram_budget_bytes is not None:
            out.append(sram_bytes / c.sram_budget_bytes - 1.0)
        return out


# Optuna 5 stores constraints on the trial (Trial.set_constraint) and deprecates samplers'
# constraints_func; Optuna 4 has only the latter.
_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")
_BUDGET_NAMES = ("latency", "flash", "sram")


def _sampler(cfg: SearchConfig, constrained: bool) -> optuna.samplers.BaseSampler:
    cons = (lambda t: t.user_attrs.get("constraints", [])) if constrained and not _TRIAL_CONSTRAINTS else None
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed, constraints_func=cons, population_size=20)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, constraints_func=cons, multivariate=True)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    raise PlanError(f"unknown sampler {cfg.sampler!r}; valid: nsga2, tpe, random")


def _load_model_and_data(cfg: SearchConfig) -> tuple[ModelGraph, zoo.Dataset]:
    model, example = zoo.load_model(cfg.model)
    data = zoo.load_data(cfg.data)
    graph = analyze(model, example if example is not None else data.example_input)
    return graph, data


def _samples(graph: ModelGraph, recs: list[dict], cfg: SearchConfig) -> list[Sample]:
    out = []
    for r in recs:
        if r.get("error") or not r.get("latency_s"):
            continue
        try:
            res = resolve(graph.table, graph.groups, Plan.from_dict(r["plan"]), channel_multiple=cfg.channel_multiple,
                          min_density=cfg.min_density)
        except PlanError:
            continue  # a record of another model or space: not this model's evidence
        # a sitting's latencies are brought to the scale of the dense baseline (the machine's
        # speed drifts between sittings; the dense model measured in each one says by how much)
        k = float(r.get("drift_factor") or 1.0)
        layer_s = {name: v * k for name, v in (r.get("layer_s") or {}).items()} or None
        out.append(Sample(res, float(r["latency_s"]) * k, layer_s,
                          {"mcu_rows": r["mcu_rows"]} if r.get("mcu_rows") else None))
    return out


def fit_cost_model(target: TargetSpec, graph: ModelGraph, recs: list[dict],
                   cfg: SearchConfig) -> tuple[costmodels.CostModel, FitReport | None]:
    """A fresh analytical model refit on every successful record in ``recs`` (no report when
    there is none). Deterministic: the same records give the same model, so a resumed search
    prices plans exactly as the interrupted one did."""
    cm = (costmodels.CostModel.load(cfg.costmodel_path, target) if cfg.costmodel_path
          else costmodels.default_for(target))
    samples = _samples(graph, recs, cfg)
    if not samples:
        return cm, None
    return cm, cm.refit(samples)


def search(cfg: SearchConfig, *, progress: Callable[[str], None] | None = None, show_bars: bool = False) -> SearchResult:
    """Run (or resume) the refine loop described in the module docstring."""
    say = progress or (lambda msg: log.info(msg))
    cfg.validate()
    target = get_target(cfg.target)
    from hwsearch import importance

    importance.get(cfg.criterion)  # an unknown criterion fails here, before any work
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(cfg.storage_url())
    graph, data = _load_model_and_data(cfg)
    # one tuning database per target (records are keyed by kernel); a shared one (``tvm_dir``)
    # lets runs reuse each other's schedules, so a plan measures the same in all of them
    work_dir = Path(cfg.tvm_dir) if cfg.tvm_dir else out / f"tvm-{target.name}"
    baseline, why = None, ""
    if cfg.runtime != "auto" and not target.runtimes:
        target.with_runtime(cfg.runtime)  # raises: this device has no such runtime
    if target.runtimes:
        baseline = _baseline(target, graph, cfg, out, work_dir, say)
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
    space = SearchSpace.build(graph, target, patterns_wanted=cfg.patterns, max_ratio=cfg.max_ratio,
                              min_density=cfg.min_density, cost_model=fit_cost_model(target, graph, [], cfg)[0],
                              memory_matters=cfg.memory_matters)
    for line in space.not_offered_lines():  # patterns asked for but not offered; in full in summary.json
        say(line)
    rec_path = out / "measurements.jsonl"
    cm_path = out / "costmodel.json"
    result = SearchResult(cfg, out_dir=out, baseline=baseline, runtime=target.runtime, runtime_reason=why)
    constrained = any(b is not None for b in (cfg.latency_budget_s, cfg.flash_budget_bytes, cfg.sram_budget_bytes))

    store = records.StudyRecords(storage, cfg.study_name, mirror=rec_path, worker=cfg.worker)
    recs = store.load()
    base_fields = baseline_record(baseline, target.runtime) if baseline is not None else None
    if base_fields and not any(r.get("target") == target.identity and r.get("sitting") == "baseline" for r in recs):
        # round 0: the dense model as the baseline measured it calibrates the model of round 1
        cm0 = fit_cost_model(target, graph, [], cfg)[0]
        dense0 = Evaluator(graph, data, target, cm0, cfg)
        dec0 = dense0.decisions(DENSE_PLAN)
        recs.append(store.append(plan_record(plan=DENSE_PLAN, target=target, measured=base_fields,
                                             predicted_latency_s=dense0.cost(DENSE_PLAN, dec0).latency_s,
                                             costmodel=cm0.identity, round_=0, study="baseline",
                                             accuracy=dense0.accuracy(dec0))))
    prev_front: list[Plan] = []
    for rnd in range(1, cfg.rounds + 1):
        name = f"{cfg.study_name}-round{rnd}"
        # The model used in round r is the one fitted on measurements of rounds < r.
        cm, _ = fit_cost_model(target, graph, [r for r in recs if r.get("round", 0) < rnd], cfg)
        ev = Evaluator(graph, data, target, cm, cfg)

        def pricer_for(model: costmodels.CostModel):
            from costmodels.batch import BatchPricer

            return BatchPricer(graph, target, model, channel_multiple=cfg.channel_multiple,
                               min_density=cfg.min_density, dtype=getattr(model, "dtype", "fp32"),
                               nm=space.nm, block=space.block)
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                        sampler=_sampler(cfg, constrained), load_if_exists=True)
        except Exception as exc:
            raise StoreError(f"cannot create or load study {name!r} in {cfg.storage_url()}: {exc}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy", "predicted_latency_s"])
        study.set_user_attr("costmodel", cm.identity)
        study.set_user_attr("target", target.identity)
        mine = [t for t in study.trials if t.user_attrs.get("worker") == cfg.worker]
        _fail_stale(study, mine)
        finished = [t for t in mine if t.state == optuna.trial.TrialState.COMPLETE
                    and t.user_attrs.get("phase") != "polish"]
        if not study.trials:
            # round 1 starts from uniform channel plans, the greedy path's end and the budget's
            # edge as well as random ones; later rounds from the previous round's front
            seeds = prev_front if rnd > 1 else (space.seed_plans() + _greedy_seeds(graph, ev, cm, cfg, say)
                                                + _edge_seeds(space, ev, pricer_for(cm), cfg, say))
            for p in seeds:
                study.enqueue_trial(space.params_of(p), skip_if_exists=True)
        remaining = cfg.trials - len(finished)
        say(f"round {rnd}: worker {cfg.worker!r} has {len(finished)} trials in study {name!r}, running "
            f"{max(0, remaining)} more on cost model {cm.identity}")

        if remaining > 0:
            _run_trials(study, space, ev, pricer_for(cm), remaining, cfg, show_bars)
        if constrained and cfg.polish_trials > 0:
            gained = _polish(study, space, ev, pricer_for(cm), cfg)
            if gained is not None:
                say(f"round {rnd}: local search around the best feasible plans: accuracy "
                    f"{gained[0]:.4f} -> {gained[1]:.4f} in {gained[2]} trials")
        front = _front(study)
        if constrained and not front["feasible"].any():
            say(f"round {rnd}: no plan met the budgets — {_closest_to_budgets(study, cfg)}; the front below is "
                "the least-violating plans: relax a budget or allow more patterns / higher ratios")
        prev_front = [Plan.from_dict(p) for p in front["plan"]]
        # ---- measure the winners ----
        recs = store.load()  # other workers may have measured meanwhile
        measured_keys = {r["plan_key"] for r in recs if r.get("target") == target.identity}
        # The round's picks are stored before measuring, so a resumed worker measures exactly
        # the plans it chose (and only those not measured yet), never a new selection.
        pick_key = f"to_measure:{cfg.worker}"
        if pick_key not in study.user_attrs:
            dense_acc = ev.accuracy(ev.decisions(DENSE_PLAN))
            # a sitting measures the dense model itself, beside the plans
            sitting = target.backend in SITTING_RUNTIMES
            picks = [] if DENSE_PLAN.key in measured_keys or sitting else [(DENSE_PLAN, dense_acc)]
            unmeasured = front[~front["plan_key"].isin(measured_keys)]
            if sitting:
                # a plan that runs the dense model's kernels, or those of a plan measured already,
                # needs no measurement: it would only measure noise
                kernels = lambda p: frozenset(kernel_configs(ev.decisions(Plan.from_dict(p)).resolved, target))  # noqa: E731
                known = {kernels(DENSE_PLAN.to_dict())} | {kernels(r["plan"]) for r in recs
                                                           if r.get("target") == target.identity and r.get("plan")}
                keep = []
                for p in unmeasured["plan"]:  # and one plan per configuration
                    k = kernels(p)
                    keep.append(k not in known)
                    known.add(k)
                unmeasured = unmeasured.loc[np.array(keep, dtype=bool)]
            useful = unmeasured[unmeasured["accuracy"] >= dense_acc - cfg.max_accuracy_drop]
            if len(useful) < cfg.measure_top_k:
                # too few plans near dense accuracy: top up with the most accurate of the rest,
                # so every round still measures (and teaches the model) k plans
                rest = unmeasured.drop(useful.index).sort_values("accuracy", ascending=False)
                useful = pd.concat([useful, rest.head(cfg.measure_top_k - len(useful))]).sort_values(
                    "predicted_latency_s")
            seen = set().union(*[kernel_configs(s.resolved, target) for s in _samples(graph, recs, cfg)] or [set()])

            def novelty(plan: Plan) -> int:
                return len(kernel_configs(ev.decisions(plan).resolved, target) - seen)

            picks += _pick(useful, measured_keys, cfg.measure_top_k, novelty)
            study.set_user_attr(pick_key, [{"plan": p.to_dict(), "accuracy": a} for p, a in picks])
        todo = [(Plan.from_dict(d["plan"]), d["accuracy"]) for d in study.user_attrs[pick_key]]
        todo = [(p, a) for p, a in todo if p.key not in measured_keys]
        measure = _measure_sitting if target.backend in SITTING_RUNTIMES else _measure_each
        new, dense_rec = measure(todo, graph=graph, ev=ev, target=target, cfg=cfg, cm=cm, rnd=rnd, name=name,
                                 store=store, recs=recs, work_dir=work_dir, baseline=baseline, say=say)
        ok_new = [r for r in new if not r.get("error") and r.get("latency_s")]
        heldout = fidelity(np.array([r["predicted_latency_s"] for r in ok_new]),
                           np.array([r["latency_s"] * (r.get("drift_factor") or 1.0) for r in ok_new])) if ok_new else {}
        # ---- refit on everything measured so far ----
        cm, report = fit_cost_model(target, graph, [r for r in recs if r.get("round", 0) <= rnd], cfg)
        if report is not None:
            cm.save(out / f"costmodel-round{rnd}.json")
            cm.save(cm_path)
            say(f"round {rnd}: refit on {report.n} measured plans ({report.layer_rows} layer timings): "
                f"mean error {report.mape_before:.1%} analytical -> {report.mape_after:.1%} refit; "
                f"within ±10%: {report.within10_before:.0%} -> {report.within10_after:.0%}")
        result.rounds.append(RoundResult(rnd, name, len(study.trials), new, report, heldout, dense_rec))

    result.front = _front_with_measurements(front, recs, target.identity)
    result.front.attrs["deployment"] = {
        "runtime": target.runtime, "runtime_reason": why,
        "dense_baseline": baseline.to_dict() if baseline else None}
    from hwsearch import report as report_mod
    result.files = report_mod.write_search_outputs(out, study, result.front, recs, cfg, target,
                                                   not_offered=space.dropped or {})
    result.files.update({"study": Path(cfg.storage_url()), "measurements": rec_path, "costmodel": cm_path})
    return result


def _baseline(target: TargetSpec, graph: ModelGraph, cfg: SearchConfig, out: Path, tvm_dir: Path,
              say: Callable[[str], None]) -> DenseBaseline:
    """The dense model timed in each runtime of ``target`` (:func:`hwsearch.deploy.dense_baseline`),
    printed; kept in ``<out>/dense_baseline.json`` so a resumed search chooses as the first did."""
    import json

    path = out / "dense_baseline.json"
    tvm_mode = cfg.mode or ("tuned" if cfg.runtime == "tvm" else "quick")
    runtimes = list(cfg.baseline_runtimes or target.runtimes)
    skipped = {}
    if cfg.baseline_runtimes is None and "tvm" in runtimes and tvm_mode != "tuned":
        # TVM's quick mode is an exploration proxy, never a deployment latency: not worth timing
        runtimes.remove("tvm")
        skipped["tvm"] = "not timed: TVM counts once tuned (--mode tuned or --runtime tvm; minutes of tuning)"
    ident = {"model": cfg.model, "target": target.name, "runtimes": runtimes, "tvm_mode": tvm_mode}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("for") == ident:
                base = DenseBaseline.from_dict(saved["baseline"])
                say("dense model per runtime (measured when this search started):")
                for line in base.lines():
                    say(line)
                return base
        except (ValueError, KeyError, TypeError):
            log.warning("re-measuring the dense baseline: %s is unreadable", path)
    say(f"timing the dense model in {', '.join(ident['runtimes'])} (interleaved sittings, {cfg.passes} fresh "
        "processes; TVM in its own) ...")
    base = dense_baseline(target, graph, work_dir=tvm_dir, runtimes=tuple(runtimes), tvm_mode=tvm_mode,
                          passes=cfg.passes, rounds=cfg.sitting_rounds, tuning_trials=cfg.tuning_trials)
    if skipped:
        base = dataclasses.replace(base, latency_s={**base.latency_s, **dict.fromkeys(skipped)},
                                   notes={**base.notes, **skipped})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema_version": 1, "for": ident, "baseline": base.to_dict()}, indent=2))
    tmp.replace(path)
    say("dense model per runtime:")
    for line in base.lines():
        say(line)
    return base


def _measure_each(todo: list[tuple[Plan, float]], *, graph: ModelGraph, ev: Evaluator, target: TargetSpec,
                  cfg: SearchConfig, cm: costmodels.CostModel, rnd: int, name: str, store: records.StudyRecords,
                  recs: list[dict], work_dir: Path, baseline: DenseBaseline | None,
                  say: Callable[[str], None]) -> tuple[list[dict], dict | None]:
    """Each plan by the target's own backend (TVM, the MCU emulator), one after another; a TVM
    plan's speed-ups are against the last dense TVM record (and chained to the fastest runtime)."""
    mode = cfg.mode or ("tuned" if target.runtime == "tvm" else None)
    new = []
    for i, (plan, acc) in enumerate(todo, 1):
        dec = ev.decisions(plan)
        folded = prune.apply(graph, dec, mode="fold")
        predicted = ev.cost(plan, dec).latency_s
        say(f"round {rnd}: measuring plan {i}/{len(todo)} [{plan.key}] {plan.compact()}")
        m = measure_model(target, graph, folded, work_dir=work_dir, mode=mode,
                          tuning_trials=cfg.tuning_trials, samples=cfg.samples, repeats=cfg.repeats,
                          min_repeat_ms=cfg.min_repeat_ms, resolved=dec.resolved)
        if target.runtime == "tvm":
            m["runtime"] = "tvm"
            if m.get("mode") == "quick":
                m["latency_note"] = "TVM quick mode (sampled schedules): an exploration proxy, not a deployment latency"
        rec = plan_record(plan=plan, target=target, measured=m, predicted_latency_s=predicted,
                          costmodel=cm.identity, round_=rnd, study=name, accuracy=acc)
        dense = next((r for r in reversed(recs) if r.get("plan_key") == DENSE_PLAN.key and r.get("latency_s")
                      and r.get("target") == target.identity), None)
        if dense and rec.get("latency_s") and plan.key != DENSE_PLAN.key and target.runtime:
            rec["speedup_same_runtime"] = dense["latency_s"] / rec["latency_s"]
            chain = baseline.ratio_to_fastest(target.runtime) if baseline else None
            if chain:
                rec["speedup_vs_fastest"] = rec["speedup_same_runtime"] / chain
        rec = store.append(rec)
        recs.append(rec)
        new.append(rec)
        if rec.get("error"):
            say(f"round {rnd}: measurement of [{plan.key}] failed: {rec['error']}")
        else:
            say(f"round {rnd}: [{plan.key}] measured {rec['latency_s'] * 1e6:.1f} µs "
                f"(predicted {predicted * 1e6:.1f} µs)")
    return new, None


def _measure_sitting(todo: list[tuple[Plan, float]], *, graph: ModelGraph, ev: Evaluator, target: TargetSpec,
                     cfg: SearchConfig, cm: costmodels.CostModel, rnd: int, name: str, store: records.StudyRecords,
                     recs: list[dict], work_dir: Path, baseline: DenseBaseline | None,
                     say: Callable[[str], None]) -> tuple[list[dict], dict | None]:
    """The round's plans and the dense model in one interleaved sitting in the target's runtime
    (:func:`hwsearch.deploy.measure_round`): plans that fold to one configuration share a
    measurement, a plan identical to dense gets the dense measurement and no speed-up, and the
    dense model is measured (and recorded) once."""
    if not todo:
        return [], None
    dense_dec = ev.decisions(DENSE_PLAN)
    picks, info = [], {}
    for plan, acc in todo:
        dec = ev.decisions(plan)
        folded = prune.apply(graph, dec, mode="fold")
        info[plan.key] = (plan, acc, ev.cost(plan, dec).latency_s)
        picks.append((plan.key, folded, frozenset(kernel_configs(dec.resolved, target))))
    say(f"round {rnd}: measuring the dense model and {len(picks)} plans in {target.runtime}, interleaved "
        f"({cfg.passes} fresh processes x {cfg.sitting_rounds} rounds) ...")
    sitting_id = f"{name}-{cfg.worker}"
    # configurations are compared by the kernels they run: zeros the runtime does not skip and
    # a channel ratio that rounds to every channel are the dense model
    dense_fields, by_key = measure_round(target, graph, picks, frozenset(kernel_configs(dense_dec.resolved, target)),
                                         work_dir=work_dir,
                                         baseline=baseline, passes=cfg.passes, rounds=cfg.sitting_rounds,
                                         sitting_id=sitting_id)
    dense_rec = plan_record(plan=DENSE_PLAN, target=target, measured=dense_fields,
                            predicted_latency_s=ev.cost(DENSE_PLAN, dense_dec).latency_s, costmodel=cm.identity,
                            round_=rnd, study=name, accuracy=ev.accuracy(dense_dec))
    if not any(r.get("plan_key") == DENSE_PLAN.key and r.get("sitting") == sitting_id for r in recs):
        dense_rec = store.append(dense_rec)  # once per sitting, also when a killed sitting is redone
        recs.append(dense_rec)
    if dense_rec.get("latency_s"):
        say(f"round {rnd}: dense {dense_rec['latency_s'] * 1e6:.1f} µs in {target.runtime} (this sitting)")
    new = []
    for key, fields in by_key.items():
        plan, acc, predicted = info[key]
        rec = plan_record(plan=plan, target=target, measured=fields, predicted_latency_s=predicted,
                          costmodel=cm.identity, round_=rnd, study=name, accuracy=acc)
        rec = store.append(rec)
        recs.append(rec)
        new.append(rec)
        if rec.get("error"):
            say(f"round {rnd}: measurement of [{key}] failed: {rec['error']}")
        else:
            k = float(rec.get("drift_factor") or 1.0)
            at_base = (f", {rec['latency_s'] * k * 1e6:.1f} µs at the baseline's speed" if abs(k - 1.0) > 0.05 else "")
            say(f"round {rnd}: [{key}] {plan.compact()}: {rec['latency_s'] * 1e6:.1f} µs{at_base} (predicted "
                f"{predicted * 1e6:.1f} µs), speed-up over the fastest dense runtime: {speedup_text(rec)}")
    return new, dense_rec


def _greedy_seeds(graph: ModelGraph, ev: Evaluator, cm: costmodels.CostModel, cfg: SearchConfig,
                  say: Callable[[str], None]) -> list[Plan]:
    """With a latency budget and ``cfg.greedy_seed``: the last plans of a NetAdapt-style greedy
    channel pruning down to the budget (:func:`hwsearch.baselines.netadapt`, priced by ``cm``,
    scored by ``ev``; a few seconds), to start round 1 from. A greedy path is strong near a
    budget and NSGA-II is strong at recombining: the search starts where the greedy ends, so it
    cannot do worse than it on the cost model. Empty when there is no budget, nothing to prune
    or the greedy fails."""
    if not cfg.greedy_seed or cfg.latency_budget_s is None:
        return []
    from hwsearch import baselines

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


def _edge_seeds(space: SearchSpace, ev: Evaluator, pricer: Any, cfg: SearchConfig,
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


def config_key(resolved: pd.DataFrame) -> tuple:
    """What a plan does to the model (kept channels, pattern, density per layer): plans whose
    ratios round to the same channel counts are one configuration."""
    return tuple((layer, int(r["kept_in"]), int(r["kept_out"]), str(r["pattern"]), round(float(r["weight_density"]), 4))
                 for layer, r in resolved.iterrows())


def _polish(study: optuna.Study, space: SearchSpace, ev: Evaluator, pricer: Any,
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
                and all(v <= 0 for v in t.user_attrs.get("constraints", [])))

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
        _run_trials(study, space, ev, pricer, len(batch), cfg, False, phase="polish")
        left -= len(batch)
        n_run += len(batch)
        new_best = max(t.values[0] for t in study.trials if feasible(t))
        stale = stale + 1 if new_best <= best else 0
        if stale >= 2:  # two batches without a gain: the neighbourhood is spent
            break
        best = max(best, new_best)
    return start, best, n_run


def _run_trials(study: optuna.Study, space: SearchSpace, ev: Evaluator, pricer: Any, n: int, cfg: SearchConfig,
                show_bars: bool, phase: str | None = None) -> None:
    """``n`` trials through Optuna's ask/tell in batches of one NSGA-II population: the batch's
    plans are priced together by the vectorised :class:`~costmodels.batch.BatchPricer` (the
    fast path; it gives the same numbers as ``CostModel.predict``), then each is evaluated for
    accuracy and told. A plan the model or space rejects is a FAIL trial, not a crash."""
    from tqdm import tqdm

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
            if _TRIAL_CONSTRAINTS:
                for name, v in zip(ev.budget_names(), violations):
                    t.set_constraint(name, v)
            guard = space.guard_report(dec.resolved)
            if guard:
                t.set_user_attr("collapse_guard", guard)
            study.tell(t, [ev.accuracy(dec), lat])
            bar.update()
    bar.close()


def _fail_stale(study: optuna.Study, mine: list[optuna.trial.FrozenTrial]) -> None:
    """Trials of this worker left RUNNING by a killed process are marked FAIL (and topped up)."""
    for t in mine:
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # public API: a running trial may be told
            log.info("marked stale running trial %d of worker %s as failed", t.number, t.user_attrs.get("worker"))


def _closest_to_budgets(study: optuna.Study, cfg: SearchConfig) -> str:
    """The smallest predicted latency / flash / SRAM any trial reached, beside each budget."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    parts = []
    for name, key, budget, scale, unit in (
            ("latency", "predicted_latency_s", cfg.latency_budget_s, 1e6, "µs"),
            ("flash", "flash_bytes", cfg.flash_budget_bytes, 1 / 1024, "KiB"),
            ("SRAM", "sram_bytes", cfg.sram_budget_bytes, 1 / 1024, "KiB")):
        if budget is None or not done:
            continue
        best = min(float(t.user_attrs.get(key, math.inf)) for t in done)
        parts.append(f"{name}: best {best * scale:.1f} {unit} vs budget {budget * scale:.1f} {unit}")
    return "; ".join(parts) or "no completed trial"


def _front(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front of a study, one row per distinct plan, by predicted latency: feasible
    plans only when any trial met the budgets, else the least-violating trials."""
    rows = []
    seen = set()
    best = study.best_trials
    if not best:  # nothing feasible: rank by total violation, then by the objectives
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        viol = lambda t: sum(max(0.0, v) for v in t.user_attrs.get("constraints", []))  # noqa: E731
        best = sorted(done, key=lambda t: (viol(t), -t.values[0], t.values[1]))[:5]
    for t in best:
        key = t.user_attrs.get("plan_key")
        if key in seen or key is None:
            continue
        seen.add(key)
        rows.append({"trial": t.number, "plan_key": key, "plan": t.user_attrs["plan"], "accuracy": t.values[0],
                     "predicted_latency_s": t.values[1], "flash_bytes": t.user_attrs.get("flash_bytes"),
                     "sram_bytes": t.user_attrs.get("sram_bytes"),
                     "feasible": all(v <= 0 for v in t.user_attrs.get("constraints", []))})
    df = pd.DataFrame(rows, columns=["trial", "plan_key", "plan", "accuracy", "predicted_latency_s", "flash_bytes",
                                     "sram_bytes", "feasible"])
    return df.sort_values("predicted_latency_s").reset_index(drop=True)


def kernel_configs(resolved: pd.DataFrame, target: TargetSpec) -> set[tuple]:
    """The kernels a plan runs: (layer, kept in, kept out, kernel kind[, density]). A weight
    pattern the target does not accelerate runs the dense kernel of its shape."""
    out = set()
    for layer, r in resolved.iterrows():
        pat = str(r["pattern"])
        if pat in ("dense", "channel") or not target.accelerates(pat):
            out.add((layer, int(r["kept_in"]), int(r["kept_out"]), "dense"))
        else:
            out.add((layer, int(r["kept_in"]), int(r["kept_out"]), pat, round(float(r["weight_density"]), 2)))
    return out


def _pick(front: pd.DataFrame, measured: set[str], k: int,
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


def _front_with_measurements(front: pd.DataFrame, recs: list[dict], target_identity: str) -> pd.DataFrame:
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
