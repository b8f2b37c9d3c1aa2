"""Cost-model fidelity on the host CPU, nn-Meter style: held-out plans within ±10 % / ±5 % of
measured, and Kendall's τ — analytical vs refit, roofline vs lookup table.

    python studies/fidelity/run.py [--plans 32] [--out studies/fidelity]

1. Profile the reference model on the host (one TVM build times every grid cell) → LUT model.
2. Draw random per-layer plans (channel and unstructured, ratios 0–0.75) and measure each with
   TVM (quick mode, fresh process per plan, median of repeats) — the same kernels as the search.
3. Split plans 50/50 (seeded): fit on one half, evaluate on the held-out half:
   roofline (analytical prior), roofline refit, LUT (profile only), LUT refit.
Writes ``results.csv`` (per model), ``plans.csv`` (per plan, every prediction), ``fidelity.png``
and the table in ``README.md`` (between the RESULTS markers).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

import costmodels
from costmodels.analytical import Sample
from costmodels.base import fidelity
from costmodels.lut import LUTModel
from hwsearch import prune, zoo
from hwsearch.graph import analyze
from hwsearch.measure import measure_model, versions
from hwsearch.plan import Plan, resolve
from hwsearch.profile import profile
from hwsearch.space import SearchSpace
from targets.spec import get_target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plans", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--work", type=Path, default=Path(".hwsearch-cache/fidelity-work"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    target = get_target("host-x86")
    model, example = zoo.mnist1d_cnn()
    graph = analyze(model, example)

    prof_path = a.work / "profile.csv"
    if prof_path.exists():
        prof = pd.read_csv(prof_path)
        prof.attrs.update(json.loads((a.work / "profile.json").read_text()))
    else:
        prof = profile(graph, target, work_dir=a.work / "tvm", samples=a.samples, repeats=a.repeats)
        prof.to_csv(prof_path, index=False)
        (a.work / "profile.json").write_text(json.dumps(prof.attrs, default=str))
    print(f"profile: {len(prof)} cells, {time.time() - t0:.0f} s", flush=True)

    space = SearchSpace.build(graph, target, patterns_wanted=("dense", "unstructured", "channel"), max_ratio=0.75)
    sampler = optuna.samplers.RandomSampler(seed=a.seed)
    study = optuna.create_study(sampler=sampler)
    meas_path = a.work / "measured.jsonl"
    done = [json.loads(line) for line in meas_path.read_text().splitlines()] if meas_path.exists() else []
    plans = [Plan()] + [space.suggest(study.ask()) for _ in range(a.plans - 1)]
    for i, plan in enumerate(plans):
        if any(d["plan_key"] == plan.key for d in done):
            continue
        dec = prune.decide(graph, plan)
        folded = prune.apply(graph, dec, mode="fold")
        m = measure_model(target, graph, folded, work_dir=a.work / "tvm", samples=a.samples, repeats=a.repeats,
                          resolved=dec.resolved)
        rec = {"plan_key": plan.key, "plan": plan.to_dict(), "latency_s": m.get("latency_s"),
               "latency_iqr_s": m.get("latency_iqr_s"), "layer_s": m.get("layer_s"), "error": m.get("error"),
               "mode": m.get("mode"), "device": m.get("device"), "date": m.get("date"), "repeats": m.get("repeats"),
               "versions": m.get("versions")}
        with open(meas_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done.append(rec)
        print(f"plan {i + 1}/{len(plans)} [{plan.key}] {plan.describe()[:60]}: "
              f"{(rec['latency_s'] or float('nan')) * 1e6:.1f} µs {rec['error'] or ''}", flush=True)

    ok = [d for d in done if not d["error"] and d["latency_s"]]
    rng = np.random.default_rng(a.seed)
    idx = rng.permutation(len(ok))
    train = [ok[i] for i in idx[: len(ok) // 2]]
    test = [ok[i] for i in idx[len(ok) // 2:]]

    def samples(recs):
        return [Sample(resolve(graph.table, graph.groups, Plan.from_dict(r["plan"])), float(r["latency_s"]),
                       r.get("layer_s") or None) for r in recs]

    s_train, s_test = samples(train), samples(test)
    models = {
        "roofline (analytical)": costmodels.default_for(target),
        "roofline refit": costmodels.default_for(target),
        "LUT (profile)": LUTModel.from_profile(target, prof),
        "LUT refit": LUTModel.from_profile(target, prof),
    }
    models["roofline refit"].refit(s_train)
    models["LUT refit"].refit(s_train)
    meas = np.array([s.latency_s for s in s_test])
    rows, per_plan = [], pd.DataFrame({"plan_key": [r["plan_key"] for r in test], "measured_s": meas})
    for name, m in models.items():
        pred = np.array([m.total_latency(s.resolved) for s in s_test])
        per_plan[name] = pred
        f = fidelity(pred, meas)
        rows.append({"model": name, "heldout_plans": len(s_test), "fit_plans": len(s_train), **f})
    res = pd.DataFrame(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    res.to_csv(a.out / "results.csv", index=False)
    per_plan.to_csv(a.out / "plans.csv", index=False)
    _plot(per_plan, list(models), a.out / "fidelity.png")
    iqr = np.array([r["latency_iqr_s"] / r["latency_s"] for r in ok if r.get("latency_iqr_s")])
    prov = {"device": ok[0]["device"], "backend": "tvm-local", "mode": ok[0]["mode"], "repeats": ok[0]["repeats"],
            "versions": ok[0]["versions"], "date": dt.date.today().isoformat(), "python": platform.python_version(),
            "median_relative_iqr": float(np.median(iqr)) if len(iqr) else None, "wall_s": round(time.time() - t0)}
    (a.out / "provenance.json").write_text(json.dumps(prov, indent=2))
    _readme(a.out / "README.md", res, prov)
    print(res.to_string(index=False))
    return 0


def _plot(per_plan: pd.DataFrame, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    m = per_plan["measured_s"] * 1e6
    for n in names:
        ax.scatter(m, per_plan[n] * 1e6, s=14, label=n)
    lo, hi = float(m.min()) * 0.8, float(m.max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10 %")
    ax.set_xlabel("measured latency, held-out plans (µs)")
    ax.set_ylabel("predicted (µs)")
    ax.set_title("host CPU (TVM quick mode): predicted vs measured", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _readme(path: Path, res: pd.DataFrame, prov: dict) -> None:
    table = ["| model | held-out plans | within ±10 % | within ±5 % | Kendall τ | mean abs. error |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in res.itertuples():
        table.append(f"| {r.model} | {r.heldout_plans} | {r.within10:.0%} | {r.within5:.0%} | {r.kendall_tau:.2f} | "
                     f"{r.mape:.1%} |")
    block = "\n".join(table) + (f"\n\nMeasured {prov['date']} on {prov['device']}, TVM {prov['versions'].get('tvm')}, "
                                f"{prov['mode']} mode, median of {prov['repeats']} repeats (median relative IQR "
                                f"{(prov['median_relative_iqr'] or 0):.1%}); {prov['wall_s']} s in all.")
    text = path.read_text() if path.exists() else "# Cost-model fidelity\n\n<!-- RESULTS -->\n<!-- /RESULTS -->\n"
    head, _, rest = text.partition("<!-- RESULTS -->")
    _, _, tail = rest.partition("<!-- /RESULTS -->")
    path.write_text(f"{head}<!-- RESULTS -->\n{block}\n<!-- /RESULTS -->{tail}")


if __name__ == "__main__":
    sys.exit(main())
