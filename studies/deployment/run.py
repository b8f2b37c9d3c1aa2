"""Study: what a user gets — the dense model in every host runtime, and at budgets of 0.7× and
0.5× of the *fastest* dense latency the search's pick against Torch-Pruning's uniform channel
pruning and a NetAdapt-style greedy, each measured in ONNX Runtime and torch, accuracy beside.

For each model (the reference 1-D CNN on MNIST-1D; a MobileNetV2-style 2-D net on scikit-learn's
digits upsampled to 3×32×32, ``hwsearch.zoo2d``):

1. **Dense per runtime.** ONNX Runtime and torch in an interleaved sitting (3 fresh processes),
   then TVM tuned by MetaSchedule (``--tvm-trials``, its own process: the tuning minutes are
   recorded), then ONNX Runtime again: TVM's ratio is to the mean of the two ONNX Runtime
   sittings around it.
2. **Search** per budget in the fastest runtime (``hwsearch.search``, the budget a hard
   constraint: rounds of Optuna trials priced by the cost model, the picks measured against the
   dense model in interleaved sittings, refit).
3. **Candidates** of every method scored by the search's ``Evaluator`` (validation accuracy
   after BatchNorm recalibration, no fine-tuning) and priced by the search's final cost model:
   every trial of the search; uniform channel pruning at 5–90 % (folded by Torch-Pruning's
   dependency graph); NetAdapt-style greedy channel pruning down to the budget.
4. **Shortlist and measure.** Per method and budget *b*: the most accurate candidate predicted
   within *b* × (1 − margin) of the fastest dense latency for margins 0, 5, 10 %; every
   shortlisted configuration and the dense model in one interleaved sitting in ONNX Runtime and
   torch (3 fresh processes each). A baseline's pick: its shortlisted plans whose *measured*
   speed-up over the dense model in the fastest runtime is at least 1/*b*, each fine-tuned
   (``--finetune-steps``), the most accurate after fine-tuning.
5. **The search's pick and what ships.** What ``hwsearch export --finetune-steps N
   --finetune-candidates K --max-drop D`` ships from the search's output: the search's own
   measured plans that met the budget (measured in its sittings), the K most accurate as cut
   fine-tuned, the fastest within D after fine-tuning (``hwsearch.finetuned_pick``). Its
   ``model.onnx`` is timed against the dense ``model.onnx`` in one sitting and its accuracy
   evaluated by ONNX Runtime.

Writes ``results.csv`` (picks and dense rows), ``shortlist.csv``, ``dense.csv``,
``deployment.png``, ``provenance.json`` and the tables in ``README.md``::

    python studies/deployment/run.py             # [--models mnist1d_cnn,mobilenet_digits] [--quick]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from costmodels.batch import BatchPricer
from hwsearch import baselines, deploy, exporting, prune, recalibrate, zoo
from hwsearch.core import records
from hwsearch.graph import analyze
from hwsearch.measure import measure_model
from hwsearch.core.plan import Plan
from hwsearch.searching import Evaluator, SearchConfig, fit_cost_model, open_storage, search
from targets.runtimes import SittingConfig, measure_sitting, runtime_versions
from targets.spec import get_target

log = logging.getLogger("deployment-study")
HERE = Path(__file__).resolve().parent
MODELS = {"mnist1d_cnn": ("hwsearch.zoo:mnist1d_cnn", "hwsearch.zoo:mnist1d_data"),
          "mobilenet_digits": ("hwsearch.zoo2d:mobilenet_digits", "hwsearch.zoo2d:digits_data")}
METHODS = ("hwsearch", "uniform-channel", "netadapt")
MARGINS = (0.0, 0.05, 0.10)
#: The README's hand-written reading of the results starts at this heading; a re-run keeps it.
_NOTES = "## What this says"


def dense_per_runtime(graph, work: Path, args) -> dict[str, Any]:
    """ONNX Runtime + torch sitting, TVM tuned, ONNX Runtime sitting again."""
    host = get_target("host-x86")
    first = deploy.dense_baseline(host, graph, work_dir=work, runtimes=("onnxruntime", "torch"), passes=args.passes)
    t0 = time.perf_counter()
    tvm_work = Path(args.tvm_work) / work.name if args.tvm_work else work / "tvm"
    tvm = measure_model(host, graph, graph.model, work_dir=tvm_work, mode="tuned", tuning_trials=args.tvm_trials)
    tvm_s = time.perf_counter() - t0
    second = deploy.dense_baseline(host, graph, work_dir=work, runtimes=("onnxruntime",), passes=args.passes)
    ort = float(np.mean([first.latency_s["onnxruntime"], second.latency_s["onnxruntime"]]))
    rows = [{"runtime": "onnxruntime", "latency_us": ort * 1e6, "ratio_to_ort": 1.0,
             "how": f"mean of 2 sittings ({first.latency_s['onnxruntime'] * 1e6:.1f}, "
                    f"{second.latency_s['onnxruntime'] * 1e6:.1f} µs), {args.passes} fresh processes each",
             "version": first.versions.get("onnxruntime")},
            {"runtime": "torch", "latency_us": first.latency_s["torch"] * 1e6,
             "ratio_to_ort": first.latency_s["torch"] / first.latency_s["onnxruntime"],
             "how": "interleaved with the first ONNX Runtime sitting", "version": first.versions.get("torch")}]
    if tvm.get("latency_s"):
        rows.append({"runtime": "tvm (MetaSchedule-tuned)", "latency_us": tvm["latency_s"] * 1e6,
                     "ratio_to_ort": tvm["latency_s"] / ort,
                     "how": f"{args.tvm_trials} trials, tuning+build {tvm_s / 60:.1f} min, {tvm.get('repeats')} repeats; "
                            f"database {tvm_work}" + (f"; {'; '.join(tvm.get('notes') or [])}" if tvm.get("notes") else ""),
                     "version": (tvm.get("versions") or {}).get("tvm")})
    else:
        rows.append({"runtime": "tvm (MetaSchedule-tuned)", "latency_us": math.nan, "ratio_to_ort": math.nan,
                     "how": f"failed: {tvm.get('error')}", "version": ""})
    return {"rows": rows, "tvm_minutes": tvm_s / 60, "ort_s": ort, "torch_s": first.latency_s["torch"],
            "tvm_s": tvm.get("latency_s")}


def candidates(graph, ev: Evaluator, cm, cfg: SearchConfig, budget_s: float, pricer: BatchPricer) -> pd.DataFrame:
    storage = open_storage(cfg.storage_url())
    rows, seen = [], set()
    for rnd in range(1, cfg.rounds + 1):
        study = optuna.load_study(study_name=f"{cfg.study_name}-round{rnd}", storage=storage)
        for t in study.trials:
            key = t.user_attrs.get("plan_key")
            if t.state == optuna.trial.TrialState.COMPLETE and key and key not in seen:
                seen.add(key)
                rows.append({"method": "hwsearch", "plan_key": key, "plan": t.user_attrs["plan"],
                             "accuracy": float(t.values[0])})
    uni = baselines.evaluate_plans(ev, [baselines.uniform(graph, r, "channel") for r in np.arange(0.05, 0.91, 0.05)],
                                   method="uniform-channel").table
    na = baselines.netadapt(graph, ev, cm, budget_s, step=0.05).table
    na = na.assign(method="netadapt")
    df = pd.concat([pd.DataFrame(rows), uni[["method", "plan_key", "plan", "accuracy"]],
                    na[["method", "plan_key", "plan", "accuracy"]]], ignore_index=True)
    df = df[df["accuracy"].notna()].reset_index(drop=True)
    df["predicted_latency_s"] = pricer.price_plans([Plan.from_dict(p) for p in df["plan"]])["latency_s"]
    return df


def finetuned_accuracy(graph, ev: Evaluator, plan: Plan, data, steps: int) -> float:
    """Validation accuracy of the folded plan after BatchNorm recalibration and ``steps`` steps of
    fine-tuning (Adam, lr 1e-3) on the training split: what a user ships after a short fine-tune."""
    import torch

    folded = prune.apply(graph, ev.decisions(plan), mode="fold")
    if ev.bn_batches is not None:
        recalibrate.recalibrate_bn(folded, ev.bn_batches())
    torch.manual_seed(0)
    zoo.train(folded, data, steps=steps, lr=1e-3)
    return zoo.evaluate(folded.eval(), data)


def onnx_accuracy(path: Path, data) -> float:
    """Validation accuracy of a shipped ``model.onnx`` run by ONNX Runtime, one input at a time
    (the export's batch size)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = data.x_val.numpy()
    pred = [int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))]
    return float(np.mean(np.array(pred) == data.y_val.numpy()))


def shortlist(cands: pd.DataFrame, budget_s: float) -> pd.DataFrame:
    out = []
    for m in METHODS:
        c = cands[cands.method == m]
        for margin in MARGINS:
            ok = c[c.predicted_latency_s <= budget_s * (1 - margin)]
            if len(ok):
                out.append(ok.sort_values(["accuracy", "predicted_latency_s"], ascending=[False, True]).iloc[0]
                           .to_dict() | {"margin": margin})
    return pd.DataFrame(out).drop_duplicates(subset=["method", "plan_key"]).reset_index(drop=True)


def baseline_pick(ok: pd.DataFrame, cands: pd.DataFrame, graph, ev: Evaluator, data, dense_acc: float,
                  args) -> dict:
    """A baseline's pick: each of its shortlisted plans that met the budget when measured is
    fine-tuned; the most accurate after fine-tuning (as generous as the search's rule)."""
    best = None
    for _, r in ok.iterrows():
        row = r.to_dict()
        if args.finetune_steps > 0:
            plan_d = next(p for k, p in zip(cands.plan_key, cands.plan) if k == r.plan_key)
            row["accuracy_finetuned"] = finetuned_accuracy(graph, ev, Plan.from_dict(plan_d), data, args.finetune_steps)
            row["finetuned_drop_pts"] = 100 * (dense_acc - row["accuracy_finetuned"])
        key = row.get("accuracy_finetuned", row["accuracy"])
        if best is None or key > best.get("accuracy_finetuned", best["accuracy"]):
            best = row
    return best


def search_pick(name: str, frac: float, cfg: SearchConfig, graph, dense_acc: float, args,
                work: Path) -> tuple[dict, dict]:
    """The search's pick: the plan ``hwsearch export`` ships (``exporting.from_search`` with the
    fine-tune: the search's measured plans that met the budget, fine-tuned, the fastest within
    ``--max-drop``), its shipped ``model.onnx`` timed against the dense ``model.onnx``."""
    row = {"model": name, "budget_frac": frac, "method": "hwsearch"}
    bdir = work / name / f"export-{int(frac * 100)}"
    try:
        _, manifest = exporting.from_search(cfg.out_dir, max_drop=args.max_drop, out=bdir,
                                            finetune_steps=args.finetune_steps,
                                            finetune_candidates=args.finetune_candidates if args.finetune_steps else 0)
    except exporting.NoPlanWithinDrop as exc:
        return row | {"describe": f"nothing exported: {str(exc)[:200]}"}, {}
    plan = Plan.from_dict(manifest["plan"])
    meas = manifest.get("measured") or {}
    tried = {t["plan_key"]: t for t in manifest.get("finetune_candidates", [])}
    row.update({"plan_key": plan.key, "describe": plan.compact(), "accuracy": meas.get("accuracy"),
                "accuracy_drop_pts": 100 * (dense_acc - meas["accuracy"]) if meas.get("accuracy") is not None else None,
                "ort_speedup": meas.get("speedup_vs_fastest"), "ort_speedup_lo": meas.get("speedup_vs_fastest_lo"),
                "ort_speedup_hi": meas.get("speedup_vs_fastest_hi"), "finetune_candidates": len(tried)})
    if plan.key in tried:
        row["accuracy_finetuned"] = tried[plan.key]["accuracy_finetuned"]
        row["finetuned_drop_pts"] = 100 * (dense_acc - row["accuracy_finetuned"])
    exporting.bundle(graph, Plan(), get_target("host-x86").with_runtime("onnxruntime"), work / name / "export-dense",
                     channel_multiple=cfg.channel_multiple)
    ship = measure_sitting({"dense": work / name / "export-dense" / "model.onnx", "pick": bdir / "model.onnx"},
                           graph.example_inputs, work_dir=work / name / f"ship-{int(frac * 100)}",
                           runtimes=("onnxruntime",), reference="dense",
                           config=SittingConfig(passes=args.passes, rounds=15))
    data = zoo.load_data(MODELS[name][1])
    s = ship[("pick", "onnxruntime")]
    shipped = {"plan_key": plan.key, "speedup": s.speedup, "lo": s.speedup_lo, "hi": s.speedup_hi,
               "accuracy": onnx_accuracy(bdir / "model.onnx", data), "finetune_steps": args.finetune_steps,
               "latency_us": s.latency_s * 1e6 if s.latency_s else None, "error": s.error}
    row.update({"shipped_onnx_speedup": s.speedup, "shipped_onnx_lo": s.speedup_lo, "shipped_onnx_hi": s.speedup_hi,
                "shipped_accuracy": shipped["accuracy"], "shipped_drop_pts": 100 * (dense_acc - shipped["accuracy"])})
    return row, shipped


def run_model(name: str, args, work: Path) -> tuple[list[dict], list[dict], dict]:
    model_spec, data_spec = MODELS[name]
    model, ex = zoo.load_model(model_spec)
    data = zoo.load_data(data_spec)
    graph = analyze(model, ex if ex is not None else data.example_input)
    log.info("%s: %d prunable layers, %d channel groups", name, len(graph.table), len(graph.groups))
    dense = dense_per_runtime(graph, work / name, args)
    fast_rt = "onnxruntime" if dense["ort_s"] <= min(dense["torch_s"], dense["tvm_s"] or math.inf) else (
        "torch" if dense["torch_s"] <= (dense["tvm_s"] or math.inf) else "tvm")
    target = get_target("host-x86").with_runtime("onnxruntime")
    dense_acc = None
    results, short_rows = [], []
    info = {"model": name, "layers": len(graph.table), "groups": len(graph.groups), "fastest_runtime": fast_rt,
            "dense": dense["rows"], "tvm_minutes": dense["tvm_minutes"], "searches": {}}
    for frac in args.budgets:
        # the budget is relative: frac x the dense model in ONNX Runtime, timed when the search starts
        # (the machine's speed drifts between sittings; the search re-anchors on its own baseline)
        cfg = SearchConfig(out_dir=work / name / f"search-{int(frac * 100)}", model=model_spec, data=data_spec,
                           runtime="onnxruntime", baseline_runtimes=("onnxruntime",), latency_budget_x=frac,
                           rounds=args.rounds, trials=args.trials, measure_top_k=args.measure_top_k,
                           max_accuracy_drop=args.max_drop,
                           passes=2, sitting_rounds=10, seed=0, polish_trials=args.polish_trials)
        t0 = time.perf_counter()
        res = search(cfg, progress=lambda m: log.info("  %s", m))
        search_s = time.perf_counter() - t0
        budget_s = frac * res.baseline.fastest_latency_s  # on the scale of the search's cost model
        cfg = res.config if res.config.latency_budget_s else cfg
        recs = records.load(cfg.out_dir / "measurements.jsonl")
        cm, _ = fit_cost_model(target, graph, recs, cfg)
        ev = Evaluator(graph, data, target, cm, cfg)
        dense_acc = ev.accuracy(ev.decisions(Plan()))
        pricer = BatchPricer(graph, target, cm, channel_multiple=cfg.channel_multiple, min_density=cfg.min_density)
        cands = candidates(graph, ev, cm, cfg, budget_s, pricer)
        short = shortlist(cands, budget_s)
        folded = {}
        for _, r in short.iterrows():
            folded[r.plan_key] = prune.apply(graph, ev.decisions(Plan.from_dict(r.plan)), mode="fold")
        meas = measure_sitting({"dense": graph.model, **folded}, graph.example_inputs,
                               work_dir=work / name / f"sitting-{int(frac * 100)}", runtimes=("onnxruntime", "torch"),
                               reference="dense", config=SittingConfig(passes=args.passes, rounds=15))
        d_ort = meas[("dense", "onnxruntime")]
        for _, r in short.iterrows():
            o, t = meas[(r.plan_key, "onnxruntime")], meas[(r.plan_key, "torch")]
            # vs the fastest dense runtime: ONNX Runtime here (checked in dense_per_runtime)
            short_rows.append({"model": name, "budget_frac": frac, "method": r.method, "margin": r.margin,
                               "plan_key": r.plan_key, "describe": Plan.from_dict(r.plan).compact(),
                               "accuracy": r.accuracy, "accuracy_drop_pts": 100 * (dense_acc - r.accuracy),
                               "predicted_us": r.predicted_latency_s * 1e6,
                               "ort_us": o.latency_s * 1e6 if o.latency_s else math.nan,
                               "ort_speedup": o.speedup, "ort_speedup_lo": o.speedup_lo, "ort_speedup_hi": o.speedup_hi,
                               "torch_us": t.latency_s * 1e6 if t.latency_s else math.nan, "torch_speedup": t.speedup,
                               "meets_budget": bool(o.speedup and o.speedup >= 1 / frac), "error": o.error or t.error})
        sl = pd.DataFrame([s for s in short_rows if s["model"] == name and s["budget_frac"] == frac])
        shipped = {}
        for m in METHODS:
            if m == "hwsearch":  # what `hwsearch export --finetune-steps N` ships, timed against dense
                pick, shipped = search_pick(name, frac, cfg, graph, dense_acc, args, work)
            else:
                ok = sl[(sl.method == m) & sl.meets_budget] if len(sl) else sl
                pick = baseline_pick(ok, cands, graph, ev, data, dense_acc, args) if len(ok) else {
                    "model": name, "budget_frac": frac, "method": m, "describe": "no shortlisted plan met the budget"}
            results.append(pick)
        info["searches"][str(frac)] = {"budget_us": budget_s * 1e6, "search_s": search_s, "shipped": shipped,
                                       "dense_ort_us_in_sitting": d_ort.latency_s * 1e6 if d_ort.latency_s else None,
                                       "measured_plans_in_search": len([r for r in recs if not r.get("error")])}
    for r in dense["rows"]:
        results.append({"model": name, "method": f"dense ({r['runtime']})", "accuracy": dense_acc,
                        "latency_us": r["latency_us"], "ratio_to_ort": r["ratio_to_ort"], "describe": r["how"]})
    return results, short_rows, info


def plot(short: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(short.model))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.4), squeeze=False)
    colors = {"hwsearch": "#d62728", "uniform-channel": "#2ca02c", "netadapt": "#1f77b4"}
    for ax, m in zip(axes[0], models):
        s = short[short.model == m]
        for meth, c in colors.items():
            x = s[s.method == meth]
            ax.errorbar(x.ort_speedup, x.accuracy, xerr=[x.ort_speedup - x.ort_speedup_lo, x.ort_speedup_hi - x.ort_speedup],
                        fmt="o", color=c, label=meth, ms=5, lw=0.8)
        for b in sorted(set(s.budget_frac)):
            ax.axvline(1 / b, color="k", ls=":", lw=1)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("measured speed-up over dense ONNX Runtime (95% CI of the median)")
        ax.set_ylabel("validation accuracy (BN recalibrated, no fine-tuning)")
        ax.set_title(f"{m}: shortlisted plans (dotted: 1/budget)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def write_readme(res: pd.DataFrame, infos: list[dict], prov: dict, path: Path) -> None:
    """The study's README: how it was run, then the tables (from results.csv / dense.csv)."""
    runs = "; ".join(f"`{i['model']}`: `python studies/deployment/run.py {' '.join(i.get('argv') or [])}` on "
                     f"{str(i.get('date', ''))[:16].replace('T', ' ')} UTC, {_f(i.get('minutes'), '.0f')} min on "
                     f"{i.get('machine', prov['machine'])}" for i in infos)
    lines = [
        "# What a user gets: dense runtimes, and the search vs baselines at 0.7× / 0.5× of the fastest dense latency",
        "",
        f"Generated from the per-model parts in `parts/` ({runs}; shared 2-core VM; ONNX Runtime "
        f"{prov['versions'].get('onnxruntime')}, torch {prov['versions'].get('torch')}, apache-tvm "
        f"{prov['versions'].get('tvm', '?')}). Every latency is a median; "
        "every speed-up is a ratio measured *interleaved in one sitting* against the dense model, with the 95 % "
        "confidence interval of the median paired ratio. The protocol is in `run.py`'s docstring. Earlier runs "
        "and what changed between them: `history.md`.",
        "",
        "## Dense model per runtime",
        "",
        "| model | runtime | latency µs | × ONNX Runtime | how |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in infos:
        for r in i["dense"]:
            lines.append(f"| {i['model']} | {r['runtime']} {r.get('version') or ''} | {_f(r['latency_us'], '.1f')} | "
                         f"{_f(r['ratio_to_ort'], '.2f')} | {r['how']} |")
    lines += ["", "## Picks at each budget (measured in ONNX Runtime, the fastest dense runtime)", "",
              "A baseline's pick: of its shortlisted plans whose measured speed-up over the dense model is at "
              "least 1/budget, the most accurate after fine-tuning. The search's pick: what `hwsearch export "
              f"--finetune-steps {prov.get('finetune_steps', 0)} --finetune-candidates "
              f"{prov.get('finetune_candidates', 0)} --max-drop {prov.get('max_drop', 0.02)}` ships (the search's "
              "measured plans that met the budget, fine-tuned, the fastest within the drop; its speed-up is the "
              "search's own measurement). Accuracy: validation accuracy after BatchNorm recalibration (what the "
              "search scores), and after the fine-tune (what a user ships; Adam 1e-3). Shipped: the exported "
              "`model.onnx` timed against the dense `model.onnx`, its accuracy run by ONNX Runtime.",
              "",
              "| model | budget | method | plan | acc. (drop pts) | acc. fine-tuned (drop) | speed-up ORT [95% CI] | "
              "speed-up torch | shipped ONNX speed-up [95% CI], accuracy (drop) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    picks = res[res.method.isin(METHODS)]
    for _, r in picks.iterrows():
        ci = (f"{_f(r.get('ort_speedup'), '.2f')}× [{_f(r.get('ort_speedup_lo'), '.2f')}–"
              f"{_f(r.get('ort_speedup_hi'), '.2f')}]") if r.get("ort_speedup") == r.get("ort_speedup") else "–"
        ship = (f"{_f(r.get('shipped_onnx_speedup'), '.2f')}× [{_f(r.get('shipped_onnx_lo'), '.2f')}–"
                f"{_f(r.get('shipped_onnx_hi'), '.2f')}], accuracy {_f(r.get('shipped_accuracy'), '.3f')} "
                f"({_f(r.get('shipped_drop_pts'), '.1f')})") if r.get("shipped_onnx_speedup") == r.get(
                    "shipped_onnx_speedup") and r.get("shipped_onnx_speedup") is not None else "–"
        lines.append(f"| {r['model']} | {_f(r['budget_frac'], '.0%')} | {r['method']} | {r['describe']} | "
                     f"{_f(r.get('accuracy'), '.3f')} ({_f(r.get('accuracy_drop_pts'), '.1f')}) | "
                     f"{_f(r.get('accuracy_finetuned'), '.3f')} ({_f(r.get('finetuned_drop_pts'), '.1f')}) | {ci} | "
                     f"{_f(r.get('torch_speedup'), '.2f')}{'×' if r.get('torch_speedup') == r.get('torch_speedup') else ''} | "
                     f"{ship} |")
    lines += ["", "`shortlist.csv` has every measured plan; `deployment.png` plots them; `provenance.json` the "
              "machine, versions, budgets in µs and search times.", ""]
    old = path.read_text() if path.exists() else ""
    keep = old[old.index(_NOTES):] if _NOTES in old else _NOTES + "\n\n(Written by hand after a run.)\n"
    path.write_text("\n".join(lines) + "\n" + keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mnist1d_cnn,mobilenet_digits")
    p.add_argument("--budgets", default="0.7,0.5")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--polish-trials", type=int, default=20)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--tvm-trials", type=int, default=256)
    p.add_argument("--tvm-work", default="", help="folder holding one TVM work dir per model (its tuning database): "
                   "kernels with records there are not tuned again (e.g. studies/tvm_tuning's); default: --work/MODEL/tvm")
    p.add_argument("--assemble", action="store_true", help="measure nothing: rebuild the tables from the saved "
                   "per-model parts (OUT/parts/*.json)")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tune steps for each method's pick and the "
                   "shipped model (0: none)")
    p.add_argument("--finetune-candidates", type=int, default=5, help="measured plans of the search fine-tuned before "
                   "its pick (hwsearch export --finetune-candidates)")
    p.add_argument("--max-drop", type=float, default=0.02, help="accepted accuracy drop (absolute) for the search's pick")
    p.add_argument("--measure-top-k", type=int, default=5, help="plans the search measures per round")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hwsearch-deployment")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script (minutes)")
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    if args.quick:
        args.trials, args.rounds, args.passes, args.tvm_trials, args.finetune_steps = 20, 1, 1, 8, 20
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("torch", "optuna", "torch_pruning", "tvm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    parts = args.out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for name in ([] if args.assemble else args.models.split(",")):
        t1 = time.perf_counter()
        r, s, i = run_model(name, args, args.work)
        i.update(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), machine=deploy_cpu(),
                 argv=sys.argv[1:], minutes=(time.perf_counter() - t1) / 60)
        # one part per model, written as soon as it is measured: a later run of another model (or a
        # run cut short) keeps it, and the tables are assembled from every part there is
        (parts / f"{name}.json").write_text(json.dumps({"results": r, "short": s, "info": i}, indent=1, default=str))
    allres, allshort, infos = [], [], []
    for name in [m for m in MODELS if (parts / f"{m}.json").exists()]:
        part = json.loads((parts / f"{name}.json").read_text())
        allres += part["results"]
        allshort += part["short"]
        infos.append(part["info"])
    if not infos:
        log.error("no measured model in %s: run without --assemble first", parts)
        return 2
    res, short = pd.DataFrame(allres), pd.DataFrame(allshort)
    res.to_csv(args.out / "results.csv", index=False)
    short.to_csv(args.out / "shortlist.csv", index=False)
    pd.DataFrame([dict(r, model=i["model"]) for i in infos for r in i["dense"]]).to_csv(args.out / "dense.csv",
                                                                                       index=False)
    if len(short):
        plot(short, args.out / "deployment.png")
    prov = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": deploy_cpu(), "python": platform.python_version(), "versions": runtime_versions() | {
                "tvm": _dist_version("apache-tvm"), "xgboost": _dist_version("xgboost-cpu")},
            "argv": sys.argv[1:], "minutes": (time.perf_counter() - t0) / 60, "models": infos}
    prov.update(finetune_steps=args.finetune_steps, finetune_candidates=args.finetune_candidates,
                max_drop=args.max_drop)
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    if args.out.resolve() == HERE.resolve():
        write_readme(res, infos, prov, args.out / "README.md")
    else:
        write_readme(res, infos, prov, args.out / "README.generated.md")
    log.info("wrote %s in %.1f min", args.out, prov["minutes"])
    return 0


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def deploy_cpu() -> str:
    from targets.tvm._env import cpu_model

    return cpu_model()


if __name__ == "__main__":
    sys.exit(main())
