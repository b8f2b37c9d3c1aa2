"""Tables and plots of a finished search (``hwsearch report``): the Pareto front, per-layer
sparsity, predicted vs measured latency."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from hwsearch.core import records
from hwsearch.plots import fidelity_plot, layers_plot, pareto_plot
from hwsearch.searching.front import front_with_measurements, pareto_front
from hwsearch.searching.storage import open_storage
from hwsearch.searching.summary import SearchSummary

__all__ = ["study_report"]


def study_report(search_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Plots and tables of a finished search directory (``hwsearch report``):

    * ``report_front.csv`` / ``report_front.png`` — last round's Pareto front, accuracy vs
      predicted and measured latency;
    * ``report_layers.csv`` / ``report_layers.png`` — per-layer pattern and ratio of each front plan;
    * ``report_fidelity.csv`` / ``report_fidelity.png`` — predicted (at measurement time) vs
      measured latency of every measured plan, by round;
    * baselines from ``<search_dir>/baselines.csv`` when present (written by the baselines study).
    """
    search_dir = Path(search_dir)
    summary = SearchSummary.load(search_dir)
    out = Path(out or search_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(summary.storage)
    study = optuna.load_study(study_name=summary.study, storage=storage)
    recs = records.StudyRecords(storage, summary.config["study_name"]).load()
    front = front_with_measurements(pareto_front(study), recs, summary.target)
    files: dict[str, Path] = {}
    csv = front.drop(columns=["plan"])
    csv.to_csv(out / "report_front.csv", index=False)
    files["front_csv"] = out / "report_front.csv"
    files["front_png"] = pareto_plot(study, front, out / "report_front.png", f"{summary.model} on {summary.target}")

    layer_rows = []
    for _, row in front.iterrows():
        for layer, ch in row["plan"].items():
            layer_rows.append({"plan_key": row["plan_key"], "layer": layer, "pattern": ch["pattern"], "ratio": ch["ratio"]})
    layers = pd.DataFrame(layer_rows, columns=["plan_key", "layer", "pattern", "ratio"])
    layers.to_csv(out / "report_layers.csv", index=False)
    files["layers_csv"] = out / "report_layers.csv"
    if not layers.empty:
        layers_plot(layers, front, out / "report_layers.png")
        files["layers_png"] = out / "report_layers.png"

    ok = pd.DataFrame([{"round": r.get("round"), "plan_key": r["plan_key"], "predicted_latency_s": r["predicted_latency_s"],
                        "measured_latency_s": r["latency_s"], "costmodel": r.get("costmodel"), "mode": r.get("mode")}
                       for r in recs if not r.get("error") and r.get("latency_s")])
    if not ok.empty:
        ok["rel_error"] = (ok["predicted_latency_s"] - ok["measured_latency_s"]) / ok["measured_latency_s"]
        ok.to_csv(out / "report_fidelity.csv", index=False)
        files["fidelity_csv"] = out / "report_fidelity.csv"
        fidelity_plot(ok, out / "report_fidelity.png")
        files["fidelity_png"] = out / "report_fidelity.png"
    base = search_dir / "baselines.csv"
    if base.exists():
        files["baselines_csv"] = base
    return files
