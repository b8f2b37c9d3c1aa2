"""MCU cost-model fidelity study.

Measures a grid of layers (random shapes from TinyML-sized ranges, extra categories the ranges
miss — one/three input channels, odd channel counts, depthwise conv1d — and every layer of the
reference models at several channel-pruning levels; × every weight format the op supports ×
densities) on both emulated cores (Cortex-M4 / mps2-an386, Cortex-M7 / mps2-an500) with exact instruction
counts, splits the *shapes* into train and held-out sets, fits :mod:`costmodels.mcu` on the
train rows and reports, on held-out rows, the share of per-layer predictions within ±10 % and
±5 % of measured and Kendall's τ (nn-Meter's fidelity measures). Writes the rows as CSV, a
predicted-vs-measured plot and ``README.md`` next to this file.

    python studies/mcu_fidelity/run.py                 # int8, both cores (~5 min on 2 cores)
    python studies/mcu_fidelity/run.py --layers 24,24,14,14 --extra 9,9,8 --dtypes int8,fp32 \
        --ship --out /tmp/mcu_ship                     # the shipped costmodels/data/ files (~15 min)

Run it from the repository root with ``PYTHONPATH=.`` when hwsearch is installed in editable mode
from another checkout. ``--ship`` writes ``costmodels/data/mcu_counts_cortex_m4.csv`` / ``_m7.csv`` (all rows, with
provenance columns) and ``costmodels/data/mcu_model.json`` (fitted on all of them).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from costmodels import mcu as mcu_model
from costmodels.base import fidelity
from targets import mcu

HERE = Path(__file__).resolve().parent

log = logging.getLogger("mcu_fidelity")

SPARSE_DENSITIES = (0.1, 0.25, 0.5, 0.75)
BLOCK_DENSITIES = (0.125, 0.375, 0.625)


def _pick(rng: np.random.Generator, vals) -> int:
    return int(vals[int(rng.integers(len(vals)))])


def sample_layers(rng: np.random.Generator, n_linear: int, n_conv: int, n_conv1d: int, n_dw: int) -> list[dict]:
    """Random TinyML-sized layers (KWS DS-CNN, MobileNet-0.25, ResNet-8, autoencoder ranges)."""
    layers = []
    for _ in range(n_linear):
        layers.append({"op": "linear", "w": (_pick(rng, [8, 12, 16, 24, 32, 48, 64, 96, 128, 256]),
                                             _pick(rng, [16, 24, 32, 40, 64, 80, 128, 200, 256, 512])),
                       "x_lead": _pick(rng, [1, 1, 1, 2, 4]), "kw": {}})
    for _ in range(n_conv):
        k = _pick(rng, [1, 1, 3, 3, 3, 5])
        ci = _pick(rng, [4, 8, 12, 16, 24, 32, 48, 64])
        co = _pick(rng, [8, 16, 24, 32, 48, 64])
        hw = _pick(rng, [4, 6, 8, 10, 12, 16, 20]) if k > 1 else _pick(rng, [4, 8, 12, 16, 24])
        stride = _pick(rng, [1, 1, 1, 2])
        pad = _pick(rng, [0, k // 2, k // 2]) if k > 1 else 0
        groups = _pick(rng, [1, 1, 1, 1, 2]) if k > 1 and ci % 8 == 0 and co % 8 == 0 else 1
        layers.append({"op": "conv2d", "w": (co, ci // groups, k, k), "x": (ci, hw, hw),
                       "kw": {"stride": stride, "padding": pad, "groups": groups}})
    for _ in range(n_conv1d):
        k = _pick(rng, [3, 5, 7, 9])
        ci = _pick(rng, [4, 8, 16, 24, 32, 40, 64])
        co = _pick(rng, [8, 16, 32, 48, 64])
        L = _pick(rng, [16, 24, 32, 49, 64, 98, 128])
        layers.append({"op": "conv1d", "w": (co, ci, k), "x": (ci, L),
                       "kw": {"stride": _pick(rng, [1, 1, 2]), "padding": _pick(rng, [0, k // 2])}})
    for _ in range(n_dw):
        k = _pick(rng, [3, 3, 3, 5])
        c = _pick(rng, [8, 16, 24, 32, 48, 64, 96])
        hw = _pick(rng, [5, 8, 10, 12, 16, 20, 25])
        layers.append({"op": "dwconv2d", "w": (c, 1, k, k), "x": (c, hw, hw),
                       "kw": {"stride": _pick(rng, [1, 1, 2]), "padding": _pick(rng, [k // 2, k // 2, 0])}})
    return layers


def sample_extra(rng: np.random.Generator, n_c1: int, n_odd: int, n_dw1d: int) -> list[dict]:
    """Shapes the TinyML ranges above miss: convs with one (or three) input channels (a signal or
    image stem), channel counts and reductions that are not multiples of 4 (odd channel counts
    after pruning), and depthwise conv1d both as a grouped conv1d (one input channel per group:
    the ``gemm`` kernels) and as a height-1 ``dwconv2d`` (the depthwise kernel)."""
    layers = []
    for i in range(n_c1):
        if i % 3 != 2:
            k = _pick(rng, [3, 5, 5, 7, 9])
            co = _pick(rng, [5, 8, 12, 16, 24, 32, 48])
            L = _pick(rng, [20, 32, 40, 64, 100])
            layers.append({"op": "conv1d", "w": (co, 1, k), "x": (1, L), "cat": "cin1",
                           "kw": {"stride": _pick(rng, [1, 1, 2]), "padding": _pick(rng, [0, k // 2, k // 2])}})
        else:
            k = _pick(rng, [3, 5])
            ci = _pick(rng, [1, 3])
            co = _pick(rng, [8, 12, 16, 24])
            hw = _pick(rng, [8, 10, 12, 16])
            layers.append({"op": "conv2d", "w": (co, ci, k, k), "x": (ci, hw, hw), "cat": "cin1",
                           "kw": {"stride": _pick(rng, [1, 2]), "padding": _pick(rng, [0, k // 2])}})
    for i in range(n_odd):
        kind = i % 3
        if kind == 0:
            layers.append({"op": "linear", "w": (_pick(rng, [3, 5, 7, 10, 13, 21, 33]),
                                                 _pick(rng, [10, 30, 50, 75, 99, 130])),
                           "x_lead": _pick(rng, [1, 1, 2]), "kw": {}, "cat": "odd"})
            continue
        ci = _pick(rng, [2, 3, 5, 6, 7, 9, 10, 13, 18, 22, 30])
        co = _pick(rng, [3, 5, 7, 9, 10, 12, 15, 20, 33])
        groups = 1
        if ci % 2 == 0 and co % 2 == 0 and rng.random() < 0.3:
            groups = 2
        if kind == 1:
            k = _pick(rng, [1, 3, 5])
            L = _pick(rng, [16, 20, 33, 40, 64])
            layers.append({"op": "conv1d", "w": (co, ci // groups, k), "x": (ci, L), "cat": "odd",
                           "kw": {"stride": _pick(rng, [1, 1, 2]), "padding": _pick(rng, [0, k // 2]),
                                  "groups": groups}})
        else:
            k = _pick(rng, [1, 3, 3, 5])
            hw = _pick(rng, [5, 7, 9, 12])
            layers.append({"op": "conv2d", "w": (co, ci // groups, k, k), "x": (ci, hw, hw), "cat": "odd",
                           "kw": {"stride": _pick(rng, [1, 2]), "padding": _pick(rng, [0, k // 2]),
                                  "groups": groups}})
    for i in range(n_dw1d):
        c = _pick(rng, [7, 8, 12, 16, 24, 32, 48, 64, 96, 128])
        k = _pick(rng, [3, 3, 5, 7])
        L = _pick(rng, [10, 20, 32, 49, 64])
        st, pad = _pick(rng, [1, 1, 2]), _pick(rng, [k // 2, k // 2, 0])
        if i % 2 == 0:
            layers.append({"op": "conv1d", "w": (c, 1, k), "x": (c, L), "cat": "dw1d",
                           "kw": {"stride": st, "padding": pad, "groups": c}})
        else:
            layers.append({"op": "dwconv2d", "w": (c, 1, 1, k), "x": (c, 1, L), "cat": "dw1d",
                           "kw": {"stride": (1, st), "padding": (0, pad)}})
    return layers


def reference_layers(widths: tuple[int, ...] = (32, 8), ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)) -> list[dict]:
    """Every conv/linear layer of the reference models (``hwsearch.zoo.MNIST1DNet`` at each width)
    with the channel counts uniform channel pruning at ``ratios`` leaves (multiples of 8), each
    distinct shape once, in the op the ``mcu`` plan cost model prices it as — the depthwise conv1d
    also as a height-1 ``dwconv2d``."""
    import torch

    from costmodels.mcu_cost import layer_shape
    from targets.mcu.ops import mcu_op
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.core.resolve import resolve
    from hwsearch.zoo import MNIST1DNet

    seen: set = set()
    layers = []
    for width in widths:
        g = analyze(MNIST1DNet(width).eval(), torch.zeros(1, 1, 40))
        leaders = [n for n in g.table.index if bool(g.table.at[n, "group_leader"])
                   and bool(g.table.at[n, "channel_prunable"])]
        for ratio in ratios:
            plan = Plan({n: LayerChoice("channel", ratio) for n in leaders} if ratio > 0 else {})
            res = resolve(g.table, g.groups, plan)
            for name, r in res.iterrows():
                op = mcu_op(r)
                s = layer_shape(r, int(r["kept_in"]), int(r["kept_out"]))
                entries = []
                if op == "linear":
                    entries.append({"op": "linear", "w": (s["out_features"], s["in_features"]), "x_lead": 1, "kw": {}})
                else:
                    co, ci, gr = s["out_channels"], s["in_channels"], s["groups"]
                    kw = {"stride": s["stride"], "padding": s["padding"], "groups": gr}
                    entries.append({"op": "conv1d", "w": (co, ci // gr, s["kernel"]), "x": (ci, s["in_len"]), "kw": kw})
                    if r["kind"] == "depthwise":
                        entries.append({"op": "dwconv2d", "w": (co, 1, 1, s["kernel"]), "x": (ci, 1, s["in_len"]),
                                        "kw": {"stride": (1, s["stride"]), "padding": (0, s["padding"])}})
                for e in entries:
                    key = (e["op"], e["w"], e.get("x"), tuple(sorted(e["kw"].items())))
                    if key in seen:
                        continue
                    seen.add(key)
                    layers.append({**e, "cat": f"ref-w{width}-{name}"})
    return layers


def _reduction_len(layer: dict) -> tuple[int, int]:
    w = layer["w"]
    if layer["op"] == "linear":
        return w[0], w[1]
    if layer["op"] == "dwconv2d":
        return w[0], w[2] * w[3]
    groups = layer["kw"].get("groups", 1)
    return w[0] // groups, int(np.prod(w[1:]))


def variants(layer: dict) -> list[tuple[str, float]]:
    """(fmt, density) pairs this layer is measured in."""
    rows, cols = _reduction_len(layer)
    out = [("dense", 1.0)]
    out += [("csr", d) for d in SPARSE_DENSITIES[::2]] + [("bitmask", d) for d in SPARSE_DENSITIES[1::2]]
    if layer["op"] == "dwconv2d":
        return out
    ci = layer["w"][1]
    if cols % 4 == 0 and (layer["op"] == "linear" or ci % 4 == 0):
        out.append(("nm", 0.5))
    if rows % 4 == 0 and cols % 4 == 0 and (layer["op"] == "linear" or ci % 4 == 0):
        out += [("block", d) for d in BLOCK_DENSITIES]
    return out


def measure_all(layers: list[dict], cpus: list[str], dtypes: list[str], seed: int, jobs: int) -> pd.DataFrame:
    tasks = []
    for sid, layer in enumerate(layers):
        for fmt, dens in variants(layer):
            for dtype in dtypes:
                for cpu in cpus:
                    tasks.append((sid, layer, fmt, dens, dtype, cpu))

    def one(t):
        sid, layer, fmt, dens, dtype, cpu = t
        r = np.random.default_rng(seed * 100003 + sid)
        w = r.standard_normal(layer["w"]).astype(np.float32)
        if layer["op"] == "linear":
            xs = (layer["x_lead"], layer["w"][1]) if layer["x_lead"] > 1 else (layer["w"][1],)
        else:
            xs = layer["x"]
        x = r.standard_normal(xs).astype(np.float32)
        b = r.standard_normal(layer["w"][0]).astype(np.float32)
        groups = layer["kw"].get("groups", 1)
        wp = mcu.prune_to_format(layer["op"], w, fmt, dens, groups=groups)
        m = mcu.measure_layer(layer["op"], wp, x, fmt=fmt, dtype=dtype, cpu=cpu, bias=b, **layer["kw"])
        row = m.to_row()
        row["shape_id"] = sid
        row["target_density"] = dens
        row["cat"] = layer.get("cat", "random")
        return row

    t0 = time.perf_counter()
    rows = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, row in enumerate(pool.map(one, tasks)):
            rows.append(row)
            if (i + 1) % 100 == 0:
                log.info("%d/%d measured (%.0f s)", i + 1, len(tasks), time.perf_counter() - t0)
    return pd.DataFrame(rows)


def evaluate(df: pd.DataFrame, heldout_frac: float, seed: int) -> tuple[pd.DataFrame, mcu_model.McuInstructionModel]:
    ok = df[df["error"].isna() & df["instructions"].notna()].copy()
    shape_ids = np.array(sorted(ok["shape_id"].unique()))
    rng = np.random.default_rng(seed + 1)
    held = set(rng.choice(shape_ids, size=max(1, int(round(heldout_frac * len(shape_ids)))), replace=False).tolist())
    ok["split"] = np.where(ok["shape_id"].isin(held), "heldout", "train")
    model = mcu_model.fit(ok[ok["split"] == "train"], source="studies/mcu_fidelity train split")
    preds = []
    for _, r in ok.iterrows():
        shape = {k[6:]: v for k, v in r.items() if k.startswith("shape.") and pd.notna(v)}
        try:
            preds.append(model.predict(r["op"], r["fmt"], r["dtype"], shape, float(r["density"]), cpu=r["cpu"]))
        except ValueError:
            preds.append(math.nan)
    ok["predicted"] = preds
    ok["rel_err"] = (ok["predicted"] - ok["instructions"]) / ok["instructions"]
    return ok, model


def plot(ok: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, split in zip(axes, ("train", "heldout")):
        d = ok[ok["split"] == split]
        for fmt, dd in d.groupby("fmt"):
            ax.scatter(dd["instructions"], dd["predicted"], s=10, label=fmt, alpha=0.7)
        lo, hi = d["instructions"].min(), d["instructions"].max()
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.plot(xs, xs * 1.1, "k--", lw=0.5)
        ax.plot(xs, xs * 0.9, "k--", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured instructions (QEMU -icount)")
        ax.set_ylabel("predicted instructions")
        ax.set_title(f"{split} ({len(d)} layers)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_tables(ok: pd.DataFrame) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    held = ok[ok["split"] == "heldout"].dropna(subset=["predicted"])
    overall = fidelity(held["predicted"].to_numpy(), held["instructions"].to_numpy())
    overall["n"] = len(held)
    by = []
    for keys, d in held.groupby(["cpu", "dtype", "op", "fmt"]):
        f = fidelity(d["predicted"].to_numpy(), d["instructions"].to_numpy())
        by.append({"cpu": keys[0], "dtype": keys[1], "op": keys[2], "fmt": keys[3], "n": len(d),
                   "within10": f["within10"], "within5": f["within5"], "mape": f["mape"]})
    # instructions per dense MAC and per kept MAC (MACs of the stored weights), for orientation
    ok = ok.copy()
    ok["insn_per_mac"] = ok["instructions"] / ok["stats.macs"]
    ok["insn_per_kept_mac"] = ok["instructions"] / (ok["stats.macs"] * ok["stats.stored"] / ok["stats.weights"])
    per = (ok.groupby(["cpu", "dtype", "op", "fmt"])[["insn_per_mac", "insn_per_kept_mac"]].median()
           .round(2).reset_index())
    return overall, pd.DataFrame(by), per


def subsets(held: pd.DataFrame) -> dict[str, dict]:
    """Held-out fidelity per dtype, per core and per shape category (``random``: the TinyML
    ranges; ``cin1``, ``odd``, ``dw1d``: :func:`sample_extra`; ``ref``: the reference models)."""
    out = {}
    held = held.assign(category=[("ref" if str(c).startswith("ref-") else str(c)) for c in held["cat"]]) \
        if "cat" in held.columns else held
    for col in ("dtype", "cpu", "category"):
        if col not in held.columns:
            continue
        for val, d in held.dropna(subset=["predicted"]).groupby(col):
            f = fidelity(d["predicted"].to_numpy(), d["instructions"].to_numpy())
            f["n"] = len(d)
            out[str(val)] = f
    return out


def markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    if df.empty:
        return "(none)"
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def shipped_paragraph() -> list[str]:
    """What the shipped files are, from the provenance the ``--ship`` run stored in the model."""
    try:
        prov = mcu_model.default_model().provenance
    except mcu_model.McuModelError as exc:
        return [f"(no shipped model: {exc})"]
    s = prov.get("ship_run", {})
    if not s:
        return ["`costmodels/data/mcu_model.json` has no record of the run that wrote it."]
    h = s.get("heldout", {})
    return [f"`costmodels/data/mcu_counts_cortex_m4.csv` / `_m7.csv` and `mcu_model.json` come from `{s.get('command')}` "
            f"({s.get('shapes')} shapes, {s.get('rows')} measurements, {s.get('failed', 0)} failed, dtypes "
            f"{', '.join(s.get('dtypes', []))}, fitted on all rows; {s.get('elapsed_s', 0):.0f} s). Its own held-out "
            f"split ({int(h.get('n', 0))} measurements of shapes left out of a fit on the rest): "
            f"**{h.get('within10', float('nan')):.1%} within ±10 %**, {h.get('within5', float('nan')):.1%} within ±5 %, "
            f"τ = {h.get('kendall_tau', float('nan')):.4f}.",
            "",
            "Held-out fidelity of that run per category:", "",
            "| category | n | within ±10 % | within ±5 % | mean abs. error |", "|---|---|---|---|---|",
            *[f"| {k} | {int(v['n'])} | {v['within10']:.1%} | {v['within5']:.1%} | {v['mape']:.2%} |"
              for k, v in s.get("heldout_by_category", {}).items()]]


REF_NOTE = ", every layer of the reference models at channel-pruning ratios 0/0.25/0.5/0.75"


def write_readme(path: Path, args: argparse.Namespace, ok: pd.DataFrame, overall: dict, by: pd.DataFrame,
                 per: pd.DataFrame, elapsed_s: float, n_failed: int, versions: dict) -> None:
    held = ok[ok["split"] == "heldout"]
    lines = [
        "# MCU cost-model fidelity", "",
        "Per-layer instruction counts of the `targets.mcu` kernels, measured in QEMU "
        f"(`-icount shift=7`, SysTick), predicted by `costmodels.mcu` fitted on the train split.", "",
        f"Command: `{' '.join(['python studies/mcu_fidelity/run.py', *sys.argv[1:]])}` "
        f"({elapsed_s:.0f} s on this machine). Versions: gcc {versions.get('gcc')}, {versions.get('qemu')}, "
        f"python {versions.get('python')}.", "",
        f"Layers: {ok['shape_id'].nunique()} shapes (seed {args.seed}; random TinyML ranges "
        f"`--layers {args.layers}`, extra categories `--extra {args.extra}`"
        f"{REF_NOTE if args.reference else ''}), {len(ok)} measurements "
        f"({n_failed} failed), cores {', '.join(sorted(ok['cpu'].unique()))}, dtypes "
        f"{', '.join(sorted(ok['dtype'].unique()))}. Held-out: {held['shape_id'].nunique()} shapes never seen "
        f"in training ({len(held)} measurements).", "",
        "## Held-out fidelity", "",
        "| subset | n | within ±10 % | within ±5 % | Kendall τ | mean abs. error |",
        "|---|---|---|---|---|---|",
        f"| all | {overall['n']} | **{overall['within10']:.1%}** | **{overall['within5']:.1%}** | "
        f"**{overall['kendall_tau']:.4f}** | {overall['mape']:.2%} |",
        *[f"| {k} | {int(v['n'])} | {v['within10']:.1%} | {v['within5']:.1%} | {v['kendall_tau']:.4f} | "
          f"{v['mape']:.2%} |" for k, v in subsets(held).items()],
        "", "Per group (held-out):", "", markdown(by), "",
        "## Instructions per MAC (median over the grid and densities)", "",
        "`insn_per_mac`: instructions / dense MACs (all weights, pruned ones included) — below the dense "
        "row means faster than dense. `insn_per_kept_mac`: instructions / MACs of the stored weights "
        "(the format's cost per useful MAC, requantisation and im2col included). Density-resolved "
        "figures are in `results.csv`.", "",
        markdown(per, ".2f"), "",
        "![predicted vs measured](pred_vs_meas.png)", "",
        "## Shipped coefficients", "",
        *shipped_paragraph(), "",
        "Files: `results.csv` (every measurement with provenance, split, prediction), "
        "`pred_vs_meas.png`, `model_train.json` (the model fitted on the train split).", "",
        "Counts are instructions, not cycles: QEMU has no timing model. Latency = instructions × CPI / "
        "clock with the CPI stated (as an assumption) in `targets/specs/cortex_m*.toml`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", default="cortex-m4,cortex-m7")
    ap.add_argument("--dtypes", default="int8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--heldout", type=float, default=0.3, help="share of shapes held out")
    ap.add_argument("--layers", default="16,16,10,10", help="counts: linear,conv2d,conv1d,dwconv2d")
    ap.add_argument("--extra", default="6,6,6", help="counts: 1/3-input-channel convs, odd channel counts, "
                                                   "depthwise conv1d (see sample_extra)")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="include the reference models' layers (hwsearch.zoo.MNIST1DNet, widths 32 and 8)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--ship", action="store_true", help="also write costmodels/data/mcu_* (all rows)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    why = mcu.available()
    if why:
        print(f"cannot run: {why}")
        return 2
    t0 = time.perf_counter()
    counts = [int(c) for c in args.layers.split(",")]
    layers = sample_layers(np.random.default_rng(args.seed), *counts)
    layers += sample_extra(np.random.default_rng(args.seed + 1000), *(int(c) for c in args.extra.split(",")))
    if args.reference:
        layers += reference_layers()
    df = measure_all(layers, args.cpus.split(","), args.dtypes.split(","), args.seed, args.jobs)
    n_failed = int(df["error"].notna().sum())
    for _, r in df[df["error"].notna()].head(5).iterrows():
        log.warning("failed: %s %s %s: %s", r["op"], r["fmt"], r["cpu"], r["error"])
    ok, model = evaluate(df, args.heldout, args.seed)
    elapsed = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    ok.to_csv(args.out / "results.csv", index=False)
    model.save(args.out / "model_train.json")
    plot(ok, args.out / "pred_vs_meas.png")
    overall, by, per = summary_tables(ok)
    versions = mcu.tool_versions()
    write_readme(args.out / "README.md", args, ok, overall, by, per, elapsed, n_failed, versions)
    print(f"held-out: within10={overall['within10']:.3f} within5={overall['within5']:.3f} "
          f"tau={overall['kendall_tau']:.4f} n={overall['n']} ({elapsed:.0f} s)")
    if args.ship:
        data = mcu_model.DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        keep = [c for c in df.columns]
        for cpu in sorted(df["cpu"].unique()):
            tag = cpu.replace("cortex-", "cortex_")
            df[df["cpu"] == cpu][keep].to_csv(data / f"mcu_counts_{tag}.csv", index=False)
        full = mcu_model.fit(df, source="costmodels/data/mcu_counts_cortex_m4.csv + _m7.csv "
                                        "(studies/mcu_fidelity/run.py --ship)")
        held = ok[ok["split"] == "heldout"]
        full.provenance["ship_run"] = {
            "command": " ".join(["python studies/mcu_fidelity/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "shapes": int(df["shape_id"].nunique()), "rows": int(len(df)), "failed": n_failed,
            "dtypes": sorted(df["dtype"].unique().tolist()), "elapsed_s": round(elapsed, 1),
            "heldout": {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in overall.items()},
            "heldout_by_category": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in subsets(held).items()
                                    if k in set(held["cat"].map(lambda c: "ref" if str(c).startswith("ref-") else str(c)))},
        }
        full.save(data / "mcu_model.json")
        print(f"wrote {data}/mcu_counts_*.csv and mcu_model.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
