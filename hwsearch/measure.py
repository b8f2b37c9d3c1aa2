"""Measure a plan on a target's backend and turn the result into a measurement record.

The backend is the target spec's ``[measure] backend``, found in the registry of
:mod:`targets.measure` (``tvm-local``, ``tvm-rpc``, ``mcu-qemu``). A failed build or run, a
missing toolchain or a backend hwsearch does not have comes back as a record with ``error`` set;
the search goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from hwsearch.core.errors import SpecError
from hwsearch.core.plan import Plan
from hwsearch.graph import ModelGraph
from targets import measure as backends
from targets.measure import map_layer_timings, match_by_size, versions

__all__ = ["measure_model", "plan_record", "map_layer_timings", "match_by_size", "versions"]


def measure_model(target: Any, graph: ModelGraph, folded: nn.Module, *, work_dir: Path, mode: str | None = None,
                  tuning_trials: int = 64, samples: int = 8, repeats: int = 10,
                  min_repeat_ms: int = 20, resolved: Any = None, cost_model: str = "auto") -> dict[str, Any]:
    """Measure ``folded`` (a physically pruned model) on ``target`` with its spec's backend
    (:meth:`targets.measure.MeasureBackend.measure`). Returns the result's record fields
    (:meth:`targets.measure.MeasureResult.to_dict`: ``latency_s``, spread, ``layers``,
    ``layer_s`` mapped to layer names, ``error``…). The MCU backend also needs the plan's
    ``resolved`` table (each layer's storage format). ``cost_model`` guides TVM's tuned mode
    (``"xgb"``, ``"random"``; ``"auto"``: xgb when xgboost is installed)."""
    name = target.measure.get("backend", "none")
    try:
        backend = backends.get(name)
    except SpecError:
        mode = mode or target.measure.get("mode", "quick")
        return backends.error_result(name, mode, f"target {target.name!r} has measuring backend {name!r}, "
                                                 "which hwsearch cannot run on this machine").to_dict()
    extra = {} if cost_model == "auto" else {"cost_model": cost_model}  # only TVM backends take it
    return backend.measure(target, graph, folded, work_dir=Path(work_dir), mode=mode, resolved=resolved,
                           tuning_trials=tuning_trials, samples=samples, repeats=repeats,
                           min_repeat_ms=min_repeat_ms, **extra).to_dict()


def plan_record(*, plan: Plan, target: Any, measured: dict[str, Any], predicted_latency_s: float,
                costmodel: str, round_: int, study: str, accuracy: float | None, extra: dict | None = None) -> dict:
    """A measurement record (see :mod:`hwsearch.core.records`) for ``plan``."""
    rec = dict(measured)
    if "schema_version" in rec:  # the backend result's own layout version, not the record's
        rec["result_schema_version"] = rec.pop("schema_version")
    rec.update({"plan_key": plan.key, "plan": plan.to_dict(), "target": target.identity,
                "predicted_latency_s": predicted_latency_s, "costmodel": costmodel, "round": round_,
                "study": study, "accuracy": accuracy})
    rec.setdefault("versions", versions())
    if extra:
        rec.update(extra)
    return rec
