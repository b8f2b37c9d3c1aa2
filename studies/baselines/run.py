"""Study: the hwsearch search against four baselines at two latency budgets, measured with TVM.

On the reference model (``hwsearch.zoo:mnist1d_cnn``, MNIST-1D) and the ``host-x86`` target:

1. measure, back to back, the dense model, uniformly channel-pruned plans (25 %, 50 %) and a
   few random channel plans, and refit the roofline cost model on them (``fit_cost_model``):
   this one model prices the candidates of every method, so they are compared on equal terms;
2. run the hwsearch loop once per budget, the budget a hard constraint (``hwsearch.search``:
   2 rounds × 150 trials, one Pareto plan measured per round), starting from that model and
   sharing the study's TVM schedule database;
3. produce candidates: every trial plan of the search; :func:`hwsearch.baselines.uniform`
   channel pruning at ratios 0.05…0.90; :func:`~hwsearch.baselines.global_magnitude` at
   sparsities 0.1…0.9; :func:`~hwsearch.baselines.netadapt` down to the tighter budget;
   :func:`~hwsearch.baselines.random_search` in the search's space with as many plans as the
   search scored — all scored by the search's :class:`~hwsearch.searching.Evaluator` (masked
   weights, BatchNorm recalibrated, validation accuracy; no fine-tuning);
4. for each budget *b* (70 % and 50 % of the dense latency) and method, shortlist the most
   accurate plan whose *predicted* latency is at most *b* × (1 − margin) × the predicted dense
   latency for margins 0, 3 and 6 %; fold and measure every shortlisted plan and the dense model
   with TVM quick mode (:func:`hwsearch.measure.measure_model`) in alternating passes; the
   method's pick is its most accurate shortlisted plan that meets the budget *when measured*;
   report accuracy (and, for information, accuracy after a short fine-tune), measured latency,
   speed-up over dense and the MAC-ratio limit;
5. write ``results.csv`` (the picks), ``shortlist.csv`` (every measured plan),
   ``candidates.csv`` (every scored plan), ``baselines.png`` and ``README.md``.

Runs in about 25 minutes on 2 cores (TVM measurements dominate)::

    python studies/baselines/run.py               # [--out DIR] [--work DIR] [--trials 150] [--quick]

``--work`` (default ``$TMPDIR/hwsearch-baselines``) keeps the search's studies, measurements and
TVM schedule database: a rerun resumes and reuses them.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

import costmodels
from costmodels.batch import BatchPricer
from hwsearch import baselines, prune, zoo
from hwsearch.graph import analyze
from hwsearch.measure import measure_model, plan_record, versions
from hwsearch.core.plan import Plan
from hwsearch.searching import Evaluator, SearchConfig, config_key, fit_cost_model, open_storage, search
from hwsearch.space import SearchSpace
from targets.spec import get_target

log = logging.getLogger("baselines-study")
HERE = Path(__file__).resolve().parent
METHODS = ("hwsearch", "netadapt", "uniform-channel", "random", "global-magnitude")


def search_candidates(cfg: SearchConfig, graph, pricer: BatchPricer) -> pd.DataFrame:
    """Every completed trial of every round of the search, re-priced with ``pricer``."""
    storage = open_storage(cfg.storage_url())
    rows = []
    seen: set[str] = set()
    for rnd in range(1, cfg.rounds + 1):
        study = optuna.load_study(study_name=f"{cfg.study_name}-round{rnd}", storage=storage)
        for t in study.trials:
            key = t.user_attrs.get("plan_key")
            if t.state != optuna.trial.TrialState.COMPLETE or key is None or key in seen:
                continue
            seen.add(key)
            rows.append({"method": "hwsearch", "step": t.number + 1000 * rnd, "plan_key": key,
                         "plan": t.user_attrs["plan"], "describe": Plan.from_dict(t.user_attrs["plan"]).describe(),
                         "accuracy": float(t.values[0]), "error": None})
    df = pd.DataFrame(rows)
    plans = [Plan.from_dict(p) for p in df["plan"]]
    priced = pricer.price_plans(plans)
    df["predicted_latency_s"] = priced["latency_s"]
    df["flash_bytes"] = priced["flash_bytes"]
    df["sram_bytes"] = priced["sram_bytes"]
    df["dense_macs"] = priced["macs"]
    return df


def nonzero_macs(graph, plan: Plan, cfg: SearchConfig) -> int:
    from hwsearch.core.resolve import resolve

    res = resolve(graph.table, graph.groups, plan, channel_multiple=cfg.channel_multiple, min_density=cfg.min_density)
    return int(round(float((res["dense_macs"] * res["weight_density"]).sum())))


class Measurer:
    """Measures folded plans with TVM, once per plan key. The search's own records are not
    reused: every latency of the comparison is measured in the same phase of the run, so a change
    of machine load between the search and the comparison cannot tilt it."""

    def __init__(self, target, graph, ev: Evaluator, work_dir: Path) -> None:
        self.target, self.graph, self.ev, self.work_dir = target, graph, ev, work_dir
        self.cache: dict[str, dict] = {}
        self.seconds = 0.0
        self.count = 0

    def __call__(self, plan: Plan, *, again: bool = False) -> dict[str, Any]:
        if plan.key in self.cache and not again:
            return self.cache[plan.key]
        t0 = time.perf_counter()
        folded = prune.apply(self.graph, self.ev.decisions(plan), mode="fold")
        cfg = self.ev.cfg
        rec = measure_model(self.target, self.graph, folded, work_dir=self.work_dir, mode="quick",
                            samples=cfg.samples, repeats=cfg.repeats, min_repeat_ms=cfg.min_repeat_ms)
        self.seconds += time.perf_counter() - t0
        self.count += 1
        log.info("measured [%s] %s: %s", plan.key, plan.describe(),
                 f"{rec['latency_s'] * 1e6:.1f} µs" if rec.get("latency_s") else rec.get("error"))
        if not rec.get("error"):
            self.cache[plan.key] = rec
        return rec


def plot(cands: pd.DataFrame, res: pd.DataFrame, pred_dense_s: float, dense_s: float, budgets: list[float],
         path: Path, short: pd.DataFrame | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd")))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    for m in METHODS:
        c = cands[(cands.method == m) & cands.error.isna()]
        a.scatter(c.predicted_latency_s * 1e6, c.accuracy, s=10, alpha=0.5, color=colors[m], label=m)
    for bf in budgets:
        a.axvline(bf * pred_dense_s * 1e6, color="k", ls=":", lw=1)
        b.axvline(bf * dense_s * 1e6, color="k", ls=":", lw=1)
    a.set_xlabel("predicted latency (µs, refit roofline model)")
    a.set_ylabel("validation accuracy (no fine-tuning)")
    a.set_title("Every scored candidate")
    a.legend(fontsize=8)
    marks = dict(zip(budgets, ("o", "s", "^", "D")))
    if short is not None:   # every measured shortlisted plan, hollow; the picks filled
        for _, r in short[short.measured_latency_us.notna()].iterrows():
            b.scatter(r.measured_latency_us, r.accuracy, facecolor="none", edgecolor=colors.get(r.method, "k"),
                      marker=marks.get(r.budget_frac, "x"), s=30, lw=0.8)
    for _, r in res[res.measured_latency_us.notna() & (res.method != "dense")].iterrows():
        b.scatter(r.measured_latency_us, r.accuracy, color=colors.get(r.method, "k"),
                  marker=marks.get(r.budget_frac, "x"), s=50)
    d = res[res.method == "dense"]
    if len(d):
        b.scatter(d.measured_latency_us, d.accuracy, color="k", marker="*", s=120, label="dense")
    for m in METHODS:
        b.scatter([], [], color=colors[m], label=m)
    for bf, mk in marks.items():
        b.scatter([], [], color="w", edgecolor="k", marker=mk, label=f"budget {bf:.0%}")
    b.set_xlabel("measured latency (µs, TVM quick mode)")
    b.set_ylabel("validation accuracy")
    b.set_title("Measured: shortlisted (hollow) and picked (filled)")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_readme(res: pd.DataFrame, info: dict[str, Any], path: Path, short: pd.DataFrame | None = None) -> None:
    def f(x: Any, fmt: str) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [
        "# hwsearch search vs baselines (reference model, host-x86, TVM quick mode)",
        "",
        f"Generated by `python studies/baselines/run.py{info['args']}` in {info['total_s'] / 60:.1f} min "
        f"({info['measurements']} new TVM measurements, {info['measure_s']:.0f} s). "
        "One run on a shared, noisy 2-core machine; quick-mode latencies (best of "
        f"{info['samples']} sampled schedules per kernel) rank plans but are not tuned deployments.",
        "",
        "**Setting.** Model `hwsearch.zoo:mnist1d_cnn` (7 conv/linear layers: strided conv, residual "
        "block, depthwise, pointwise, linear head). Every method's plans are scored by the search's "
        "`Evaluator`: MNIST-1D validation accuracy of the masked model after re-estimating its BatchNorm "
        f"statistics on {info.get('bn_recalibration', 0)} training batches (adaptive BN, EagleEye; no weight "
        f"update, **no fine-tuning**), magnitude criterion, `min_density={info['min_density']}`, channels "
        f"rounded to multiples of {info['channel_multiple']}. "
        f"Budgets are {', '.join(f'{b:.0%}' for b in info['budgets'])} of the dense model's latency. "
        "Every method's candidates are priced by one cost model: the roofline model refit on the dense "
        f"model and {info['calibration']} measured back to back first "
        f"({info['calibration_s']:.0f} s; {info['fit_n']} plans, mean error {info['fit_mape']:.1%} on them); it predicts "
        f"{info['pred_dense_us']:.1f} µs for the dense model. The search runs once per budget, the budget a hard "
        "constraint, starting from that model and refitting it on its own measurements, as a user with a "
        "budget would run it; it shares the comparison's TVM schedule database, so a plan runs the same kernels "
        "in both. For each method and budget *b* the shortlist is the most accurate candidate whose "
        "predicted latency (by the shared model) is at most *b* × (1 − margin) × the predicted dense latency, "
        f"for each margin in {', '.join(f'{x:.0%}' for x in info.get('margins', [0.0]))}: the same few "
        "measurements for every method, so none is judged on a single plan that the model's error of a few "
        "percent pushes over the budget. The dense model and every shortlisted plan are measured in "
        f"{info.get('passes', 1)} passes, "
        "alternately forward and reversed (a drift of the machine's load weighs on all alike), each in a "
        "fresh process; a plan's latency is the median of its passes (the dense model's: "
        f"{', '.join(str(x) for x in info['dense_runs_us'])} µs; 1-min load average "
        f"{info['load_before_measuring']} before, {info['load_after_measuring']} after). A method's **pick** is "
        "its most accurate shortlisted plan whose measured latency meets the budget (so every pick compared "
        "is within the same measured latency); if none does, its fastest one, marked *no*. "
        "`shortlist.csv` lists every shortlisted plan with its measurements.",
        "",
        f"| method | budget | within budget (predicted) | measured | plan | accuracy | accuracy after {info['finetune_steps']}-step fine-tune | "
        "predicted µs | measured µs (IQR) | speed-up vs dense | MAC-ratio limit | meets budget (measured) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for _, r in res.iterrows():
        budget = "–" if r.method == "dense" else f"{r.budget_frac:.0%} ({r.budget_us:.1f} µs)"
        # r["describe"], not r.describe: that is pandas' Series.describe method
        plan = r["describe"] if isinstance(r["describe"], str) else (r["note"] if isinstance(r["note"], str) else "")
        if len(plan) > 70:
            plan = plan[:67] + "…"
        meets = "–" if r.method == "dense" or pd.isna(r.measured_latency_us) else ("yes" if r.meets_budget else "no")
        lines.append(
            f"| {r.method} | {budget} | {f(r.candidates, '.0f')} | {f(r.get('shortlisted', math.nan), '.0f')} | {plan} | {f(r.accuracy, '.3f')} | "
            f"{f(r.get('accuracy_finetuned', math.nan), '.3f')} | "
            f"{f(r.predicted_latency_us, '.1f')} | {f(r.measured_latency_us, '.1f')} ({f(r.measured_iqr_us, '.1f')}) | "
            f"{f(r.speedup, '.2f')}× | {f(r.mac_ratio_limit, '.2f')}× | {meets} |")
    lines += [
        "",
        "*accuracy* is what every method selected on (the search's harness: BatchNorm recalibrated, no "
        "fine-tuning); "
        "*accuracy after fine-tune* is the same plan, masks kept, after a short Adam fine-tune "
        "(`Evaluator` with `finetune_steps`): reported to show how much each choice recovers, never "
        "used to choose.",
        "",
        "*Speed-up* = dense measured latency / plan measured latency. *MAC-ratio limit* = dense MACs / "
        "the plan's MACs with removed channels and zeroed weights both subtracted: the speed-up if "
        "latency fell exactly with MACs. A method with no candidate within a budget has no plan "
        "(`–`): on host-x86 TVM runs zeros through dense kernels (no sparse operators in Relax, "
        "`NOTES.md`), so unstructured plans — global magnitude's — are predicted at the dense "
        "latency whatever their sparsity; they buy flash, not time.",
        "",
        "## What the table says (computed from it)",
        "",
    ]
    lines += summary(res, info, short)
    rep = path.parent / "replication" / "results.csv"
    if rep.exists():   # a second run of the study, from an empty work directory
        r2 = pd.read_csv(rep)
        picks2 = r2[(r2.method != "dense") & r2.measured_latency_us.notna()]
        lines.append("- Replication (`replication/`, a second run from an empty work directory): " + " ".join(
            f"budget {bf:.0%}: {verdict(g)}" for bf, g in sorted(picks2.groupby("budget_frac"), key=lambda kv: -kv[0])))
    lines += [
        "",
        "Files: `results.csv` (this table with plan JSON, flash/SRAM bytes, measurement provenance), "
        "`shortlist.csv` (every measured plan, `picked` marks the picks), "
        "`candidates.csv` (every scored candidate of every method), `run.json` (settings, timings, "
        "cost model, machine), `baselines.png`. `python studies/baselines/run.py --render` rewrites "
        "this README and the figure from those files.",
        "",
        "## Run details",
        "",
        f"- search: {info['search_config']}; {info['search_s']:.0f} s including its own measurements",
        f"- baselines: {info['baseline_s']}",
        f"- cost model: {info['cm_identity']}, parameters {info['cm_params']}",
        "",
        "| machine / library | |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in info["machine"].items()]
    lines.append("")
    path.write_text("\n".join(lines))


def summary(res: pd.DataFrame, info: dict[str, Any], short: pd.DataFrame | None = None) -> list[str]:
    """Data-driven bullet points about ``res`` (no claim that the numbers do not carry)."""
    runs = [float(x) for x in info.get("dense_runs_us", [])]
    out = []
    if len(runs) > 1:
        out.append(f"- Measurement noise: the same dense model measured {min(runs):.1f} and {max(runs):.1f} µs "
                   f"in this phase ({(max(runs) - min(runs)) / np.mean(runs):.0%} of their mean); latency "
                   "differences between picks smaller than that are not evidence.")
    picks = res[(res.method != "dense") & res.measured_latency_us.notna()]
    for bf, g in sorted(picks.groupby("budget_frac"), key=lambda kv: -kv[0]):
        top = g.sort_values("accuracy", ascending=False).iloc[0]
        line = (f"- Budget {bf:.0%}: most accurate pick as selected (no fine-tune): **{top['method']}** "
                f"({top['accuracy']:.3f})")
        if g["accuracy_finetuned"].notna().any():
            ft = g.sort_values("accuracy_finetuned", ascending=False).iloc[0]
            line += f"; after the fine-tune: **{ft['method']}** ({ft['accuracy_finetuned']:.3f})"
        none = sorted(set(res[(res.budget_frac == bf) & res.measured_latency_us.isna() & (res.method != "dense")]
                          ["method"]))
        if none:
            line += f"; no plan within the predicted budget: {', '.join(none)}"
        out.append(line + ".")
        out.append("  " + verdict(g))
    if short is not None and len(short):
        ms = short[short.measured_latency_us.notna()].drop_duplicates(["plan_key"])
        err = (ms.predicted_latency_us - ms.measured_latency_us) / ms.measured_latency_us
        out.append(f"- {int(short.meets_budget.astype(bool).sum())} of {len(short)} shortlisted plans met their "
                   f"budget when measured; the shared cost model's error on the {len(ms)} distinct ones: mean "
                   f"{err.abs().mean():.1%}, largest {err.abs().max():.1%}, {int((err < 0).sum())} predicted "
                   "faster than measured.")
    if len(picks):
        met = picks["meets_budget"].astype(bool)
        below = (picks.speedup < picks.mac_ratio_limit).sum()
        out += [
            f"- {int(met.sum())} of {len(picks)} picks met their budget when measured.",
            f"- Measured speed-up stayed below the MAC-ratio limit in {below} of {len(picks)} picks "
            f"(median speed-up / limit: {float((picks.speedup / picks.mac_ratio_limit).median()):.2f}).",
        ]
        corr = [float(v) for v in info.get("cm_params", {}).get("corrections", {}).values()]
        dense_corr = [float(v) for v in info.get("dense_corrections") or [] if v is not None]
        if below < len(picks) and corr and dense_corr:
            out.append(
                f"- Why a speed-up can pass that limit here: in quick mode each kernel runs the best of "
                f"{info['samples']} sampled schedules, and how lucky the draw was varies by kernel — measured / "
                f"roofline time of the {len(corr)} calibrated kernels ranges from {min(corr):.2f} to "
                f"{max(corr):.2f} (median {float(np.median(corr)):.2f}); the dense model's own kernels sit at a "
                f"median {float(np.median(dense_corr)):.2f}. A pruned model runs other kernels, with other draws, "
                "so these speed-ups measure schedules as well as pruning; they rank plans within this table, "
                "and a tuned build (`mode=\"tuned\"`) is what narrows the draw.")
    return out
    return out


def verdict(g: pd.DataFrame) -> str:
    """At one budget: is the search's pick at least as accurate as every baseline's pick, among
    the picks whose *measured* latency meets the budget (equal measured latency: all within it)?"""
    dom = ""
    hw_all = g[(g.method == "hwsearch") & g.measured_latency_us.notna()]
    if len(hw_all):
        h = hw_all.iloc[0]
        beat = g[(g.method != "hwsearch") & (g.measured_latency_us <= h.measured_latency_us) & (g.accuracy > h.accuracy)]
        dom = (" No baseline pick is both faster when measured and more accurate than the search's."
               if beat.empty else " Faster when measured *and* more accurate than the search's pick: "
               + ", ".join(f"{r.method} ({r.accuracy:.3f}, {r.measured_latency_us:.1f} µs)" for r in beat.itertuples()) + ".")
    return _verdict_met(g) + dom


def _verdict_met(g: pd.DataFrame) -> str:
    met = g[g["meets_budget"].astype(bool)]
    hw = met[met.method == "hwsearch"]
    others = met[met.method != "hwsearch"]
    missed = sorted(set(g[g.measured_latency_us.notna()].method) - set(met.method))
    tail = f" (over the budget when measured: {', '.join(missed)})" if missed else ""
    if hw.empty:
        return f"Verdict: the search's pick does not meet the budget when measured{tail}."
    a = float(hw.accuracy.iloc[0])
    if others.empty:
        return f"Verdict: only the search's pick ({a:.3f}) meets the budget when measured{tail}."
    best = others.sort_values("accuracy", ascending=False).iloc[0]
    ok = a >= float(best.accuracy)
    return (f"Verdict: among picks that meet the budget when measured, the search's ({a:.3f}, "
            f"{float(hw.measured_latency_us.iloc[0]):.1f} µs) is {'at least as accurate as' if ok else 'LESS accurate than'} "
            f"the best baseline's, {best.method} ({float(best.accuracy):.3f}, {float(best.measured_latency_us):.1f} µs)"
            f"{tail}.")


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(),
            "load average (1 min) at start": f"{os.getloadavg()[0]:.1f}", **versions(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def render(out: Path) -> int:
    """Write README.md and baselines.png in ``out`` from its results.csv, candidates.csv, run.json."""
    res = pd.read_csv(out / "results.csv")
    cands = pd.read_csv(out / "candidates.csv")
    cands["error"] = cands["error"].where(cands["error"].notna(), None)
    info = json.loads((out / "run.json").read_text())
    short = pd.read_csv(out / "shortlist.csv") if (out / "shortlist.csv").exists() else None
    plot(cands, res, info["pred_dense_s"], info["dense_s"], info["budgets"], out / "baselines.png", short)
    write_readme(res, info, out / "README.md", short)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hwsearch-baselines")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=150, help="search trials per round")
    ap.add_argument("--top-k", type=int, default=1, help="Pareto plans the search measures per round")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5],
                    help="latency budgets as fractions of the dense model's measured latency")
    ap.add_argument("--samples", type=int, default=8, help="schedules sampled per kernel (TVM quick mode)")
    ap.add_argument("--calibrate", type=float, nargs="*", default=[0.25, 0.5],
                    help="uniform channel ratios measured to calibrate the shared cost model (none: search only)")
    ap.add_argument("--calibrate-random", type=int, default=6,
                    help="random channel plans also measured to calibrate the shared cost model")
    ap.add_argument("--netadapt-step", type=float, default=0.05)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.03, 0.06],
                    help="per method and budget, the most accurate candidate within the predicted budget less "
                    "each of these margins is measured; the pick is the most accurate that meets it measured")
    ap.add_argument("--passes", type=int, default=2, help="measuring passes over dense and the picks "
                    "(alternately forward and reversed); each plan's latency is the median over them")
    ap.add_argument("--bn-recalibration", type=int, default=8, help="training batches to recalibrate BatchNorm "
                    "statistics with before scoring any plan, for every method (0: off)")
    ap.add_argument("--finetune-steps", type=int, default=100,
                    help="also report each chosen plan's accuracy after this many fine-tuning steps (0: off)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 20 trials, coarse sweeps")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite README.md and the figure from results.csv, candidates.csv and run.json in --out")
    args = ap.parse_args(argv)
    if args.render:
        return render(args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.quick:
        args.rounds, args.trials, args.top_k, args.passes = 1, 20, 1, 1
    # One torch thread for accuracy evaluation and fine-tuning: on a shared 2-core machine two
    # intra-op threads made a 100-step fine-tune of this model 13x slower (55 s vs 4.2 s) while
    # other processes loaded the cores. TVM measures in its own processes, unaffected.
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    info: dict[str, Any] = {"machine": {**machine(), "torch threads": str(torch.get_num_threads())},
                            "budgets": args.budgets, "samples": args.samples}
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    # 1. the comparison's cost model, calibrated first. On this shared machine latencies measured
    # minutes apart differ (load), so the one model that prices every method's candidates is
    # refit on the dense model and a few uniformly channel-pruned plans measured back to back —
    # which also shows it how latency falls with channels.
    target = get_target("host-x86")
    base_cfg = SearchConfig(out_dir=args.work, mode="quick", samples=args.samples, seed=0,
                            bn_recalibration=args.bn_recalibration)
    model, example = zoo.load_model(base_cfg.model)
    data = zoo.load_data(base_cfg.data)
    graph = analyze(model, example if example is not None else data.example_input)
    measurer = Measurer(target, graph, Evaluator(graph, data, target, costmodels.default_for(target), base_cfg),
                        Path(args.work) / "tvm")
    info["load_before_calibration"] = f"{os.getloadavg()[0]:.1f}"
    calib = []
    # plus random channel plans (seeded; per layer a ratio up to 0.6): non-uniform shapes, where a
    # model fitted on uniform plans alone was 12 % low on the picks in an earlier run
    cal_space = SearchSpace.build(graph, target, patterns_wanted=("dense", "channel"), max_ratio=0.6,
                                  min_density=base_cfg.min_density)
    cal_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    cal_random = [cal_space.suggest(cal_study.ask()) for _ in range(args.calibrate_random)]
    for plan in [Plan()] + [baselines.uniform(graph, r, "channel") for r in args.calibrate] + cal_random:
        m = measurer(plan)
        calib.append(plan_record(plan=plan, target=target, measured=m, predicted_latency_s=math.nan,
                                 costmodel="none", round_=0, study="calibration", accuracy=None))
    info["calibration"] = (", ".join(f"uniform channel {r:.2f}" for r in args.calibrate) or "nothing else") + \
        (f" and {args.calibrate_random} random channel plans" if args.calibrate_random else "")
    info["calibration_s"] = measurer.seconds
    cm, fit = fit_cost_model(target, graph, calib, base_cfg)
    cm_path = cm.save(args.work / "calibrated-costmodel.json")
    info.update(fit_n=fit.n if fit else 0, fit_mape=fit.mape_after if fit else math.nan,
                cm_identity=cm.identity, cm_params={k: v for k, v in cm.params().items() if k != "dtype"})
    # measured / roofline time of the dense model's own kernels (the calibration measured them)
    dense_res = measurer.ev.decisions(Plan()).resolved
    info["dense_corrections"] = [cm.corrections.get(sig) for sig in cm.signatures(dense_res)]
    pricer = BatchPricer(graph, target, cm, channel_multiple=base_cfg.channel_multiple,
                         min_density=base_cfg.min_density)
    pred_dense_s = float(pricer.price_plans([Plan()])["latency_s"][0])
    info["pred_dense_us"] = pred_dense_s * 1e6
    log.info("dense: predicted %.1f µs by the calibrated model", pred_dense_s * 1e6)

    # 2. the search, as a user with a budget runs it: one search per budget, the budget a hard
    # constraint, starting from the calibrated model and refitting on its own measurements.
    # A journal file, not SQLite: a fraction of the per-trial storage cost (studies/search_speed).
    t0 = time.perf_counter()
    search_cfgs = []
    for bf in args.budgets:
        tag = f"b{round(bf * 100)}"
        cfg = dataclasses.replace(
            base_cfg, out_dir=args.work / f"search-{tag}", study_name=f"hwsearch-{tag}", rounds=args.rounds,
            trials=args.trials, measure_top_k=args.top_k, costmodel_path=cm_path,
            latency_budget_s=bf * pred_dense_s, tvm_dir=args.work / "tvm",
            storage=f"journal:{(args.work / f'search-{tag}.journal').resolve()}")
        search(cfg, progress=lambda m, tag=tag: log.info("search %s: %s", tag, m))
        search_cfgs.append(cfg)
    info["search_s"] = time.perf_counter() - t0
    info["search_config"] = (f"one search per budget (the budget a constraint), {args.rounds} rounds × "
                             f"{args.trials} trials, NSGA-II, patterns {list(base_cfg.patterns)}, "
                             f"{args.top_k} Pareto plan(s) measured per round")
    info["min_density"], info["channel_multiple"] = base_cfg.min_density, base_cfg.channel_multiple
    info["bn_recalibration"] = base_cfg.bn_recalibration
    cfg = base_cfg
    ev = Evaluator(graph, data, target, cm, cfg)
    ev_ft = Evaluator(graph, data, target, cm, dataclasses.replace(cfg, finetune_steps=args.finetune_steps))
    info["finetune_steps"] = args.finetune_steps

    def ft_accuracy(plan: Plan) -> float:
        """Accuracy after a short fine-tune (masks kept): reported, never used to choose."""
        return float(ev_ft.accuracy(ev_ft.decisions(plan))) if args.finetune_steps > 0 else math.nan

    # 3. candidates of every method, scored by the same evaluator and cost model
    runs: dict[str, pd.DataFrame] = {}
    secs: dict[str, float] = {}
    runs["hwsearch"] = pd.concat([search_candidates(c, graph, pricer) for c in search_cfgs], ignore_index=True)
    runs["hwsearch"] = runs["hwsearch"].drop_duplicates("plan_key")
    step = 0.1 if args.quick else 0.05
    t0 = time.perf_counter()
    runs["uniform-channel"] = baselines.evaluate_plans(
        ev, [baselines.uniform(graph, float(r), "channel") for r in np.arange(step, 0.9 + 1e-9, step)],
        method="uniform-channel").table
    secs["uniform-channel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs["global-magnitude"] = baselines.evaluate_plans(
        ev, [baselines.global_magnitude(graph, float(s), min_density=cfg.min_density)
             for s in np.arange(0.1, 0.9 + 1e-9, 0.2 if args.quick else 0.1)], method="global-magnitude").table
    secs["global-magnitude"] = time.perf_counter() - t0
    na = baselines.netadapt(graph, ev, cm, min(args.budgets) * pred_dense_s, args.netadapt_step)
    runs["netadapt"], secs["netadapt"] = na.table, na.seconds
    # the search's own space (same patterns offered per layer), drawn uniformly
    space = SearchSpace.build(graph, target, patterns_wanted=cfg.patterns, max_ratio=cfg.max_ratio,
                              min_density=cfg.min_density, cost_model=cm, memory_matters=cfg.memory_matters)
    rs = baselines.random_search(space, ev, len(runs["hwsearch"]), seed=0)
    runs["random"], secs["random"] = rs.table, rs.seconds
    info["baseline_s"] = ", ".join(f"{m} {s:.0f} s" for m, s in secs.items()) + \
        f"; NetAdapt {'met' if na.met else 'did not meet'} its budget in {len(na.plans) - 1} iterations"
    cands = pd.concat([df.assign(method=m) for m, df in runs.items()], ignore_index=True)
    for c in ("plan", "describe", "error"):
        cands[c] = cands[c].astype(object)

    # 4. shortlist on predicted latency, measure, pick on measured latency. Per method and budget
    # the most accurate candidate within the predicted budget less each margin (0 %, 3 %, 6 %):
    # the same few measurements for every method, so a method is not judged on one plan that the
    # model's error (a few %) happens to push over the budget. A budget b is met when predicted ≤
    # b × the model's prediction for the dense model: the budget as a predicted speed-up, so the
    # model's overall scale error cancels.
    shortlists: dict[tuple[float, str], list[dict[str, Any]]] = {}
    configs: dict[str, tuple] = {}

    def config_of(plan_dict: dict) -> tuple:
        plan = Plan.from_dict(plan_dict)
        if plan.key not in configs:
            configs[plan.key] = config_key(ev.decisions(plan).resolved)
        return configs[plan.key]
    within: dict[tuple[float, str], int] = {}
    fastest_pred: dict[tuple[float, str], float] = {}
    for bf in args.budgets:
        for m in METHODS:
            df = cands[(cands.method == m) & cands.error.isna()]
            within[bf, m] = int((df.predicted_latency_s <= bf * pred_dense_s).sum())
            fastest_pred[bf, m] = df.predicted_latency_s.min() / pred_dense_s if len(df) else math.nan
            chosen: list[dict[str, Any]] = []
            for mg in args.margins:
                ok = df[df.predicted_latency_s <= bf * (1.0 - mg) * pred_dense_s]
                for _, best in ok.sort_values(["accuracy", "predicted_latency_s"], ascending=[False, True]).iterrows():
                    # plans whose ratios round to the same channels are one model: one entry, one measurement
                    cfg_key = config_of(best["plan"])
                    if cfg_key not in {c["config"] for c in chosen}:
                        chosen.append({**best.to_dict(), "margin": mg, "config": cfg_key})
                    break
            shortlists[bf, m] = chosen
    # Measured in passes over [dense, every shortlisted plan]: forward, then reversed (ABBA), so a
    # drift of the machine's load during the phase weighs on every plan alike; each plan's latency
    # is the median over the passes (each pass's own figure is a median of repeats).
    measurer.ev = ev
    dense_cfg = config_of(Plan().to_dict())
    order_by_cfg = {dense_cfg: Plan()}
    for sl in shortlists.values():
        for c in sl:
            order_by_cfg.setdefault(c["config"], Plan.from_dict(c["plan"]))
    order = list(order_by_cfg.values())
    log.info("measuring the dense model and %d shortlisted plans in %d passes", len(order) - 1, args.passes)
    runs_by_key: dict[str, list[dict]] = {}
    info["load_before_measuring"] = f"{os.getloadavg()[0]:.1f}"
    for k in range(args.passes):
        for plan in (order if k % 2 == 0 else order[::-1]):
            runs_by_key.setdefault(config_of(plan.to_dict()), []).append(measurer(plan, again=True))
    info["load_after_measuring"] = f"{os.getloadavg()[0]:.1f}"
    info["passes"], info["margins"] = args.passes, list(args.margins)

    def combined(key: tuple) -> dict[str, Any]:
        recs = runs_by_key[key]
        lat = [r["latency_s"] for r in recs if r.get("latency_s")]
        if not lat:
            return {**recs[0], "latency_s": None}
        return {**next(r for r in recs if r.get("latency_s")), "latency_s": float(np.median(lat)),
                "latency_iqr_s": float(np.median([r.get("latency_iqr_s") or 0.0 for r in recs if r.get("latency_s")])),
                "passes_us": [round(x * 1e6, 1) for x in lat]}
    dense_recs = runs_by_key[dense_cfg]
    dense_lat = [r["latency_s"] for r in dense_recs if r.get("latency_s")]
    if not dense_lat:
        raise SystemExit(f"the dense model could not be measured: {dense_recs[0].get('error')}")
    dense_s = float(np.median(dense_lat))
    info["dense_us"] = dense_s * 1e6
    info["dense_runs_us"] = [round(x * 1e6, 1) for x in dense_lat]

    dense_macs = int(graph.table["macs"].sum())
    rows = [{"method": "dense", "budget_frac": math.nan, "budget_us": math.nan, "candidates": 1,
             "plan_key": Plan().key, "plan": {}, "describe": "dense", "accuracy": ev.accuracy(ev.decisions(Plan())),
             "accuracy_finetuned": ft_accuracy(Plan()), "predicted_latency_us": pred_dense_s * 1e6,
             "measured_latency_us": dense_s * 1e6,
             "measured_iqr_us": float(np.mean([r.get("latency_iqr_s") or math.nan for r in dense_recs])) * 1e6,
             "speedup": 1.0, "mac_ratio_limit": 1.0, "meets_budget": None, "flash_bytes": None,
             "note": "passes: " + ", ".join(f"{x:.1f}" for x in info["dense_runs_us"]) + " µs",
             "measure_mode": dense_recs[0].get("mode"), "measure_date": dense_recs[0].get("date"), "error": None}]
    # the pick: the most accurate shortlisted plan that meets the budget when measured (equal
    # measured latency: every pick within it); if none does, the fastest one, marked as missing it
    short_rows = []
    for (bf, m), sl in shortlists.items():
        row: dict[str, Any] = {"method": m, "budget_frac": bf, "budget_us": bf * dense_s * 1e6,
                               "candidates": within[bf, m], "shortlisted": len(sl), "error": None, "note": None}
        for c in sl:
            c["rec"] = combined(c["config"])
            meas = c["rec"].get("latency_s")
            c["measured_s"] = meas if meas else math.nan
            c["meets"] = bool(meas is not None and meas <= bf * dense_s)
            short_rows.append({"method": m, "budget_frac": bf, "margin": c["margin"], "plan_key": c["plan_key"],
                               "describe": c["describe"], "accuracy": c["accuracy"],
                               "predicted_latency_us": c["predicted_latency_s"] * 1e6,
                               "measured_latency_us": c["measured_s"] * 1e6, "meets_budget": c["meets"],
                               "passes_us": c["rec"].get("passes_us"), "error": c["rec"].get("error")})
        if not sl:
            row["note"] = f"no candidate within the predicted budget (fastest: {fastest_pred[bf, m]:.0%} of dense)"
            rows.append(row)
            continue
        met = [c for c in sl if c["meets"]]
        if met:
            best = max(met, key=lambda c: (c["accuracy"], -c["measured_s"]))
        else:
            best = min(sl, key=lambda c: c["measured_s"] if not math.isnan(c["measured_s"]) else math.inf)
        short_rows[-len(sl) + sl.index(best)]["picked"] = True
        plan, rec, meas = Plan.from_dict(best["plan"]), best["rec"], best["rec"].get("latency_s")
        row.update(plan_key=plan.key, plan=plan.to_dict(), describe=plan.describe(), margin=best["margin"],
                   accuracy=float(ev.accuracy(ev.decisions(plan))), accuracy_finetuned=ft_accuracy(plan),
                   predicted_latency_us=float(best["predicted_latency_s"]) * 1e6,
                   measured_latency_us=meas * 1e6 if meas else math.nan,
                   measured_iqr_us=(rec.get("latency_iqr_s") or math.nan) * 1e6,
                   speedup=dense_s / meas if meas else math.nan,
                   mac_ratio_limit=dense_macs / max(1, nonzero_macs(graph, plan, cfg)),
                   meets_budget=best["meets"], flash_bytes=int(best["flash_bytes"]), measure_mode=rec.get("mode"),
                   measure_date=rec.get("date"), error=rec.get("error"),
                   note=("passes: " + ", ".join(f"{x:.1f}" for x in rec.get("passes_us", [])) + " µs")
                   + ("" if met else f"; none of its {len(sl)} shortlisted plans met the budget when measured"))
        rows.append(row)
    rows = rows[:1] + sorted(rows[1:], key=lambda r: (-r["budget_frac"], METHODS.index(r["method"])))
    res = pd.DataFrame(rows)
    info.update(measurements=measurer.count, measure_s=measurer.seconds, total_s=time.perf_counter() - t_start,
                args="".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)))

    # 5. outputs
    res.to_csv(args.out / "results.csv", index=False)
    pd.DataFrame(short_rows).assign(picked=lambda d: d.get("picked", False) == True).to_csv(  # noqa: E712
        args.out / "shortlist.csv", index=False)
    cands.to_csv(args.out / "candidates.csv", index=False)
    info["pred_dense_s"], info["dense_s"] = pred_dense_s, dense_s
    (args.out / "run.json").write_text(json.dumps(info, indent=2, default=str))
    render(args.out)
    cols = ["method", "budget_frac", "candidates", "accuracy", "predicted_latency_us", "measured_latency_us",
            "speedup", "mac_ratio_limit", "meets_budget"]
    print(res[cols].to_string(index=False))
    log.info("done in %.1f min", info["total_s"] / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
