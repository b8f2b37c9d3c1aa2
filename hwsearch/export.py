"""Export a chosen plan as a deployment bundle.

A bundle directory holds the physically pruned model (``model.pt2`` from ``torch.export``),
the target's compiled artefact (``model.so`` for TVM CPU targets, built with the search's
tuning database), and ``manifest.json`` (schema version, plan, predicted and measured costs
with their provenance, library versions).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

import torch

from hwsearch import prune, records
from hwsearch.errors import PlanError, StoreError
from hwsearch.graph import ModelGraph
from hwsearch.measure import versions
from hwsearch.plan import Plan

__all__ = ["MANIFEST_SCHEMA_VERSION", "pick_plan", "bundle"]

log = logging.getLogger(__name__)
MANIFEST_SCHEMA_VERSION = 1


def pick_plan(search_dir: Path, *, plan_key: str | None = None, max_drop: float = 0.01) -> dict[str, Any]:
    """The measurement record of the plan to export from a search's output directory.

    With ``plan_key``: that plan. Otherwise the fastest *measured* plan whose accuracy is within
    ``max_drop`` (absolute) of the dense model's; the most accurate measured plan if none is.
    """
    recs = [r for r in records.load(Path(search_dir) / "measurements.jsonl", strict=False)
            if not r.get("error") and r.get("latency_s")]
    if not recs:
        raise StoreError(f"no successful measurement in {search_dir}/measurements.jsonl: run `hwsearch search "
                         f"--out {search_dir}` first")
    if plan_key:
        for r in recs:
            if r["plan_key"] == plan_key:
                return r
        raise PlanError(f"plan {plan_key!r} was not measured in {search_dir}; measured: "
                        f"{', '.join(sorted({r['plan_key'] for r in recs}))}")
    dense_key = Plan().key
    dense = next((r for r in recs if r["plan_key"] == dense_key), None)
    cands = [r for r in recs if r["plan_key"] != dense_key and r.get("accuracy") is not None] or recs
    if dense is not None and dense.get("accuracy") is not None:
        ok = [r for r in cands if r["accuracy"] >= dense["accuracy"] - max_drop]
        if ok:
            return min(ok, key=lambda r: r["latency_s"])
    return max(cands, key=lambda r: (r.get("accuracy") or 0.0, -r["latency_s"]))


def bundle(graph: ModelGraph, plan: Plan, target: Any, out: Path, *, channel_multiple: int = 8,
           min_density: float = 0.0, criterion: str = "magnitude", record: dict[str, Any] | None = None,
           predicted: dict[str, Any] | None = None, tvm_work_dir: Path | None = None,
           compile_artifact: bool = True) -> dict[str, Any]:
    """Write the bundle for ``plan`` into ``out``; returns the manifest. A failed compile of the
    target artefact is recorded in the manifest (``artifacts.error``), not raised."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dec = prune.decide(graph, plan, criterion=criterion, channel_multiple=channel_multiple, min_density=min_density)
    folded = prune.apply(graph, dec, mode="fold").eval()
    with torch.no_grad():
        ref = prune.apply(graph, dec, mode="mask")(*graph.example_inputs)
        got = folded(*graph.example_inputs)
    max_err = float((ref - got).abs().max())
    ep = torch.export.export(folded, graph.example_inputs)
    torch.export.save(ep, out / "model.pt2")
    artifacts: dict[str, Any] = {"pytorch": "model.pt2", "fold_vs_mask_max_abs_err": max_err}
    backend = target.measure.get("backend")
    if compile_artifact and backend in ("tvm-local", "tvm-rpc"):
        try:
            from targets import tvm as tvm_backend

            lib = tvm_backend.build_library(folded, graph.example_inputs, out_path=out / "model.so",
                                            work_dir=Path(tvm_work_dir or out / "tvm"),
                                            tvm_target=dict(target.measure.get("tvm_target", {})) or None,
                                            cross_compiler=target.measure.get("cross_compiler"))
            artifacts["tvm_library"] = Path(lib).name
        except Exception as exc:  # a failed build is a record in the manifest
            artifacts["error"] = f"TVM build failed: {type(exc).__name__}: {exc}"
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target.identity, "plan_key": plan.key, "plan": plan.to_dict(),
        "channel_multiple": channel_multiple, "criterion": criterion,
        "input_shapes": [list(x.shape) for x in graph.example_inputs],
        "predicted": predicted or {},
        "measured": {k: record.get(k) for k in ("latency_s", "latency_iqr_s", "latency_min_s", "latency_max_s",
                                                 "repeats", "number", "mode", "backend", "device", "date",
                                                 "versions", "tvm_target", "accuracy")} if record else None,
        "artifacts": artifacts, "versions": versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest
