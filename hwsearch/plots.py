"""The plots of a search: its Pareto front, the per-layer sparsity of the front plans, and the
cost model's predictions against measurements. PNG files only (no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["pareto_plot", "layers_plot", "fidelity_plot"]


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


def layers_plot(layers: pd.DataFrame, front: pd.DataFrame, path: Path) -> Path:
    """Per-layer ratio (colour) and pattern (letters) of each front plan."""
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fidelity_plot(ok: pd.DataFrame, path: Path) -> Path:
    """Predicted (before measuring) vs measured latency of every measured plan, by round."""
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
