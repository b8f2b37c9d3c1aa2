"""Which measured plan to ship when it will be fine-tuned: ranked by accuracy *after* the
fine-tune, not before.

The search scores plans without fine-tuning (BatchNorm re-estimated: the accuracy a plan has as
cut). Near a tight latency budget that proxy ranks plans poorly: one plan loses 60 points as cut
and 2 after 200 steps of fine-tuning, another loses 40 as cut and 5 after
(``studies/deployment``). When the export fine-tunes (``hwsearch export --finetune-steps N``),
:func:`pick_finetuned` fine-tunes the ``candidates`` most accurate measured plans that met the
search's latency budget (every measured plan when it had none), each from the same start and
seed as the export will, and returns the fastest whose fine-tuned accuracy is within
``max_drop`` of the dense model's — the same rule as without fine-tuning
(:func:`hwsearch.exporting.pick_plan`), applied to what ships.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from hwsearch import prune, recalibrate, zoo
from hwsearch.core import records
from hwsearch.core.errors import StoreError
from hwsearch.core.plan import Plan
from hwsearch.graph import ModelGraph

__all__ = ["pick_finetuned", "finetuned_accuracy"]


def finetuned_accuracy(graph: ModelGraph, plan: Plan, data: Any, steps: int, *, channel_multiple: int = 8,
                       min_density: float = 0.0, criterion: str = "magnitude",
                       bn_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None) -> float:
    """Validation accuracy of ``plan`` folded, BatchNorm re-estimated (``bn_batches``) and
    fine-tuned ``steps`` steps (Adam, lr 1e-3, seed 0): exactly the model
    :func:`hwsearch.exporting.bundle` ships with the same arguments."""
    dec = prune.decide(graph, plan, criterion=criterion, channel_multiple=channel_multiple, min_density=min_density)
    folded = prune.apply(graph, dec, mode="fold").eval()
    if bn_batches is not None:
        recalibrate.recalibrate_bn(folded, bn_batches())
    zoo.train(folded, data, steps=steps, lr=1e-3)
    return zoo.evaluate(folded.eval(), data)


def pick_finetuned(search_dir: Path, graph: ModelGraph, data: Any, *, steps: int, max_drop: float,
                   candidates: int = 5, speedup_needed: float | None = None, channel_multiple: int = 8,
                   min_density: float = 0.0, criterion: str = "magnitude",
                   bn_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
                   say: Callable[[str], None] = lambda m: None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The measurement record of the plan to ship after ``steps`` of fine-tuning, and every
    candidate tried (``plan_key``, ``accuracy`` as cut, ``accuracy_finetuned``, ``latency_s``,
    ``speedup``). Candidates: measured pruned plans whose measured speed-up over the fastest dense
    runtime is at least ``speedup_needed`` (all when None or when none is), the ``candidates``
    most accurate as cut. The pick is the fastest candidate within ``max_drop`` of the dense
    accuracy after fine-tuning; None when none is. The dense model's accuracy is the search's
    record of it (not fine-tuned: fine-tuning a trained dense model changes little). Fastest: by
    the speed-up measured in each plan's own sitting (:func:`hwsearch.core.records.fastest`;
    latencies of different sittings are not comparable on a drifting machine).
    Raises :class:`StoreError` when nothing was measured."""
    every = records.load(Path(search_dir) / "measurements.jsonl", strict=False)
    recs = [r for r in every if not r.get("error") and r.get("latency_s")]
    dense_key = Plan().key
    dense_acc = records.accuracy_of(every, dense_key)
    pruned = {r["plan_key"]: r for r in recs if r["plan_key"] != dense_key and r.get("accuracy") is not None}
    if not pruned or dense_acc is None:
        raise StoreError(f"no measured pruned plan with an accuracy (and the dense model's) in {search_dir}: "
                         "run `hwsearch search` first")

    def speedup(r: dict) -> float:
        return float(r.get("speedup_vs_fastest") or r.get("speedup") or 0.0)

    pool = list(pruned.values())
    if speedup_needed:
        fast = [r for r in pool if speedup(r) >= speedup_needed]
        pool = fast or pool
    pool = sorted(pool, key=lambda r: (-r["accuracy"], r["latency_s"]))[:candidates]
    tried = []
    for i, r in enumerate(pool, 1):
        plan = Plan.from_dict(r["plan"])
        acc = finetuned_accuracy(graph, plan, data, steps, channel_multiple=channel_multiple,
                                 min_density=min_density, criterion=criterion, bn_batches=bn_batches)
        tried.append({"plan_key": r["plan_key"], "accuracy": r["accuracy"], "accuracy_finetuned": acc,
                      "latency_s": r["latency_s"], "speedup": speedup(r) or None, "record": r})
        say(f"fine-tuned candidate {i}/{len(pool)} [{r['plan_key']}] {plan.compact()}: accuracy "
            f"{r['accuracy']:.3f} as cut -> {acc:.3f} after {steps} steps (dense {dense_acc:.3f}), "
            f"{speedup(r):.2f}x measured")
    ok = [t["record"] for t in tried if t["accuracy_finetuned"] >= dense_acc - max_drop]
    for t in tried:
        del t["record"]
    if not ok:
        return None, tried
    return records.fastest(ok), tried
