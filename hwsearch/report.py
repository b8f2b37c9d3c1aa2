"""Tables and plots of a search: the Pareto front, predicted vs measured latency."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["write_search_outputs", "pareto_plot"]


def pareto_plot(study: optuna.Study, front: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy vs latency: every trial (predicted), the Pareto front (predicted) and the
    measured latency of the measured front plans, with the dense model's measurement."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.values[1] * 1e6 for t in done], [t.values[0] * 100 for t in done], s=10, c="0.75",
               label="trials (predicted)")
    ax.plot(front["predicted_latency_s"] * 1e6, front["accuracy"] * 100, "o-", c="tab:blue", ms=4,
            label="Pareto front (predicted)")
    m = front.dropna(subset=["measured_latency_s"])
    if not m.empty:
        ax.scatter(m["measured_latency_s"] * 1e6, m["accuracy"] * 100, marker="x", s=60, c="tab:red",
                   label="measured (TVM)", zorder=5)
        for _, r in m.iterrows():
            ax.plot([r["predicted_latency_s"] * 1e6, r["measured_latency_s"] * 1e6], [r["accuracy"] * 100] * 2,
                    c="tab:red", lw=0.6, alpha=0.6)
    dense = front.attrs.get("dense_latency_s")
    if dense:
        ax.axvline(dense * 1e6, ls="--", c="k", lw=0.8, label="dense model (measured)")
    ax.set_xlabel("latency per inference (µs)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_search_outputs(out: Path, study: optuna.Study, front: pd.DataFrame, recs: list[dict[str, Any]],
                         cfg: Any, target: Any, not_offered: dict[str, dict[str, str]] | None = None) -> dict[str, Path]:
    """``pareto.csv``, ``pareto.png`` and ``summary.json`` in ``out``."""
    files = {}
    csv = front.drop(columns=["plan"]).copy()
    csv["plan"] = [json.dumps(p, sort_keys=True) for p in front["plan"]]
    csv.to_csv(out / "pareto.csv", index=False)
    files["pareto_csv"] = out / "pareto.csv"
    files["pareto_png"] = pareto_plot(study, front, out / "pareto.png",
                                      f"{cfg.model} on {target.identity} — last round ({study.study_name})")
    ok = [r for r in recs if not r.get("error") and r.get("latency_s")]
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "target": target.identity, "model": cfg.model, "data": cfg.data, "study": study.study_name,
        "storage": cfg.storage_url(), "rounds": cfg.rounds, "trials_per_round": cfg.trials,
        "measured_plans": len(ok), "failed_measurements": len(recs) - len(ok),
        "summary_schema_version": 2,
        "dense_latency_s": front.attrs.get("dense_latency_s"),
        # the runtime plans were measured in, why, and the dense model per runtime
        "deployment": front.attrs.get("deployment"),
        "patterns_not_offered": not_offered or {},
        "front": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                  for row in front.drop(columns=["plan"]).to_dict("records")],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files["summary"] = out / "summary.json"
    return files


def study_report(search_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Plots and tables of a finished search directory (``hwsearch report``):

    * ``report_front.csv`` / ``report_front.png`` — last round's Pareto front, accuracy vs
      predicted and measured latency;
    * ``report_layers.csv`` / ``report_layers.png`` — per-layer pattern and ratio of each front plan;
    * ``report_fidelity.csv`` / ``report_fidelity.png`` — predicted (at measurement time) vs
      measured latency of every measured plan, by round;
    * baselines from ``<search_dir>/baselines.csv`` when present (written by the baselines study).
    """
    from hwsearch.core import records
    from hwsearch.core.errors import StoreError
    from hwsearch.search import _front, _front_with_measurements, open_storage

    search_dir = Path(search_dir)
    out = Path(out or search_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    summary_path = search_dir / "summary.json"
    if not summary_path.exists():
        raise StoreError(f"{summary_path} not found: give the output directory of `hwsearch search`")
    summary = json.loads(summary_path.read_text())
    storage = open_storage(summary["storage"])
    study = optuna.load_study(study_name=summary["study"], storage=storage)
    recs = records.StudyRecords(storage, summary["config"]["study_name"]).load()
    front = _front_with_measurements(_front(study), recs, summary["target"])
    files: dict[str, Path] = {}
    csv = front.drop(columns=["plan"])
    csv.to_csv(out / "report_front.csv", index=False)
    files["front_csv"] = out / "report_front.csv"
    files["front_png"] = pareto_plot(study, front, out / "report_front.png", f"{summary['model']} on {summary['target']}")

    layer_rows = []
    for _, row in front.iterrows():
        for layer, ch in row["plan"].items():
            layer_rows.append({"plan_key": row["plan_key"], "layer": layer, "pattern": ch["pattern"], "ratio": ch["ratio"]})
    layers = pd.DataFrame(layer_rows, columns=["plan_key", "layer", "pattern", "ratio"])
    layers.to_csv(out / "report_layers.csv", index=False)
    files["layers_csv"] = out / "report_layers.csv"
    if not layers.empty:
        piv = layers.pivot_table(index="plan_key", columns="layer", values="ratio", aggfunc="first").fillna(0.0)
        piv = piv.reindex(front["plan_key"]).fillna(0.0)
        pat = layers.pivot_table(index="plan_key", columns="layer", values="pattern", aggfunc="first")
        fig, ax = plt.subplots(figsize=(1.2 + 0.8 * piv.shape[1], 1.2 + 0.35 * piv.shape[0]))
        im = ax.imshow(piv.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, pk in enumerate(piv.index):
            for j, lay in enumerate(piv.columns):
                p = pat.at[pk, lay] if pk in pat.index and lay in pat.columns else None
                if isinstance(p, str):
                    ax.text(j, i, p[:2], ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(piv.shape[1]), piv.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(piv.shape[0]), [f"{k} ({a:.3f})" for k, a in zip(piv.index, front["accuracy"])], fontsize=7)
        fig.colorbar(im, ax=ax, label="ratio removed")
        ax.set_title("per-layer sparsity of the Pareto plans (un=unstructured, ch=channel)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "report_layers.png", dpi=120)
        plt.close(fig)
        files["layers_png"] = out / "report_layers.png"

    ok = pd.DataFrame([{"round": r.get("round"), "plan_key": r["plan_key"], "predicted_latency_s": r["predicted_latency_s"],
                        "measured_latency_s": r["latency_s"], "costmodel": r.get("costmodel"), "mode": r.get("mode")}
                       for r in recs if not r.get("error") and r.get("latency_s")])
    if not ok.empty:
        ok["rel_error"] = (ok["predicted_latency_s"] - ok["measured_latency_s"]) / ok["measured_latency_s"]
        ok.to_csv(out / "report_fidelity.csv", index=False)
        files["fidelity_csv"] = out / "report_fidelity.csv"
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for rnd, g in ok.groupby("round"):
            ax.scatter(g["measured_latency_s"] * 1e6, g["predicted_latency_s"] * 1e6, label=f"round {rnd}")
        lo, hi = ok[["measured_latency_s", "predicted_latency_s"]].min().min() * 1e6, \
            ok[["measured_latency_s", "predicted_latency_s"]].max().max() * 1e6
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.85", label="±10%")
        ax.set_xlabel("measured latency (µs)")
        ax.set_ylabel("predicted before measuring (µs)")
        ax.legend(fontsize=8)
        ax.set_title("cost model vs measurement, per round", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "report_fidelity.png", dpi=120)
        plt.close(fig)
        files["fidelity_png"] = out / "report_fidelity.png"
    base = search_dir / "baselines.csv"
    if base.exists():
        files["baselines_csv"] = base
    return files
