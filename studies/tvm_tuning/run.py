"""Study: does MetaSchedule's XGBoost cost model beat its random one per trial budget, and how
close does TVM-tuned dense code get to ONNX Runtime? (issue 12, item 2)

For each model of ``studies/deployment`` (the reference 1-D CNN on MNIST-1D; the MobileNetV2-style
2-D net on digits) and each cost model (``xgb``, ``random``), a fresh tuning database
``WORK/<cost model>/<model>/tuning_db`` is tuned cumulatively in steps (``--steps``: the total
trials after each step) with :func:`targets.tvm.tune_more`: every kernel of the model is tuned
again for the step's extra trials (MetaSchedule's search starts from the records already in the
database), then the dense model is compiled with the database and timed in a fresh process
(``time_evaluator``: ``--repeats`` samples of runs lasting >= ``--min-repeat-ms``).

Right before and right after each TVM step the dense model is timed in ONNX Runtime as
``studies/deployment/run.py``'s ``dense_per_runtime`` does (``hwsearch.deploy.dense_baseline``,
``runtimes=("onnxruntime",)``, ``--passes`` fresh processes); a step's ratio is TVM ÷ the mean of
the two. Consecutive TVM steps share the ONNX Runtime sitting between them. The cost models are
interleaved per step (model A: xgb 64, random 64, random 128, xgb 128, xgb 256, random 256 — the
order alternates) so drift on the shared machine hits both alike. A failed step is a row with its
error; the study goes on.

Writes ``results.csv``, ``tvm_tuning.png`` (ratio to ONNX Runtime vs trials, one line per model ×
cost model), ``provenance.json`` and the tables in ``README.md`` between the RESULTS markers::

    flock /tmp/hwsearch-measure.lock python studies/tvm_tuning/run.py   # [--steps 64,128,256] [--quick]

The databases stay in ``--work`` (printed; a temp dir by default): ``studies/deployment/run.py
--tvm-work WORK/xgb`` reuses the xgb ones.
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
import pandas as pd

log = logging.getLogger("tvm-tuning-study")
HERE = Path(__file__).resolve().parent
MODELS = {"mnist1d_cnn": ("hwsearch.zoo:mnist1d_cnn", "hwsearch.zoo:mnist1d_data"),
          "mobilenet_digits": ("hwsearch.zoo2d:mobilenet_digits", "hwsearch.zoo2d:digits_data")}
COST_MODELS = ("xgb", "random")
# trials: the step's cumulative budget; trials_tuned: what tune_more has tuned on that database so far
COLUMNS = ["model", "cost_model", "step", "trials", "trials_tuned", "records", "tasks", "tuning_s_cumulative",
           "tuning_s_step", "tvm_us", "tvm_iqr_us", "tvm_min_us", "tvm_max_us", "ort_before_us", "ort_after_us", "ort_us",
           "ratio_to_ort", "wall_s", "date", "error"]
START, END = "<!-- RESULTS -->", "<!-- /RESULTS -->"


def load_graph(name: str):
    """The model as ``studies/deployment/run.py``'s ``run_model`` loads it."""
    from hwsearch import zoo
    from hwsearch.graph import analyze

    model_spec, data_spec = MODELS[name]
    model, ex = zoo.load_model(model_spec)
    data = zoo.load_data(data_spec)
    return analyze(model, ex if ex is not None else data.example_input)


def ort_sitting(graph, work: Path, passes: int) -> tuple[float | None, str | None]:
    """The dense model in ONNX Runtime, as ``dense_per_runtime`` times it: (seconds, error)."""
    from hwsearch import deploy
    from targets.spec import get_target

    try:
        b = deploy.dense_baseline(get_target("host-x86"), graph, work_dir=work, runtimes=("onnxruntime",),
                                  passes=passes)
    except Exception as exc:  # noqa: BLE001 - a failed sitting is a note in the row
        return None, f"ONNX Runtime sitting failed: {type(exc).__name__}: {exc}"[:300]
    lat = b.latency_s.get("onnxruntime")
    return (lat, None) if lat else (None, f"ONNX Runtime: {b.notes.get('onnxruntime')}"[:300])


def tvm_step(graph, wd: Path, total: int, cost_model: str, args) -> dict[str, Any]:
    """Tune ``wd``'s database up to ``total`` trials with ``cost_model`` and time the model."""
    from targets.tvm import EvaluatorConfig, tune_more
    from targets.tvm._tuning_curve import tuning_curve_state

    done = sum(s["trials"] for s in tuning_curve_state(wd))
    if total <= done:
        return {"trials_tuned": done, "error": f"already {done} trials in {wd}, step asks for {total} in total"}
    try:
        s = tune_more(graph.model, graph.example_inputs, work_dir=wd, trials=total - done, cost_model=cost_model,
                      evaluator=EvaluatorConfig(repeat=args.repeats, min_repeat_ms=args.min_repeat_ms),
                      seed=args.seed)
    except Exception as exc:  # noqa: BLE001 - the study goes on
        log.exception("tune_more failed")
        return {"trials_tuned": done, "error": f"tune_more raised {type(exc).__name__}: {exc}"[:300]}
    us = (lambda v: v * 1e6 if v is not None else math.nan)
    return {"step": s.step, "trials_tuned": s.trials_total, "records": s.records, "tasks": s.tasks,
            "cost_model_used": s.cost_model, "tuning_s_cumulative": s.tuning_s_total, "tuning_s_step": s.tuning_s,
            "tvm_us": us(s.latency_s), "tvm_iqr_us": us(s.latency_iqr_s), "tvm_min_us": us(s.latency_min_s),
            "tvm_max_us": us(s.latency_max_s), "error": s.error, "wall_s": s.wall_s}


def run_model(name: str, args, rows: list[dict], out: Path) -> None:
    """All steps of both cost models on ``name``, interleaved, ONNX Runtime around each."""
    try:
        graph = load_graph(name)
    except Exception as exc:  # noqa: BLE001
        log.exception("loading %s failed", name)
        rows.append({"model": name, "error": f"loading the model failed: {type(exc).__name__}: {exc}"[:300]})
        return
    ort_work = args.work / "ort" / name
    before, before_err = ort_sitting(graph, ort_work, args.passes)
    for i, total in enumerate(args.steps):
        order = args.cost_models if i % 2 == 0 else args.cost_models[::-1]
        for cm in order:
            t0 = time.perf_counter()
            log.info("%s: %s up to %d trials", name, cm, total)
            row = {"model": name, "cost_model": cm, "trials": total} | tvm_step(graph, args.work / cm / name, total,
                                                                               cm, args)
            after, after_err = ort_sitting(graph, ort_work, args.passes)
            ort = [v for v in (before, after) if v]
            row.update(ort_before_us=before * 1e6 if before else math.nan, ort_after_us=after * 1e6 if after else
                       math.nan, ort_us=float(np.mean(ort)) * 1e6 if ort else math.nan,
                       date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            row["ratio_to_ort"] = row.get("tvm_us", math.nan) / row["ort_us"] if ort else math.nan
            errs = [e for e in (row.get("error"), before_err, after_err) if e]
            row["error"] = "; ".join(errs) or None
            row["wall_s"] = time.perf_counter() - t0  # the step and the ONNX Runtime sitting after it
            if row.get("cost_model_used") not in (None, "", cm):
                row["error"] = f"asked for {cm}, MetaSchedule used {row['cost_model_used']}"
            rows.append(row)
            log.info("  %s %s %d trials: TVM %.1f µs, ORT %.1f µs, ratio %.2f%s", name, cm, row["trials"],
                     row.get("tvm_us", math.nan), row["ort_us"], row["ratio_to_ort"],
                     f" — {row['error']}" if row["error"] else "")
            save_csv(rows, out / "results.csv")
            before, before_err = after, after_err


def save_csv(rows: list[dict], path: Path) -> pd.DataFrame:
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    df.to_csv(path, index=False)
    return df


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    colors = dict(zip(MODELS, ("#1f77b4", "#d62728")))
    styles = {"xgb": ("-", "o"), "random": ("--", "s")}
    for (model, cm), g in df.dropna(subset=["ratio_to_ort"]).groupby(["model", "cost_model"]):
        g = g.sort_values("trials")
        ls, marker = styles.get(cm, (":", "^"))
        ax.plot(g.trials, g.ratio_to_ort, ls=ls, marker=marker, color=colors.get(model, "k"), label=f"{model}, {cm}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ticks = sorted(set(df.trials.dropna().astype(int)))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("MetaSchedule trials (cumulative, whole model)")
    ax.set_ylabel("TVM latency ÷ ONNX Runtime (lower is better)")
    ax.set_title("TVM-tuned dense model vs ONNX Runtime, by cost model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def results_block(df: pd.DataFrame, prov: dict) -> str:
    """The generated part of the README: how it ran, every step, then xgb vs random per step."""
    v = prov["versions"]
    lines = [f"Generated by `python studies/tvm_tuning/run.py {' '.join(prov['argv'])}` on {prov['date'][:16].replace('T', ' ')} UTC "
             f"in {prov['minutes']:.0f} min on {prov['machine']} (TVM target `{json.dumps(prov['tvm_target'])}`; "
             f"apache-tvm {v.get('tvm')}, xgboost {v.get('xgboost')}, ONNX Runtime {v.get('onnxruntime')}, torch "
             f"{v.get('torch')}). Latencies are medians in µs; TVM's spread is the IQR of its "
             f"{prov['repeats']} samples; ONNX Runtime is the mean of the sittings right before and after the step.",
             "", "| model | cost model | trials | records | tasks | tuning min (cum.) | TVM µs [IQR] | ORT µs "
             "(before, after) | TVM ÷ ORT | error |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in df.iterrows():
        lines.append(f"| {r.model} | {r.cost_model} | {_f(r.trials, '.0f')} | {_f(r.records, '.0f')} | "
                     f"{_f(r.tasks, '.0f')} | {_f(r.tuning_s_cumulative / 60, '.1f')} | {_f(r.tvm_us, '.1f')} "
                     f"[{_f(r.tvm_iqr_us, '.1f')}] | {_f(r.ort_us, '.1f')} ({_f(r.ort_before_us, '.1f')}, "
                     f"{_f(r.ort_after_us, '.1f')}) | {_f(r.ratio_to_ort, '.2f')} | "
                     f"{'' if pd.isna(r.error) else str(r.error)[:160]} |")
    lines += ["", "xgb vs random at each budget (ratios to ONNX Runtime, so drift between the two steps cancels; "
              "xgb ÷ random < 1: xgb's code is faster):", "",
              "| model | trials | xgb ÷ ORT | random ÷ ORT | xgb ÷ random | tuning min xgb / random |",
              "| --- | --- | --- | --- | --- | --- |"]
    for (model, trials), g in df.groupby(["model", "trials"], sort=False):
        by = {r.cost_model: r for _, r in g.iterrows()}
        x, rnd = by.get("xgb"), by.get("random")
        if x is None or rnd is None:
            continue
        lines.append(f"| {model} | {_f(trials, '.0f')} | {_f(x.ratio_to_ort, '.2f')} | {_f(rnd.ratio_to_ort, '.2f')} "
                     f"| {_f(x.ratio_to_ort / rnd.ratio_to_ort, '.2f')} | {_f(x.tuning_s_cumulative / 60, '.1f')} / "
                     f"{_f(rnd.tuning_s_cumulative / 60, '.1f')} |")
    return "\n".join(lines)


def write_readme(df: pd.DataFrame, prov: dict, path: Path) -> None:
    """Replace the text between the RESULTS markers (hand-written text around them is kept)."""
    text = path.read_text() if path.exists() else f"# TVM tuning: cost models\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{results_block(df, prov)}\n{END}{tail}")


def provenance(args, t0: float) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from targets.runtimes import runtime_versions
    from targets.tvm import default_target
    from targets.tvm._env import cpu_model, versions

    vers = runtime_versions() | versions()
    try:
        vers["xgboost"] = version("xgboost-cpu")
    except PackageNotFoundError:
        try:
            vers["xgboost"] = version("xgboost")
        except PackageNotFoundError:
            vers["xgboost"] = "not installed"
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": cpu_model(),
            "node": platform.node(), "python": platform.python_version(), "versions": vers,
            "tvm_target": default_target(), "argv": sys.argv[1:], "minutes": (time.perf_counter() - t0) / 60,
            "models": args.models, "cost_models": list(args.cost_models), "steps": args.steps,
            "passes": args.passes, "repeats": args.repeats, "min_repeat_ms": args.min_repeat_ms, "seed": args.seed,
            "work": str(args.work)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cost-models", default=",".join(COST_MODELS))
    p.add_argument("--steps", default="64,128,256", help="total trials after each step (cumulative)")
    p.add_argument("--passes", type=int, default=3, help="fresh processes per ONNX Runtime sitting")
    p.add_argument("--repeats", type=int, default=10, help="TVM timing samples (as measure_model's default)")
    p.add_argument("--min-repeat-ms", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="databases go to WORK/<cost model>/<model> (must be new)")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="check the script: steps 8,24 (mnist1d_cnn has 8 kernels, "
                   "each needs a trial), mnist1d_cnn only, 1 pass")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.models, args.passes = "8,24", "mnist1d_cnn", 1
    args.steps = [int(s) for s in str(args.steps).split(",")]
    args.models = args.models.split(",")
    args.cost_models = tuple(args.cost_models.split(","))
    unknown = [m for m in args.models if m not in MODELS] + [c for c in args.cost_models if c not in COST_MODELS]
    if unknown or args.steps != sorted(set(args.steps)) or args.steps[0] < 1:
        p.error(f"unknown model/cost model {unknown} or steps not increasing: {args.steps}")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="hwsearch-tvm-tuning-"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("torch", "tvm", "targets", "hwsearch", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    taken = [args.work / cm / m for cm in args.cost_models for m in args.models
             if (args.work / cm / m / "tuning_db").exists()]
    if taken:
        log.error("%s already hold tuning databases: each (model, cost model) needs a fresh one — pass a new --work",
                  ", ".join(map(str, taken)))
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("work dir %s", args.work)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for name in args.models:
        run_model(name, args, rows, args.out)
    df = save_csv(rows, args.out / "results.csv")
    prov = provenance(args, t0)
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    if df["ratio_to_ort"].notna().any():
        plot(df, args.out / "tvm_tuning.png")
    write_readme(df, prov, args.out / "README.md")
    log.info("wrote %s in %.1f min; databases in %s", args.out, prov["minutes"], args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
