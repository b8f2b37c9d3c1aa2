"""Study: the zoo of real architectures through the whole loop on the host, and the per-layer 2:4
decisions the search would offer on an NVIDIA H100.

For each zoo model (ResNet-18-style and ViT on digits; BERT-like and Llama-like with grouped-query
attention from ``transformers`` configs on a synthetic token task):

1. **Analysis**: prunable layers, channel groups, groups refused (attention heads, residual
   streams) with their reasons, counted non-layer ops (attention, matmul, embedding, norm,
   softmax).
2. **Search on the host** (``hwsearch.search``) at ``--budget`` × the dense latency in the fastest
   runtime, in that runtime (ONNX Runtime here): the dense model timed first, Optuna trials on the
   cost model, the picks measured with the dense model in interleaved sittings, refit. Reported:
   search time, dense latency, and the plan with the largest measured speed-up (over the dense
   model in the fastest runtime, with its 95 % CI) within ``--max-drop`` of dense accuracy
   (BatchNorm-recalibrated accuracy as the search scores it; no fine-tuning).
3. **Ship**: that plan exported (``hwsearch.export``) and ``verify``-ed: artefacts against the
   masked model, the shipped ``model.onnx`` timed against the dense one.
4. **2:4 on nvidia-h100**: the search space the search would build there (patterns dense and
   nm, the gpu24 cost model): which linear layers are offered 2:4 and why the others are not,
   with the model's predicted per-layer speed-up (dense ÷ 2:4).

Writes ``results.csv``, ``h100_24.csv``, ``architectures.png``, ``provenance.json`` and the tables
in ``README.md``::

    python studies/architectures/run.py            # [--models resnet,vit,bert,llama] [--rounds 2]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

import costmodels
import hwsearch
from hwsearch import zoo
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.graph import analyze
from hwsearch.searching import SearchConfig
from hwsearch.space import SearchSpace
from targets.runtimes import runtime_versions
from targets.spec import get_target

HERE = Path(__file__).resolve().parent
ZOO = {"resnet": ("hwsearch.zoo2d:resnet_digits", "hwsearch.zoo2d:digits_data"),
       "vit": ("hwsearch.zoo_vit:vit_digits", "hwsearch.zoo2d:digits_data"),
       "bert": ("hwsearch.zoo_text:bert_tokens", "hwsearch.zoo_text:token_data"),
       "llama": ("hwsearch.zoo_text:llama_tokens", "hwsearch.zoo_text:token_data")}


def analysis_row(name: str, graph) -> dict:
    groups = graph.groups.values()
    ops = graph.ops if graph.ops is not None else pd.DataFrame(columns=["kind"])
    return {"model": name, "layers": len(graph.table), "groups": len(graph.groups),
            "prunable_groups": sum(g.prunable for g in groups),
            "refused_groups": sum(bool(g.reason) for g in groups),
            "attention_blocks": len(graph.heads),
            "head_prunable_blocks": sum(not h.reason for h in graph.heads.values()),
            "ops": ", ".join(f"{k} {n}" for k, n in ops["kind"].value_counts().sort_index().items()) or "—",
            "uncovered": len(graph.uncovered)}


def h100_rows(name: str, graph) -> list[dict]:
    t = get_target("nvidia-h100")
    cm = costmodels.default_for(t)
    space = SearchSpace.build(graph, t, patterns_wanted=("dense", "nm"), cost_model=cm, memory_matters=False)
    dense = cm.predict(graph, Plan(), allow_gaps=True).layers["latency_s"]
    rows = []
    for layer in graph.table.index:
        offered = "nm" in space.allowed.get(layer, ())
        sparse = cm.predict(graph, Plan({layer: LayerChoice("nm", n=2, m=4)}), allow_gaps=True).layers.at[layer, "latency_s"] \
            if offered else math.nan
        rows.append({"model": name, "layer": layer, "kind": graph.table.at[layer, "kind"], "offered_24": offered,
                     "predicted_speedup": float(dense[layer] / sparse) if offered else math.nan,
                     "why_not": "" if offered else (space.dropped or {}).get(layer, {}).get("nm", "not a linear/conv")})
    return rows


def search_row(name: str, model: str, data: str, args, work: Path) -> dict:
    out = work / name
    t0 = time.perf_counter()
    res = hwsearch.search(SearchConfig(out_dir=out, model=model, data=data, rounds=args.rounds, trials=args.trials,
                                       latency_budget_x=args.budget, measure_top_k=3, seed=0),
                          progress=lambda m: print(f"  [{name}] {m}", flush=True))
    seconds = time.perf_counter() - t0
    front = res.front
    dense_acc = front.attrs.get("dense_accuracy")
    base = res.baseline
    row = {"model": name, "search_s": round(seconds, 1), "runtime": res.runtime,
           "dense_us": (base.fastest_latency_s or math.nan) * 1e6 if base else math.nan,
           "dense_accuracy": dense_acc}
    ok = front.dropna(subset=["speedup_vs_fastest"])
    if dense_acc is not None:
        ok = ok[ok["accuracy"] >= dense_acc - args.max_drop]
    if ok.empty:
        return {**row, "plan": "none measured within the drop"}
    best = ok.sort_values("speedup_vs_fastest", ascending=False).iloc[0]
    rec = next((r for rr in res.rounds for r in rr.measured if r["plan_key"] == best["plan_key"]), {})
    row.update({"plan_key": best["plan_key"], "plan": Plan.from_dict(best["plan"]).compact(),
                "accuracy": float(best["accuracy"]), "speedup": float(best["speedup_vs_fastest"]),
                "speedup_lo": rec.get("speedup_vs_fastest_lo", rec.get("speedup_lo")),
                "speedup_hi": rec.get("speedup_vs_fastest_hi", rec.get("speedup_hi")),
                "meets_budget": bool(best["speedup_vs_fastest"] >= 1 / args.budget)})
    try:
        bundle, _ = hwsearch.export(out, plan_key=best["plan_key"], max_drop=1.0)
        from hwsearch.exporting import verify

        v = verify(bundle)
        row["verify"] = "; ".join(f"{k}: {s.split(':')[0] if not k == 'latency' else s}" for k, s in v.items())
    except Exception as exc:  # a failed export is a result of the study, not a crash
        row["verify"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return row


def plot(res: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    r = res.dropna(subset=["speedup"]) if "speedup" in res else res.iloc[0:0]
    ax.bar(r["model"], r["speedup"], color="tab:blue")
    if "speedup_lo" in r:
        lo = (r["speedup"] - r["speedup_lo"].astype(float)).clip(lower=0)
        hi = (r["speedup_hi"].astype(float) - r["speedup"]).clip(lower=0)
        ax.errorbar(r["model"], r["speedup"], yerr=[lo, hi], fmt="none", c="k", capsize=4)
    ax.axhline(1.0, c="k", lw=0.8)
    ax.set_ylabel("measured speed-up over dense\n(fastest runtime, 95% CI)")
    ax.set_title("zoo models: best plan within the accuracy drop", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _libs() -> dict[str, str]:
    out = {}
    for mod in ("optuna", "torch_pruning", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet,vit,bert,llama")
    p.add_argument("--budget", type=float, default=0.7)
    p.add_argument("--max-drop", type=float, default=0.02)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hwsearch-architectures")
    args = p.parse_args(argv)
    names = [m.strip() for m in args.models.split(",")]
    analysis, results, h100 = [], [], []
    for name in names:
        model, data = ZOO[name]
        net, example = zoo.load_model(model)
        graph = analyze(net, example if example is not None else zoo.load_data(data).example_input)
        analysis.append(analysis_row(name, graph))
        h100 += h100_rows(name, graph)
        results.append(search_row(name, model, data, args, args.work))
        print(results[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    res = pd.DataFrame(analysis).merge(pd.DataFrame(results), on="model")
    res.to_csv(args.out / "results.csv", index=False)
    pd.DataFrame(h100).to_csv(args.out / "h100_24.csv", index=False)
    plot(res, args.out / "architectures.png")
    prov = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": _cpu_model(),
            "cores": os.cpu_count(), "versions": {**runtime_versions(), **_libs()},
            "args": vars(args) | {"out": str(args.out), "work": str(args.work)}}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    print(res.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
