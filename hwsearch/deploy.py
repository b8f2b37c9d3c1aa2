"""Deployment-grade latency: the dense model in every runtime of a device, and a round's plans
measured against the dense model in one interleaved sitting.

The latency that counts is the one the user deploys. Before a search, :func:`dense_baseline`
times the dense model in each runtime of the target (ONNX Runtime and torch in interleaved
sittings, TVM in its own processes: its thread pool would slow the others), and
:func:`choose_runtime` picks the fastest one that is a deployment latency (TVM's *quick* mode is
an exploration proxy and never chosen). Every round, :func:`measure_round` folds the picks,
merges those that fold to one configuration, and times the dense model (once) and each distinct
configuration in one sitting: a plan's speed-up is the median of paired per-round ratios with
a 95 % confidence interval of that median, and a plan identical to dense shares the dense measurement
and has no speed-up at all. Speed-ups are stored against the dense model in the same runtime and
against the dense model in the *fastest* runtime (chained through the baseline's ratio).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwsearch.graph import ModelGraph

__all__ = ["DenseBaseline", "dense_baseline", "baseline_record", "choose_runtime", "measure_round", "speedup_text",
           "SITTING_RUNTIMES"]

log = logging.getLogger(__name__)

#: Runtimes measured in interleaved sittings (:mod:`targets.runtimes`).
SITTING_RUNTIMES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class DenseBaseline:
    """The dense model's latency per runtime (seconds, median), with how each was measured.

    ``latency_s``: runtime → median latency; ``iqr_s``: runtime → interquartile range;
    ``eligible``: runtime → whether it is a deployment latency (TVM quick mode is not);
    ``notes``: runtime → how it was measured or why it failed; ``fastest``: the eligible runtime
    with the smallest latency (None when none was measured); ``versions``: runtime → version;
    ``layer_s``: runtime → the dense model's per-layer times where the runtime has a profiler."""

    latency_s: dict[str, float | None]
    iqr_s: dict[str, float | None]
    eligible: dict[str, bool]
    notes: dict[str, str]
    versions: dict[str, str]
    device: str = ""
    date: str = ""
    fastest: str | None = None
    layer_s: dict[str, dict[str, float]] | None = None  # runtime → per-layer times from its profiler

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DenseBaseline:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def fastest_latency_s(self) -> float | None:
        return self.latency_s.get(self.fastest) if self.fastest else None

    def ratio_to_fastest(self, runtime: str) -> float | None:
        """How many times faster the fastest runtime's dense model is than ``runtime``'s
        (dense latency in ``runtime`` ÷ in the fastest), or None when either is missing."""
        lat, best = self.latency_s.get(runtime), self.fastest_latency_s
        return lat / best if lat and best else None

    def lines(self) -> list[str]:
        """One line per runtime for the terminal, fastest first."""
        order = sorted(self.latency_s, key=lambda r: (self.latency_s[r] is None, self.latency_s[r] or 0))
        out = []
        for rt in order:
            lat = self.latency_s[rt]
            ver = self.versions.get(rt, "")
            if lat is None:
                out.append(f"  {rt:12s} —  ({self.notes.get(rt, 'not measured')})")
                continue
            rel = f"{lat / self.fastest_latency_s:.2f}× the fastest" if self.fastest_latency_s else ""
            tag = " ← fastest" if rt == self.fastest else ("" if self.eligible.get(rt) else
                                                          " (exploration proxy, not a deployment latency)")
            out.append(f"  {rt:12s} {lat * 1e6:8.1f} µs  IQR {self.iqr_s.get(rt) or 0:.1e} s  {rel}  "
                       f"[{rt} {ver}; {self.notes.get(rt, '')}]{tag}")
        return out


def _sitting_config(passes: int, rounds: int):
    from targets.runtimes import SittingConfig

    return SittingConfig(passes=passes, rounds=rounds)


def dense_baseline(target: Any, graph: ModelGraph, *, work_dir: Path, runtimes: tuple[str, ...] | None = None,
                   tvm_mode: str = "quick", passes: int = 3, rounds: int = 15, tuning_trials: int = 64,
                   tvm_measure: Callable[..., dict[str, Any]] | None = None) -> DenseBaseline:
    """Time the dense model of ``graph`` in each runtime of ``target`` (default: all of them).
    ONNX Runtime and torch share interleaved sittings (``passes`` fresh processes each); TVM is
    measured by ``tvm_measure`` (default :func:`hwsearch.measure.measure_model`) in ``tvm_mode``
    between them. A runtime that fails is a note, never an exception."""
    import datetime as _dt

    from targets.runtimes import measure_sitting, runtime_versions
    from targets.tvm._env import cpu_model

    runtimes = tuple(runtimes or target.runtimes)
    lat: dict[str, float | None] = {}
    iqr: dict[str, float | None] = {}
    eligible: dict[str, bool] = {}
    notes: dict[str, str] = {}
    layers: dict[str, dict[str, float]] = {}
    vers = runtime_versions()
    versions = {rt: vers.get(rt, "") for rt in runtimes if rt in SITTING_RUNTIMES}
    sit = tuple(rt for rt in runtimes if rt in SITTING_RUNTIMES)
    if sit:
        res = measure_sitting({"dense": graph.model}, graph.example_inputs, work_dir=Path(work_dir) / "baseline",
                              runtimes=sit, reference="dense", config=_sitting_config(passes, rounds))
        for rt in sit:
            r = res[("dense", rt)]
            lat[rt], iqr[rt], eligible[rt] = r.latency_s, r.latency_iqr_s, r.error is None
            if r.layer_s:
                layers[rt] = dict(r.layer_s)
            notes[rt] = r.error or f"{r.samples} samples in {r.passes} fresh processes, {r.threads} threads"
    if "tvm" in runtimes:
        from hwsearch.measure import measure_model

        fn = tvm_measure or measure_model
        tvm_target = target.with_runtime("tvm") if target.runtime != "tvm" else target
        m = fn(tvm_target, graph, graph.model, work_dir=Path(work_dir), mode=tvm_mode, tuning_trials=tuning_trials)
        lat["tvm"], iqr["tvm"] = m.get("latency_s"), m.get("latency_iqr_s")
        eligible["tvm"] = tvm_mode == "tuned" and not m.get("error")
        versions["tvm"] = str((m.get("versions") or {}).get("tvm", ""))
        notes["tvm"] = m.get("error") or (f"{tvm_mode} mode, {m.get('repeats')} repeats in a fresh process"
                                          + ("" if tvm_mode == "tuned" else "; quick = sampled schedules"))
    ok = {rt: v for rt, v in lat.items() if v is not None and eligible.get(rt)}
    fastest = min(ok, key=ok.__getitem__) if ok else None
    return DenseBaseline(lat, iqr, eligible, notes, versions, device=cpu_model(),
                         date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), fastest=fastest,
                         layer_s=layers or None)


def baseline_record(baseline: DenseBaseline, runtime: str) -> dict[str, Any] | None:
    """The dense model's baseline measurement in ``runtime`` as measurement-record fields (for
    :func:`hwsearch.measure.plan_record`), so that round 1 is priced by a cost model calibrated on
    the dense model in this sitting; None when the baseline has no latency for ``runtime``."""
    lat = baseline.latency_s.get(runtime)
    if not lat or runtime not in SITTING_RUNTIMES:
        return None
    return {"latency_s": lat, "latency_iqr_s": baseline.iqr_s.get(runtime), "mode": "sitting", "backend": runtime,
            "runtime": runtime, "runtime_version": baseline.versions.get(runtime, ""), "device": baseline.device,
            "date": baseline.date, "error": None, "layers": [], "layer_s": (baseline.layer_s or {}).get(runtime, {}),
            "sitting": "baseline", "drift_factor": 1.0, "versions": {}, "repeats": None}


def choose_runtime(requested: str, baseline: DenseBaseline | None, target: Any) -> tuple[str, str]:
    """The runtime to search in and why: ``requested`` unless it is ``"auto"``, then the
    baseline's fastest (the target's default runtime when nothing was measured)."""
    if requested != "auto":
        return requested, "asked for with --runtime"
    if baseline is not None and baseline.fastest:
        return baseline.fastest, "fastest dense model when the search started"
    return str(target.runtime), "the target's default runtime (no runtime measured the dense model)"


def measure_round(target: Any, graph: ModelGraph, picks: list[tuple[str, Any, tuple]], dense_key: tuple, *,
                  work_dir: Path, baseline: DenseBaseline | None, passes: int = 3, rounds: int = 15,
                  sitting_id: str = "") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One sitting in ``target.runtime`` (ONNX Runtime or torch): the dense model once and
    every distinct configuration among ``picks`` — ``(plan_key, folded model, config key)`` —
    interleaved. Returns (the dense model's fields, plan key → fields). A pick whose
    configuration is the dense one gets the dense measurement, ``identical_to_dense`` and no
    speed-up; picks sharing a configuration share one measurement (``same_configuration_as``)."""
    from targets.runtimes import measure_sitting

    runtime = target.runtime
    models: dict[str, Any] = {"dense": graph.model}
    config_of: dict[tuple, str] = {dense_key: "dense"}
    first_key: dict[str, str] = {}
    for plan_key, folded, ckey in picks:
        if ckey not in config_of:
            config_of[ckey] = f"c{len(models)}"
            models[config_of[ckey]] = folded
            first_key[config_of[ckey]] = plan_key
    res = measure_sitting(models, graph.example_inputs, work_dir=Path(work_dir) / f"sitting-{sitting_id or 'x'}",
                          runtimes=(runtime,), reference="dense", config=_sitting_config(passes, rounds))
    chain = baseline.ratio_to_fastest(runtime) if baseline is not None else None
    # the machine's speed drifts between sittings: the dense model of this sitting against the
    # baseline's says by how much, and brings this sitting's latencies to the baseline's scale
    base_dense = baseline.latency_s.get(runtime) if baseline is not None else None
    sit_dense = res[("dense", runtime)].latency_s
    drift = base_dense / sit_dense if base_dense and sit_dense else None

    def fields(cid: str) -> dict[str, Any]:
        r = res[(cid, runtime)]
        d = {"latency_s": r.latency_s, "latency_iqr_s": r.latency_iqr_s, "repeats": r.samples, "mode": "sitting",
             "backend": runtime, "runtime": runtime, "runtime_version": r.versions.get(runtime, ""),
             "device": r.device, "versions": r.versions, "date": r.date, "error": r.error, "layers": [],
             "layer_s": r.layer_s, "max_abs_err": r.max_abs_err, "sitting": sitting_id, "drift_factor": drift,
             "latency_normalised_s": r.latency_s * drift if drift and r.latency_s else None,
             "sitting_protocol": f"interleaved with the dense model: {r.passes} fresh processes x {r.rounds} rounds, "
                                 f"{r.threads} threads; speed-up = median of paired per-round ratios, 95% CI"}
        if cid != "dense" and r.error is None and r.speedup is not None:
            d.update({"speedup_same_runtime": r.speedup, "speedup_lo": r.speedup_lo, "speedup_hi": r.speedup_hi,
                      "speedup_p10": r.speedup_p10, "speedup_p90": r.speedup_p90,
                      "no_measurable_change": r.no_measurable_change})
            if chain is not None:
                # dense(fastest) / plan = dense(this runtime) / plan  x  dense(fastest) / dense(this runtime)
                d["speedup_vs_fastest"] = r.speedup / chain
                d["speedup_vs_fastest_lo"] = r.speedup_lo / chain
                d["speedup_vs_fastest_hi"] = r.speedup_hi / chain
        return d

    dense_fields = fields("dense")
    out: dict[str, dict[str, Any]] = {}
    for plan_key, _, ckey in picks:
        cid = config_of[ckey]
        d = fields(cid)
        if cid == "dense":
            d["identical_to_dense"] = True
        elif first_key[cid] != plan_key:
            d["same_configuration_as"] = first_key[cid]
        out[plan_key] = d
    return dense_fields, out


def speedup_text(rec: Mapping[str, Any]) -> str:
    """How a measured plan's speed-up reads on the terminal: ``1.42× (1.35–1.50)`` (the 95 %
    confidence interval of the median paired ratio) against the
    fastest dense runtime, "= dense" for a configuration identical to dense, "no measurable
    change" when its 95 % confidence interval includes 1.0, "—" when there is nothing to compare."""
    if rec.get("identical_to_dense"):
        return "= dense"
    if rec.get("no_measurable_change"):
        return "no measurable change"
    sp = rec.get("speedup_vs_fastest", rec.get("speedup_same_runtime"))
    if sp is None or (isinstance(sp, float) and math.isnan(sp)):
        return "—"
    lo = rec.get("speedup_vs_fastest_lo", rec.get("speedup_lo"))
    hi = rec.get("speedup_vs_fastest_hi", rec.get("speedup_hi"))
    return f"{sp:.2f}× ({lo:.2f}–{hi:.2f})" if lo is not None and hi is not None else f"{sp:.2f}×"
