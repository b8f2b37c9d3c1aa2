"""``hwsearch profile``: measure per-layer latency across a grid of patterns and ratios.

For every prunable layer and every grid cell — channel pruning of the layer's own output
channels and of its input channels (the producer's group), and weight-level patterns at each
ratio — the layer is rebuilt alone at its pruned shape with its real weights (masked for
weight-level patterns). All cells go into ONE module (each cell on its own input) that the
target's backend compiles and times once, kernel by kernel, so a profile costs one tuning and
one build rather than one per cell. The dense whole model is measured too; the difference
between it and the sum of its layers is the model overhead.

The result is a DataFrame (one row per cell: layer, pattern, ratio, in/out fraction, kept
channels, MACs, measured seconds) written as CSV, a plot, and the input of the lookup-table
cost model (:mod:`costmodels.lut`).
"""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from hwsearch import prune
from hwsearch.core.errors import PlanError
from hwsearch.graph import ModelGraph
from hwsearch.measure import match_by_size, measure_model
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import kept_channels

__all__ = ["profile", "plot_profile"]

log = logging.getLogger(__name__)


class _Grid(nn.Module):
    def __init__(self, cells: list[nn.Module]) -> None:
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(c(x) for c, x in zip(self.cells, xs))


def _rebuild(mod: nn.Module, keep_out: torch.Tensor | None, keep_in: torch.Tensor | None, depthwise: bool) -> nn.Module:
    """A copy of conv/linear ``mod`` with only the kept output/input channels."""
    w = mod.weight.detach()
    b = mod.bias.detach() if mod.bias is not None else None
    if keep_out is not None:
        w = w[keep_out]
        b = b[keep_out] if b is not None else None
    if keep_in is not None and not depthwise:
        w = w[:, keep_in]
    if isinstance(mod, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        cls = type(mod)
        groups = w.shape[0] if depthwise else mod.groups
        new = cls(w.shape[1] * groups, w.shape[0], mod.kernel_size, stride=mod.stride, padding=mod.padding,
                  dilation=mod.dilation, groups=groups, bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new.eval()


def _cells(graph: ModelGraph, ratios: tuple[float, ...], patterns: tuple[str, ...], channel_multiple: int
           ) -> tuple[list[dict[str, Any]], list[nn.Module], list[torch.Tensor]]:
    t = graph.table
    mods = dict(graph.model.named_modules())
    rows, cells, inputs = [], [], []
    for layer in t.index:
        r = t.loc[layer]
        mod = mods[layer]
        depthwise = r["kind"] == "depthwise"
        x_shape = list(r["in_shape"])
        out_c, in_c = int(r["out_channels"]), int(r["in_channels"])
        out_ratios = ratios if (int(r["out_group"]) >= 0 and bool(r["channel_prunable"])) and "channel" in patterns else (0.0,)
        in_ratios = ratios if int(r["in_group"]) >= 0 and "channel" in patterns and not depthwise else (0.0,)
        if depthwise:  # its input channels are its output channels
            in_ratios = (0.0,)
        seen = set()
        for ro in out_ratios:
            for ri in in_ratios:
                ko = kept_channels(out_c, ro, channel_multiple)
                ki = kept_channels(in_c // max(1, int(r["in_expand"])), ri, channel_multiple) * int(r["in_expand"]) \
                    if ri > 0 else in_c
                if depthwise:
                    ki = ko
                if (ko, ki) in seen:
                    continue
                seen.add((ko, ki))
                keep_out = torch.arange(ko) if ko < out_c else None
                keep_in = torch.arange(ki) if ki < in_c and not depthwise else None
                cells.append(_rebuild(mod, keep_out, keep_in, depthwise))
                shape = list(x_shape)
                if r["op"] == "linear":
                    shape[-1] = ki
                else:
                    shape[1] = ki
                inputs.append(torch.randn(shape))
                rows.append({"layer": layer, "kind": r["kind"], "pattern": "channel" if (ko < out_c or ki < in_c) else "dense",
                             "ratio": 0.0, "out_frac": ko / out_c, "in_frac": ki / in_c, "kept_out": ko, "kept_in": ki})
        for pat in patterns:
            if pat in ("dense", "channel"):
                continue
            for ratio in ratios:
                if ratio <= 0:
                    continue
                try:
                    dec = prune.decide(graph, Plan({layer: LayerChoice(pat, ratio)}))
                except PlanError:
                    continue
                masked = copy.deepcopy(mod).eval()
                masked.weight.data.mul_(dec.masks[layer].to(masked.weight.dtype))
                cells.append(masked)
                inputs.append(torch.randn(x_shape))
                rows.append({"layer": layer, "kind": r["kind"], "pattern": pat, "ratio": float(dec.resolved.at[layer, "ratio"]),
                             "out_frac": 1.0, "in_frac": 1.0, "kept_out": out_c, "kept_in": in_c})
                if pat == "nm":
                    break  # N:M has one ratio
    return rows, cells, inputs


def profile(graph: ModelGraph, target: Any, *, work_dir: Path, ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
            patterns: tuple[str, ...] = ("dense", "channel", "unstructured"), channel_multiple: int = 8,
            mode: str | None = None, samples: int = 8, repeats: int = 10) -> pd.DataFrame:
    """Per-layer latency (seconds) over the grid; ``df.attrs`` holds the dense model's measured
    latency, the model overhead and the measurement provenance. Cells whose timing could not be
    matched get NaN (and are named in a warning), never 0."""
    rows, cells, inputs = _cells(graph, tuple(ratios), tuple(patterns), channel_multiple)
    grid = _Grid(cells).eval()

    class _G:  # a minimal graph view for measure_model: the grid's inputs, no layer mapping
        example_inputs = tuple(inputs)
        table = pd.DataFrame(index=[])

    res = measure_model(target, _G(), grid, work_dir=work_dir, mode=mode, samples=samples, repeats=repeats)
    if res.get("error"):
        raise RuntimeError(f"profiling measurement failed: {res['error']}")
    timed = [t for t in res.get("layers", []) if t.get("weight_shape")]
    by_cell = {str(t["weight_name"]): float(t["median_s"]) for t in timed if t.get("weight_name")}
    lat = [by_cell.get(f"cells.{i}.weight") for i in range(len(cells))]
    if any(v is None for v in lat):  # backend without parameter names: match in order by size
        lat = match_by_size([c.weight.numel() for c in cells], timed)
    df = pd.DataFrame(rows)
    df["latency_s"] = lat
    macs = []
    for row, cell, x in zip(rows, cells, inputs):
        with torch.no_grad():
            y = cell(x)
        per_out = cell.weight.numel() // cell.weight.shape[0]
        macs.append(int(y.numel() * per_out))
    df["macs"] = macs
    missing = df[df["latency_s"].isna()]
    if not missing.empty:
        log.warning("no kernel timing matched %d profile cells: %s", len(missing),
                    ", ".join(f"{r.layer}/{r.pattern}" for r in missing.itertuples()))
    dense = measure_model(target, graph, graph.model, work_dir=work_dir, mode=mode, samples=samples, repeats=repeats)
    dense_layers = df[(df["pattern"] == "dense")].groupby("layer")["latency_s"].first()
    df.attrs.update({
        "dense_latency_s": dense.get("latency_s"), "dense_error": dense.get("error"),
        "overhead_s": max(0.0, float(dense["latency_s"]) - float(dense_layers.sum())) if dense.get("latency_s") else None,
        "provenance": {k: res.get(k) for k in ("backend", "mode", "device", "versions", "date", "repeats", "tvm_target")},
    })
    return df


def plot_profile(df: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(df["layer"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ch = df[df["pattern"].isin(["dense", "channel"]) & (df["in_frac"] == 1.0)]
    for layer in layers:
        d = ch[ch["layer"] == layer].sort_values("out_frac")
        if len(d):
            axes[0].plot(d["out_frac"], d["latency_s"] * 1e6, "o-", label=layer, ms=3)
    axes[0].set_xlabel("fraction of output channels kept")
    axes[0].set_ylabel("kernel latency (µs)")
    axes[0].set_title("channel pruning (inputs unpruned)", fontsize=9)
    axes[0].legend(fontsize=7)
    wl = df[~df["pattern"].isin(["dense", "channel"])]
    dense = df[df["pattern"] == "dense"].set_index("layer")["latency_s"]
    for (layer, pat), d in wl.groupby(["layer", "pattern"]):
        if layer in dense.index:
            axes[1].plot(d["ratio"], d["latency_s"] / dense[layer], "o-", ms=3, label=f"{layer}/{pat}")
    axes[1].axhline(1.0, c="k", lw=0.8, ls="--")
    axes[1].set_xlabel("ratio of weights zeroed")
    axes[1].set_ylabel("latency / dense latency")
    axes[1].set_title("weight-level sparsity through dense kernels", fontsize=9)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def profile_target(target: str | Any, *, out: Path, model: str | None = None, data: str | None = None,
                   ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
                   patterns: tuple[str, ...] = ("dense", "channel", "unstructured"), channel_multiple: int = 8,
                   mode: str | None = None, samples: int = 8, repeats: int = 10,
                   progress: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Profile a target (``hwsearch profile``): :func:`profile` of ``model`` (``module:function``;
    default the reference model) written to ``out`` as ``profile.csv``, ``profile.json`` (the
    dense latency, overhead and provenance), ``profile.png`` and a lookup-table cost model
    ``costmodel-lut.json`` for ``--costmodel``. Returns the table and the files written."""
    from costmodels.lut import LUTModel
    from hwsearch import zoo
    from hwsearch.graph import analyze
    from targets.spec import get_target

    say = progress or (lambda msg: log.info(msg))
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise PlanError(f"ratios {list(ratios)} out of range: each ratio removed must be in [0, 1)")
    spec = get_target(target) if isinstance(target, str) else target
    name = model or zoo.REFERENCE[0]
    net, example = zoo.load_model(name)
    if example is None:
        example = zoo.load_data(data or zoo.REFERENCE[1]).example_input
    graph = analyze(net, example)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"profiling {len(graph.table)} layers of {name} on {spec.identity} ...")
    df = profile(graph, spec, work_dir=out / "tvm", ratios=tuple(ratios), patterns=tuple(patterns),
                 channel_multiple=channel_multiple, mode=mode, samples=samples, repeats=repeats)
    files = {"profile_csv": out / "profile.csv", "profile_json": out / "profile.json",
             "profile_png": out / "profile.png", "costmodel": out / "costmodel-lut.json"}
    df.to_csv(files["profile_csv"], index=False)
    files["profile_json"].write_text(json.dumps(df.attrs, indent=2, default=str))
    plot_profile(df, files["profile_png"], f"{spec.identity}: per-layer latency")
    LUTModel.from_profile(spec, df).save(files["costmodel"])
    return df, files
