"""Layer collapse under global pruning at initialisation: magnitude, SNIP, GraSP, SynFlow, random.

Reproduces the qualitative claim of Tanaka et al. (2020), "Pruning neural networks without
any data by iteratively conserving synaptic flow": at extreme global sparsity, single-shot
criteria whose scores shrink with layer size (SNIP, GraSP, magnitude at init) prune some layer
away entirely — the network is then disconnected and cannot learn — while iterative SynFlow
keeps every layer connected up to much higher compression.

Model: VGG-11-style (8 conv layers with BatchNorm, one linear classifier), 8× narrower than
VGG-11 (widths 8…64), on sklearn's handwritten digits upsampled from 8×8 to 16×16 (1 797
images, shipped with scikit-learn: nothing is downloaded). SNIP and GraSP see 4 batches of
64 real labelled training digits; SynFlow (100 iterations) and magnitude/random see no data.

Outputs (``--out``, default ``results/`` next to this file): ``densities.csv`` (per method,
sparsity and layer: kept weights, density, connected density, emptied/disconnected),
``summary.csv`` (per method and sparsity: collapse, emptied layers, test accuracy after a
short training of the masked network), ``max_sparsity.csv`` (largest sparsity before
collapse, by bisection), ``robustness.csv`` (collapse at the extreme sparsities over several
seeds), ``densities.png`` and ``summary.md`` (the tables of the README).

Run: ``python studies/synflow_collapse/run.py`` (a few minutes on 2 CPU cores; ``--quick`` for
a smoke run).
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from sklearn.datasets import load_digits

from hwsearch import collapse, importance

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)

HERE = Path(__file__).resolve().parent
# VGG-11 layout (8 convs) at 1/8 width; pools placed so the last convs run at 2x2, where
# every tap of a 3x3 kernel meets real pixels.
CFG: tuple[int | str, ...] = (8, "M", 16, "M", 32, 32, "M", 64, 64, 64, 64, "M")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
ACC_SPARSITIES = (0.9, 0.99, 0.999)
METHODS = ("magnitude", "snip", "grasp", "synflow", "random")


class VGG(nn.Module):
    def __init__(self, cfg: Iterable[int | str] = CFG, in_channels: int = 1, classes: int = 10,
                 init: str = "paper") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)
        # initialisation of the SynFlow paper's models (Kaiming-normal, zero biases, BN 1/0):
        # activations keep their scale through depth, unlike PyTorch's default init ("torch")
        for m in self.modules() if init == "paper" else ():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def prunable(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def digits(seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split (80/20, shuffled by ``seed``) of sklearn digits, upsampled, standardised."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


class Memo(importance.Criterion):
    """Caches a criterion's scores per sparsity so the report, the bisection and the training
    reuse one SynFlow run per sparsity."""

    def __init__(self, inner: importance.Criterion) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_data = inner.needs_data
        self.iterative = inner.iterative
        self._cache: dict[float | None, dict[str, torch.Tensor]] = {}

    def scores(self, model, layers, data=None, *, example_inputs=None, sparsity=None):  # noqa: ANN001, ANN201
        key = None if not self.iterative else round(float(sparsity or 0.0), 12)
        if key not in self._cache:
            self._cache[key] = self.inner.scores(model, layers, data, example_inputs=example_inputs,
                                                 sparsity=sparsity)
        return self._cache[key]


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def train_and_test(model: nn.Module, masks: dict[str, torch.Tensor] | None, data: tuple, epochs: int,
                   seed: int) -> float:
    """Test accuracy after ``epochs`` of SGD on the masked network (masks stay applied)."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    import copy

    net = copy.deepcopy(model)
    mods = dict(net.named_modules())
    for name, mask in (masks or {}).items():
        parametrize.register_parametrization(mods[name], "weight", _Mask(mask))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * ((len(ytr) + 63) // 64)))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return float((net(xte).argmax(1) == yte).float().mean())


def breaks_at(rows: pd.DataFrame) -> str:
    """Index of the first layer (execution order = table order here) whose output carries no
    flow from the input, or '' when the flow reaches the output."""
    dead = rows.sort_values("layer_index")
    dead = dead[~dead.flow_out.astype(bool)]
    return "" if dead.empty else str(int(dead.layer_index.iloc[0]))


def criterion(name: str, iterations: int) -> importance.Criterion:
    return Memo(importance.get(name, iterations=iterations) if name == "synflow" else importance.get(name))


def run(out: Path, seed: int, epochs: int, iterations: int, seeds: int, sparsities: tuple[float, ...],
        acc_sparsities: tuple[float, ...], init: str = "paper") -> None:
    log = logging.getLogger("synflow_collapse")
    out.mkdir(parents=True, exist_ok=True)
    data = digits(seed)
    xtr, ytr = data[0], data[1]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(4):
            yield xtr[i * 64:(i + 1) * 64], ytr[i * 64:(i + 1) * 64]

    example = (xtr[:1],)
    torch.manual_seed(seed)
    model = VGG(init=init)
    layers = prunable(model)
    t0 = time.time()
    dense_acc = train_and_test(model, None, data, epochs, seed) if epochs else float("nan")
    log.info("dense accuracy %.3f (%.0fs)", dense_acc, time.time() - t0)

    reports, summary, maxes = [], [], []
    for name in METHODS:
        t = time.time()
        crit = criterion(name, iterations)
        rep = collapse.report(model, crit, sparsities, batches if crit.needs_data else None,
                              example_inputs=example)
        rep["layer_index"] = rep.layer.map({n: i for i, n in enumerate(layers)})
        reports.append(rep)
        smax = collapse.max_sparsity_before_collapse(model, example, crit,
                                                     data=batches if crit.needs_data else None, tol=0.05)
        maxes.append({"method": name, "max_sparsity_before_collapse": smax,
                      "max_compression": 1.0 / (1.0 - smax)})
        for s in sparsities:
            r = rep[rep.sparsity == s]
            row = {"method": name, "sparsity": s, "any_collapsed": bool(r.any_collapsed.iloc[0]),
                   "emptied_layers": " ".join(str(i) for i in r[r.emptied].layer_index),
                   "flow_breaks_at": breaks_at(r), "min_layer_density": float(r.density.min()),
                   "test_acc": float("nan")}
            if epochs and s in acc_sparsities:
                scores = crit.scores(model, layers, batches if crit.needs_data else None,
                                     example_inputs=example, sparsity=s)
                masks = importance.global_keep(scores, 1.0 - s)
                row["test_acc"] = train_and_test(model, masks, data, epochs, seed)
            summary.append(row)
        log.info("%s done in %.0fs; collapse from %.5f", name, time.time() - t, smax)

    dens = pd.concat(reports, ignore_index=True)
    summ = pd.DataFrame(summary)
    mx = pd.DataFrame(maxes)
    dens.to_csv(out / "densities.csv", index=False)
    summ.to_csv(out / "summary.csv", index=False)
    mx.to_csv(out / "max_sparsity.csv", index=False)

    robust = []
    for sd in range(seeds):
        torch.manual_seed(1000 + sd)
        m = VGG(init=init)
        for name in ("snip", "grasp", "synflow"):
            crit = criterion(name, iterations)
            rep = collapse.report(m, crit, (0.998, 0.999), batches if crit.needs_data else None, example_inputs=example)
            rep["layer_index"] = rep.layer.map({n: i for i, n in enumerate(layers)})
            for s, r in rep.groupby("sparsity"):
                robust.append({"seed": 1000 + sd, "method": name, "sparsity": s,
                               "any_collapsed": bool(r.any_collapsed.iloc[0]),
                               "emptied_layers": " ".join(str(i) for i in r[r.emptied].layer_index),
                               "flow_breaks_at": breaks_at(r)})
    rob = pd.DataFrame(robust)
    rob.to_csv(out / "robustness.csv", index=False)

    plot(dens, layers, model, out / "densities.png")
    md = markdown(summ, mx, rob, dens_acc=dense_acc, epochs=epochs, layers=layers, model=model)
    (out / "summary.md").write_text(md)
    print(md)


def plot(dens: pd.DataFrame, layers: list[str], model: nn.Module, path: Path) -> None:
    sizes = {n: dict(model.named_modules())[n].weight.numel() for n in layers}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), sharey=True)
    sparsities = sorted(dens.sparsity.unique())
    cmap = plt.get_cmap("viridis")
    floor = 1e-5
    for ax, name in zip(axes.flat, METHODS):
        d = dens[dens.criterion == name]
        for i, s in enumerate(sparsities):
            r = d[d.sparsity == s].sort_values("layer_index")
            y = np.maximum(r.density.to_numpy(), floor)
            color = cmap(i / max(1, len(sparsities) - 1))
            style = "--" if bool(r.any_collapsed.any()) else "-"
            ax.plot(r.layer_index, y, marker="o", ms=3, color=color, ls=style, label=f"{s:g}")
            emptied = r[r.emptied]
            ax.scatter(emptied.layer_index, np.full(len(emptied), floor), marker="x", s=60, color=color, zorder=3)
        ax.set_yscale("log")
        ax.set_title(name + (" (100 iterations)" if name == "synflow" else ""))
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([f"{i}\n{sizes[n] // 1000}k" if sizes[n] >= 1000 else f"{i}\n{sizes[n]}"
                            for i, n in enumerate(layers)], fontsize=7)
        ax.axhline(floor, color="red", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("remaining density (log; x at bottom = layer emptied)")
    axes.flat[3].set_ylabel("remaining density")
    for ax in axes[1]:
        ax.set_xlabel("layer (index, weights)")
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, title="global sparsity\n(dashed: network collapsed)", loc="center", ncol=2)
    fig.suptitle("Per-layer density after unguarded global pruning at init (VGG-11/8 on 16x16 digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summ: pd.DataFrame, mx: pd.DataFrame, rob: pd.DataFrame, *, dens_acc: float, epochs: int,
             layers: list[str], model: nn.Module) -> str:
    lines = ["### Collapse per method and global sparsity", "",
             "cell: `ok` = every layer keeps a connected weight; otherwise `empty L…` lists the layers "
             "left with no weight and `cut@L…` the first layer whose output no longer carries any "
             "input→output flow (a layer can keep weights and still be disconnected)"
             + (f"; test accuracy after {epochs} epochs of masked training in parentheses "
                f"(dense: {dens_acc:.3f}, chance 0.10)" if epochs else ""), ""]
    sparsities = sorted(summ.sparsity.unique())
    lines.append("| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
    lines.append("|---|" + "---|" * len(sparsities))
    for name in METHODS:
        cells = []
        for s in sparsities:
            r = summ[(summ.method == name) & (summ.sparsity == s)].iloc[0]
            c = "ok" if not r.any_collapsed else cell(r.emptied_layers, r.flow_breaks_at)
            if not np.isnan(r.test_acc):
                c += f" ({r.test_acc:.2f})"
            cells.append(c)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Largest global sparsity before some layer collapses (bisection, 5% density tolerance)", "",
              "| method | max sparsity | max compression |", "|---|---|---|"]
    for r in mx.itertuples():
        lines.append(f"| {r.method} | {r.max_sparsity_before_collapse:.5f} | {r.max_compression:,.0f}x |")
    if len(rob):
        lines += ["", f"### Robustness over {rob.seed.nunique()} further initialisations", "",
                  "| method | sparsity | collapsed in | how (per collapsed seed) |", "|---|---|---|---|"]
        for (name, s), r in rob.groupby(["method", "sparsity"], sort=False):
            how = "; ".join(cell(e, b) for e, b, c in zip(r.emptied_layers, r.flow_breaks_at, r.any_collapsed) if c)
            lines.append(f"| {name} | {s:g} | {int(r.any_collapsed.sum())}/{len(r)} | {how or '-'} |")
    mods = dict(model.named_modules())
    lines += ["", "Layers: " + ", ".join(f"L{i}=`{n}` ({mods[n].weight.numel()} w)" for i, n in enumerate(layers)),
              ""]
    return "\n".join(lines)


def cell(emptied: str, breaks: str) -> str:
    parts = []
    if emptied:
        parts.append("empty " + ",".join(f"L{e}" for e in str(emptied).split()))
    if breaks:
        parts.append(f"cut@L{breaks}")
    return " ".join(parts) or "disconnected"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5, help="masked training epochs for the accuracy column (0: skip)")
    ap.add_argument("--iterations", type=int, default=100, help="SynFlow iterations")
    ap.add_argument("--seeds", type=int, default=3, help="extra initialisations for the robustness table")
    # The model is tiny: one intra-op thread is fastest, and on shared cores two threads can
    # be 100x slower (OpenMP spin-waits while the other thread is descheduled).
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--init", choices=("paper", "torch"), default="paper",
                    help="weight init: the SynFlow paper's (Kaiming-normal, zero bias) or PyTorch's default")
    ap.add_argument("--quick", action="store_true", help="smoke run: few sparsities, 10 SynFlow iterations")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    sparsities, acc = SPARSITIES, ACC_SPARSITIES
    if args.quick:
        sparsities, acc = (0.9, 0.999), (0.999,)
        args.iterations, args.seeds, args.epochs = 10, 1, min(args.epochs, 1)
    t = time.time()
    run(args.out, args.seed, args.epochs, args.iterations, args.seeds, sparsities, acc, args.init)
    logging.getLogger("synflow_collapse").info("finished in %.0fs", time.time() - t)


if __name__ == "__main__":
    main()
