"""Measuring in a search: the dense model per runtime when it starts, then each round's picks —
one after another on the target's backend (TVM, the MCU emulator), or with the dense model in
one interleaved sitting (ONNX Runtime, torch)."""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import costmodels
from hwsearch import prune
from hwsearch.core import records
from hwsearch.core.plan import Plan
from hwsearch.deploy import DenseBaseline, dense_baseline, measure_round, speedup_text
from hwsearch.graph import ModelGraph
from hwsearch.measure import measure_model, plan_record
from hwsearch.searching.config import DENSE_PLAN, SearchConfig
from hwsearch.searching.evaluator import Evaluator
from hwsearch.searching.front import kernel_configs
from targets.spec import TargetSpec

__all__ = ["dense_baseline_for", "measure_each", "measure_sitting"]

log = logging.getLogger(__name__)


def dense_baseline_for(target: TargetSpec, graph: ModelGraph, cfg: SearchConfig, out: Path, tvm_dir: Path,
                       say: Callable[[str], None]) -> DenseBaseline:
    """The dense model timed in each runtime of ``target`` (:func:`hwsearch.deploy.dense_baseline`),
    printed; kept in ``<out>/dense_baseline.json`` so a resumed search chooses as the first did."""
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


def measure_each(todo: list[tuple[Plan, float]], *, graph: ModelGraph, ev: Evaluator, target: TargetSpec,
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


def measure_sitting(todo: list[tuple[Plan, float]], *, graph: ModelGraph, ev: Evaluator, target: TargetSpec,
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
