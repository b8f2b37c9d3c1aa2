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
                         cfg: Any, target: Any) -> dict[str, Path]:
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
        "dense_latency_s": front.attrs.get("dense_latency_s"),
        "front": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                  for row in front.drop(columns=["plan"]).to_dict("records")],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files["summary"] = out / "summary.json"
    return files
