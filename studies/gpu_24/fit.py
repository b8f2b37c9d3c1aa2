#!/usr/bin/env python
"""Fit the gpu24 cost model on a measured dense-vs-2:4 table and report it.

Reads a CSV written by ``studies/gpu_24/measure.py`` (default: the newest
``costmodels/data/gpu24_*.csv`` that is not the public one), picks the GPU target whose
``[measure] device_match`` occurs in the table's device names (or ``--target``), fits
:class:`costmodels.gpu24.Gpu24Model` and writes, under ``--out-dir``
(default ``studies/gpu_24/results``):

* ``<target>_fit.json`` — the held-out report (sign accuracy, MAPE, ...) and the saved model;
* ``<target>_speedup.png`` — held-out predicted vs measured speed-up, and measured speed-up
  against M for square N = K per dtype;
* ``<target>_speedup.md`` — the measured speed-up tables, also pasted into
  ``studies/gpu_24/README.md`` between the ``gpu24-results`` markers (unless ``--no-readme``).

Runs on any machine (no GPU needed). Exit status 0, or 2 with a one-line message.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # a script run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from costmodels.gpu24 import DATA_DIR, PUBLIC_TABLE, Gpu24Model, device_matches, load_table  # noqa: E402
from hwsearch.core.errors import HwsearchError  # noqa: E402
from targets.spec import TargetSpec, list_targets  # noqa: E402

log = logging.getLogger("gpu24.fit")
README = Path(__file__).parent / "README.md"
START, END = "<!-- gpu24-results:start -->", "<!-- gpu24-results:end -->"


def pick_table(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    cands = [p for p in DATA_DIR.glob("gpu24_*.csv") if p.resolve() != PUBLIC_TABLE.resolve()]
    if not cands:
        raise HwsearchError(f"no measured table in {DATA_DIR}: run studies/gpu_24/measure.py on the GPU first, "
                            "or pass --table")
    return max(cands, key=lambda p: p.stat().st_mtime)


def pick_target(df: pd.DataFrame, name: str | None) -> TargetSpec:
    specs = {n: s for n, s in list_targets().items() if s.kind == "gpu"}
    if name:
        if name not in specs:
            raise HwsearchError(f"unknown GPU target {name!r}; valid: {', '.join(sorted(specs))}")
        return specs[name]
    devices = sorted(set(df["device"].astype(str)))
    for spec in specs.values():
        match = spec.measure.get("device_match")
        if match and any(device_matches(d, match) for d in devices):
            return spec
    raise HwsearchError(f"no GPU spec's device_match occurs in the table's devices ({' | '.join(devices)}); "
                        "pass --target")


def markdown_tables(df: pd.DataFrame, report: dict) -> str:
    """The README section: provenance, the held-out report, and measured speed-ups (N = K)."""
    ok = df[(df["error"].str.strip() == "") & np.isfinite(df["speedup"])]
    first = df.iloc[0]
    lines = [f"Measured on **{first['device']}** ({first.get('sm_count', '?')} SMs), driver {first.get('driver', '?')}, "
             f"torch {first.get('torch', '?')}, CUDA {first.get('cuda', '?')}, cuSPARSELt {first.get('cusparselt', '?')}, "
             f"{str(df['date'].min())[:10] if 'date' in df else '?'}; {len(df)} rows, {len(df) - len(ok)} failed "
             f"(backend {', '.join(sorted(set(df['backend'].astype(str))))}).", "",
             "| held-out | rows | shapes | folds | sign accuracy | peak-ratio baseline | MAPE of s | within ±10 % | "
             "Kendall τ | estimator |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| gpu24 | {report['n_rows']} | {report['n_shapes']} | {report['folds']} | {report['sign_accuracy']:.3f} | "
             f"{report['baseline_sign_accuracy']:.3f} | {report['mape']:.3f} | {report['within10']:.3f} | "
             f"{report['kendall_tau']:.3f} | {report['estimator']} |", ""]
    for dtype, g in ok.groupby("dtype"):
        sq = g[g["N"] == g["K"]]
        lines.append(f"**{dtype}**: share of shapes where 2:4 pays (s > 1): {float((g['speedup'] > 1).mean()):.2f} "
                     f"of {len(g)}; measured speed-up dense/2:4 for N = K (rows: M):")
        lines.append("")
        if sq.empty:
            lines.append("(no square shapes measured)")
        else:
            piv = sq.pivot_table(index="M", columns="N", values="speedup", aggfunc="median")
            lines.append("| M \\ N=K | " + " | ".join(str(int(c)) for c in piv.columns) + " |")
            lines.append("|---" * (len(piv.columns) + 1) + "|")
            for m, r in piv.iterrows():
                lines.append(f"| {int(m)} | " + " | ".join("" if not np.isfinite(v) else f"{v:.2f}" for v in r) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(model: Gpu24Model, df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ho = model.heldout
    ax = axes[0]
    if ho is not None and len(ho):
        for dtype, g in ho.groupby("dtype"):
            ax.scatter(g["speedup"], g["pred"], s=12, alpha=0.7, label=dtype)
        lo, hi = 0.8 * min(ho["speedup"].min(), ho["pred"].min()), 1.2 * max(ho["speedup"].max(), ho["pred"].max())
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.axhline(1, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("measured speed-up (dense / 2:4)")
    ax.set_ylabel("predicted on held-out shapes")
    ax.set_title("gpu24 held-out predictions")
    ax = axes[1]
    ok = df[(df["error"].str.strip() == "") & np.isfinite(df["speedup"]) & (df["N"] == df["K"])]
    for (dtype, n), g in ok.groupby(["dtype", "N"]):
        g = g.sort_values("M")
        ax.plot(g["M"], g["speedup"], marker=".", lw=1, label=f"{dtype} N=K={n}")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens = batch x spatial)")
    ax.set_ylabel("measured speed-up")
    ax.set_title(str(df["device"].iloc[0]))
    if len(ok):
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_readme(section: str, readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise HwsearchError(f"{readme} lacks the {START} / {END} markers; restore them from git")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=Path, default=None, help="measured CSV (default: newest costmodels/data/gpu24_*.csv)")
    p.add_argument("--target", default=None, help="GPU target name (default: from the table's device names)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--estimator", choices=("auto", "ridge", "gbr"), default="auto")
    p.add_argument("--any-device", action="store_true",
                   help="fit every row, not only those whose device matches the target's device_match")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite studies/gpu_24/README.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        table = pick_table(args.table)
        df = load_table(table)
        target = pick_target(df, args.target)
        model = Gpu24Model(target, table=df, any_device=args.any_device, estimator=args.estimator)
        if model.report is None:
            raise HwsearchError(f"fitting on {table} produced no report")
        report = model.report.to_dict() | {"table": str(table)}
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = target.name
        model_path = model.save(args.out_dir / f"{stem}_model.json")
        (args.out_dir / f"{stem}_fit.json").write_text(json.dumps({"target": target.identity, "report": report,
                                                                    "model_file": model_path.name}, indent=2))
        plot(model, df, args.out_dir / f"{stem}_speedup.png")
        section = markdown_tables(df, report)
        (args.out_dir / f"{stem}_speedup.md").write_text(section + "\n")
        if not args.no_readme:
            update_readme(section)
    except HwsearchError as exc:
        print(f"fit.py: {exc}", file=sys.stderr)
        return 2
    print(f"{target.identity}: held-out sign accuracy {report['sign_accuracy']:.3f} (peak-ratio baseline "
          f"{report['baseline_sign_accuracy']:.3f}), MAPE {report['mape']:.3f} on {report['n_rows']} rows / "
          f"{report['n_shapes']} shapes; wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
