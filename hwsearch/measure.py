"""Measure a plan on a target's backend and turn the result into a measurement record.

The backend is chosen by the target spec's ``[measure] backend``. A failed build or run comes
back as a record with ``error`` set; the search goes on.
"""
from __future__ import annotations

import datetime as _dt
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from hwsearch.graph import ModelGraph
from hwsearch.core.plan import Plan

__all__ = ["measure_model", "map_layer_timings", "match_by_size", "versions"]

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Library versions recorded with every measurement and export."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("tvm", "optuna", "torch_pruning"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a missing optional library is simply not recorded
            pass
    return out


def match_by_size(numels: list[int], timed: list[dict]) -> list[float]:
    """In execution order, the k-th weight takes the next kernel timing whose weight has the
    same number of elements; NaN where none is left (never 0)."""
    out: list[float] = []
    pos = 0
    for n in numels:
        val = float("nan")
        for j in range(pos, len(timed)):
            if int(np.prod(timed[j]["weight_shape"])) == n:
                val, pos = float(timed[j]["median_s"]), j + 1
                break
        out.append(val)
    return out


def map_layer_timings(graph: ModelGraph, folded: nn.Module, layers: list[dict]) -> dict[str, float]:
    """Assign per-kernel timings to the table's layers: by the torch parameter each kernel call
    consumes (``weight_name`` = ``"<layer>.weight"``) when the backend reports it, else in
    execution order by the weight's element count. Unmatched layers are left out (not zero)."""
    by_name = {str(t["weight_name"]).removesuffix(".weight"): float(t["median_s"])
               for t in layers if t.get("weight_name")}
    if all(layer in by_name for layer in graph.table.index):
        return {layer: by_name[layer] for layer in graph.table.index}
    mods = dict(folded.named_modules())
    sizes = match_by_size([mods[layer].weight.numel() for layer in graph.table.index],
                          [t for t in layers if t.get("weight_shape")])
    return {layer: by_name.get(layer, t) for layer, t in zip(graph.table.index, sizes)
            if layer in by_name or t == t}


def measure_model(target: Any, graph: ModelGraph, folded: nn.Module, *, work_dir: Path, mode: str | None = None,
                  tuning_trials: int = 64, samples: int = 8, repeats: int = 10,
                  min_repeat_ms: int = 20, resolved: Any = None) -> dict[str, Any]:
    """Measure ``folded`` (a physically pruned model) on ``target``. Returns the backend's fields
    (``latency_s``, spread, ``layers``…, ``error``) plus ``layer_s`` mapped to layer names.
    The MCU backend also needs the plan's ``resolved`` table (each layer's storage format)."""
    backend = target.measure.get("backend", "none")
    if backend == "mcu-qemu":
        return _measure_mcu(target, graph, folded, resolved, work_dir=Path(work_dir))
    mode = mode or target.measure.get("mode", "quick")
    if backend in ("tvm-local", "tvm-rpc"):
        try:
            from targets import tvm as tvm_backend
        except Exception as exc:  # the TVM stack failed to import: a record, not a crash
            return _error_record(backend, mode, f"cannot import the TVM backend: {exc}")
        rpc = None
        if backend == "tvm-rpc":
            rpc = tvm_backend.RPCConfig.from_target(target)
        evaluator = tvm_backend.EvaluatorConfig(repeat=repeats, min_repeat_ms=min_repeat_ms)
        res = tvm_backend.measure(folded, graph.example_inputs, mode=mode, work_dir=Path(work_dir),
                                  tvm_target=dict(target.measure.get("tvm_target", {})) or None,
                                  trials=tuning_trials, samples=samples, rpc=rpc, evaluator=evaluator)
        rec = res.to_dict()
        rec["layer_s"] = map_layer_timings(graph, folded, rec.get("layers", [])) if rec.get("error") is None else {}
        return rec
    return _error_record(backend, mode, f"target {target.name!r} has measuring backend {backend!r}, which "
                                        "hwsearch cannot run on this machine")


def _measure_mcu(target: Any, graph: ModelGraph, folded: nn.Module, resolved: Any, *, work_dir: Path) -> dict[str, Any]:
    """Each layer of the folded model alone, int8, in QEMU: exact executed-instruction counts.
    ``latency_s`` = Σ instructions × the spec's assumed CPI / clock (kernels only, no glue)."""
    import time

    from costmodels.memory import layer_storage
    from costmodels.mcu_cost import mcu_fmt, mcu_op

    mode = "icount"
    try:
        import targets.mcu as mcu
    except Exception as exc:
        return _error_record("mcu-qemu", mode, f"cannot import the MCU backend: {exc}")
    missing = mcu.available()
    if missing:
        return _error_record("mcu-qemu", mode, missing)
    if resolved is None:
        return _error_record("mcu-qemu", mode, "internal: the MCU backend needs the resolved plan")
    cpu = str(target.measure.get("qemu_cpu", "cortex-m4"))
    cpi, clock = target.figure("compute", "cpi"), target.figure("compute", "clock_hz")
    storage = layer_storage(resolved, "int8")
    mods = dict(folded.named_modules())
    gen = torch.Generator().manual_seed(0)
    rows, layer_insn, errors = [], {}, []
    t0 = time.perf_counter()
    for layer, r in resolved.iterrows():
        mod = mods[layer]
        op = mcu_op(r)
        w = mod.weight.detach().numpy()
        in_shape = list(r["in_shape"][1:])
        if op == "linear":
            in_shape = [int(mod.in_features)]
        else:
            in_shape[0] = int(mod.in_channels)
        x = torch.randn(in_shape, generator=gen).numpy()
        fmt = mcu_fmt(str(r["pattern"]), str(storage.at[layer, "fmt"]))
        kw = {}
        if op != "linear":
            kw = {"stride": tuple(mod.stride), "padding": tuple(mod.padding), "groups": int(mod.groups)}
            if op == "conv1d":
                kw = {"stride": int(mod.stride[0]), "padding": int(mod.padding[0]), "groups": int(mod.groups)}
        m = mcu.measure_layer(op, w, x, fmt=fmt, dtype="int8", cpu=cpu, n=int(r["n"]), m=int(r["m"]),
                              block=tuple(r["block"]), bias=mod.bias.detach().numpy() if mod.bias is not None else None,
                              work_dir=work_dir / "mcu", **kw)
        rows.append(m.to_row())
        if m.error or m.instructions is None:
            errors.append(f"{layer} ({op}, {fmt}): {m.error}")
        else:
            layer_insn[layer] = int(m.instructions)
    total = sum(layer_insn.values())
    rec = _error_record("mcu-qemu", mode, "; ".join(errors)[:2000] if errors else None)
    rec.update({"device": f"qemu-system-arm {target.measure.get('board')} ({cpu})", "repeats": 1,
                "instructions": total if not errors else None, "layer_instructions": layer_insn,
                "latency_s": total * cpi / clock if not errors else None,
                "latency_note": f"instructions x assumed CPI {cpi:g} / clock {clock:g} Hz (QEMU has no timing model)",
                "layer_s": {k: v * cpi / clock for k, v in layer_insn.items()}, "mcu_rows": rows,
                "run_s": time.perf_counter() - t0})
    rec["versions"] = {**versions(), **{k.split(".", 1)[1]: v for k, v in rows[0].items() if k.startswith("version.")}} \
        if rows else versions()
    return rec


def _error_record(backend: str, mode: str, error: str | None) -> dict[str, Any]:
    return {"latency_s": None, "latency_iqr_s": None, "repeats": 0, "mode": mode, "backend": backend,
            "device": platform.node(), "versions": versions(), "layers": [], "layer_s": {},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "error": error}


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
