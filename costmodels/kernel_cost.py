"""The ``kernel`` cost model: every layer priced by this device's kernel-level predictor
(:class:`costmodels.kernel_predictor.KernelPredictor`, fitted by ``hwsearch sweep`` on the
device, in the runtime), so a model the search has never measured is priced from the start.

Per plan::

    latency_s = scale · (Σ_layers predictor(features) · correction[kernel] + Σ_ops op_s + overhead_s)

* a layer: the predictor's seconds for its kept shape and fused epilogue
  (:mod:`costmodels.kernel_features`; a weight-level pattern runs its dense kept kernel: ONNX
  Runtime's CPU execution provider has no sparse kernels);
* the compute ops without a layer row (``ModelGraph.ops``: attention, matmul, embedding, norm,
  softmax) by the sweep's per-kind law ``a + b · MACs + c · bytes + d · other FLOPs``
  (:mod:`hwsearch.kernel_sweep_ops`) for the kinds it timed, and **delegated to the roofline
  model** (:meth:`costmodels.analytical.RooflineModel.op_latency`, the target spec's peak and
  bandwidths) for any kind it did not; times a per-kind ``op_scale`` (1 until a refit). Every op
  kind is priced (never a silent zero);
* the glue nodes (``ModelGraph.glue``: elementwise nodes outside every layer's epilogue and the
  ops — residual adds, rotary multiplies, RMSNorm's arithmetic, pooling) by the sweep's ``glue``
  law on their bytes, when the predictor has one (``prices_glue``; layout-only nodes —
  reshapes, transposes — are taken as free);
* ``overhead_s``: the runtime's per-call overhead measured by the sweep (a null graph).

**Refit** (``refit(samples)``, the search's per-model correction): with one sample (a search's
round-0 dense baseline) only ``scale`` is fitted (measured ÷ predicted), so calibration keeps the
predicted speed-ups. With two or more samples and per-layer times (ONNX Runtime's profiler),
each measured kernel gets the median ratio measured ÷ predicted
(``correction``, keyed by :func:`costmodels.kernels.kernel_key`; a kernel never measured takes
that of the same layer at the nearest channel counts, :func:`costmodels.kernels.kernel_correction`)
and ``overhead_s`` becomes the median of what the measured totals leave after layers and ops.
Without per-layer times, one ``scale`` (median measured ÷ predicted total) is fitted. With the
dense model alone that is exactly the calibration on one dense measurement that turns predicted
speed-ups into absolute latencies on a machine whose speed drifts.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

from costmodels.analytical import RooflineModel
from costmodels.base import BatchLatency, CostModel, CostModelError, CostModelFileError, FitReport, PlanArrays, Sample
from costmodels.kernel_features import KIND_CODES, array_features, resolved_features
from costmodels.kernel_predictor import KernelPredictor, find_for_device
from costmodels.memory import DTYPE_BYTES
from costmodels.kernels import (batch_kernel_corrections, kernel_correction, kernel_density, kernel_keys,
                                static_signature)
from costmodels.ops import GLUE_KIND, OP_KINDS, op_gaps, op_table

__all__ = ["KernelModel"]


class KernelModel(CostModel):
    """Layers priced by a device's kernel predictor, ops by the roofline (module docstring).

    ``predictor``: a fitted :class:`KernelPredictor` (default: this device's from the cache for
    ``target.runtime``; without one the model cannot price and says how to make one). Raises
    :class:`CostModelError` when the predictor was made for another runtime than the target's."""

    kind = "kernel"
    version = 1
    priced_op_kinds = frozenset(OP_KINDS)

    @property
    def prices_glue(self) -> bool:  # type: ignore[override]
        """True when the predictor's sweep timed glue (predictors swept before it did price none)."""
        return self.predictor is not None and GLUE_KIND in self.predictor.op_coef

    def __init__(self, target: Any, dtype: str = "fp32", predictor: KernelPredictor | None = None) -> None:
        super().__init__(target)
        self.dtype = dtype
        self.roofline = RooflineModel(target, dtype)
        self.note = ""
        if predictor is None and getattr(target, "runtime", None) == "onnxruntime":
            predictor, self.note = find_for_device("onnxruntime")
        elif predictor is None:
            self.note = (f"no kernel predictor for runtime {getattr(target, 'runtime', None)!r}: the sweep measures "
                         "onnxruntime; search with --runtime onnxruntime")
        self.predictor: KernelPredictor | None = None
        self.overhead_s = 0.0
        self.scale = 1.0
        self.corrections: dict[str, float] = {}
        self.op_scale: dict[str, float] = {k: 1.0 for k in (*OP_KINDS, GLUE_KIND)}
        if predictor is not None:
            self._use(predictor)
        self.provenance.update(relative_std=0.15, source="kernel predictor swept on the device")

    def _use(self, predictor: KernelPredictor) -> None:
        rt = getattr(self.target, "runtime", None)
        if predictor.runtime != rt:
            raise CostModelError(f"kernel predictor was swept in {predictor.runtime!r}, the target runs {rt!r}: "
                                 f"search with --runtime {predictor.runtime}, or sweep {rt}")
        self.predictor = predictor
        self.overhead_s = predictor.overhead_s
        self.priced_op_kinds = frozenset(OP_KINDS) | ({GLUE_KIND} if self.prices_glue else set())

    def _need(self) -> KernelPredictor:
        if self.predictor is None:
            raise CostModelError(self.note or "the kernel cost model has no predictor; run `hwsearch sweep`")
        return self.predictor

    # ---- prediction ----------------------------------------------------------------------------
    def base_layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """The predictor's seconds per layer (no refit correction, no scale); NaN and a gap for a
        layer kind the features do not know."""
        pred = self._need()
        known = np.array([k in KIND_CODES for k in resolved["kind"]], dtype=bool)
        lat = np.full(len(resolved), math.nan)
        if known.any():
            lat[known] = pred.predict(resolved_features(resolved[known]))
        return lat, [n for n, ok in zip(resolved.index, known) if not ok]

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        lat, gaps = self.base_layer_latency(resolved)
        if self.corrections:
            acc = self.target.accelerates
            lat = lat * np.array([kernel_correction(self.corrections, static_signature(r), r["kept_in"], r["kept_out"],
                                                    kernel_density(str(r["pattern"]), float(r["weight_density"]), acc))
                                  for _, r in resolved.iterrows()])
        return lat * self.scale, gaps

    def model_overhead_s(self) -> float:
        return self.overhead_s * self.scale

    def op_latency(self, ops: pd.DataFrame, kept: np.ndarray, example_bytes: float) -> np.ndarray:
        """Seconds of each op row: the sweep's law for its kind (:meth:`KernelPredictor.op_seconds`
        on the op's MACs, bytes and other FLOPs times the kept fraction ``kept``) where the sweep
        timed that kind, else the roofline's (:meth:`RooflineModel.op_latency`); times this
        model's ``op_scale[kind]`` and ``scale``."""
        base = np.asarray(self.roofline.op_latency(ops, kept, example_bytes), dtype=float)
        if self.predictor is not None and self.predictor.op_coef and len(ops):
            kept = np.asarray(kept, dtype=float)
            bscale = DTYPE_BYTES[self.dtype] / example_bytes
            macs = ops["macs"].to_numpy(dtype=float) * kept
            nbytes = (ops["bytes_in"].to_numpy(dtype=float) + ops["bytes_out"].to_numpy(dtype=float)) * bscale * kept
            flops = ops["flops_other"].to_numpy(dtype=float) * kept
            kinds = ops["kind"].to_numpy()
            for kind in set(kinds) & set(self.predictor.op_coef):
                sel = kinds == kind
                base[..., sel] = self.predictor.op_seconds(kind, macs[..., sel], nbytes[..., sel], flops[..., sel])
        k = np.array([self.op_scale.get(kind, math.nan) for kind in ops["kind"]], dtype=float)
        return base * k * self.scale

    def price_batch(self, arrays: PlanArrays) -> BatchLatency | None:
        """:meth:`predict`'s latency for ``P`` plans at once: one predictor call on ``P × L``
        feature rows (see :class:`CostModel`)."""
        if type(self).layer_latency is not KernelModel.layer_latency:
            return None
        pred = self._need()
        known = np.array([k in KIND_CODES for k in arrays.kind], dtype=bool)
        lat = np.full(arrays.kept_in.shape, math.nan)
        if arrays.kept_in.size and known.any():
            lat[:, known] = pred.predict(array_features(arrays, known))
        if self.corrections and arrays.kept_in.size:
            lat = lat * self._batch_corrections(arrays)
        lat = lat * self.scale
        latency = np.nansum(lat, axis=1) + self.model_overhead_s()
        gaps = tuple(n for n, ok in zip(arrays.layers, known) if not ok)
        ops = op_table(arrays)
        if not len(ops):
            return BatchLatency(layer_latency_s=lat, latency_s=latency, coverage_gaps=gaps)
        op_lat = self.op_latency(ops, arrays.op_frac, float(arrays.example_bytes[0]))
        return BatchLatency(layer_latency_s=lat, latency_s=latency + np.nansum(op_lat, axis=1),
                            coverage_gaps=gaps + tuple(op_gaps(ops, self.priced_op_kinds, op_lat)),
                            op_latency_s=op_lat)

    def _batch_corrections(self, a: PlanArrays) -> np.ndarray:
        """Per plan and layer, the correction of its kernel (weight-level patterns run their dense
        kernel here unless the target accelerates them: density -1, the dense kernel's key)."""
        accel = np.array([bool(self.target.accelerates(p)) for p in a.patterns])
        sped = a.weight_level & accel[np.clip(a.codes, 0, len(a.patterns) - 1)]
        return batch_kernel_corrections(self.corrections, a, np.where(sped, a.density, -1.0))

    def total_latency(self, resolved: pd.DataFrame, ops: pd.DataFrame | None = None) -> float:
        """Seconds of a resolved plan as :meth:`predict` gives them (its op rows ``ops`` priced)."""
        lat, _ = self.layer_latency(resolved)
        total = float(np.nansum(lat)) + self.model_overhead_s()
        if ops is not None and len(ops):
            total += float(np.nansum(self.plan_op_latency(ops, resolved)))
        return total

    # ---- refit ---------------------------------------------------------------------------------
    def refit(self, samples: list[Sample]) -> FitReport:
        """Per-kernel corrections and the overhead from per-layer times, or one scale from totals
        (see the module docstring; the previous corrections are replaced). Raises
        :class:`CostModelError` for an empty list or when there is no predictor."""
        self._require_samples(samples)
        self._need()
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        ratios: dict[str, list[float]] = {}
        if len(samples) > 1:  # one sample (the dense baseline) calibrates the scale only
            for s in samples:
                if not s.layer_s:
                    continue
                base, _ = self.base_layer_latency(s.resolved)
                for layer, key, b in zip(s.resolved.index, kernel_keys(s.resolved, self.target.accelerates), base):
                    t = s.layer_s.get(layer)
                    if t and t > 0 and b > 0:
                        ratios.setdefault(key, []).append(t / b)
        self.scale = 1.0
        if ratios:
            self.corrections = {k: float(np.median(v)) for k, v in ratios.items()}
            rest = [s.latency_s - self.total_latency(s.resolved, s.ops) + self.overhead_s for s in samples]
            self.overhead_s = float(max(0.0, np.median(rest)))
        else:
            self.scale = float(np.median(meas / np.array([self.total_latency(s.resolved, s.ops) for s in samples])))
        after = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        report = FitReport.of(before, after, meas, layer_rows=sum(len(v) for v in ratios.values()),
                              params={"scale": self.scale, "overhead_s": self.overhead_s,
                                      "corrected_kernels": len(self.corrections)})
        rel = (after - meas) / meas
        self.provenance["relative_std"] = float(max(0.02, np.sqrt(np.mean(rel ** 2))))
        self.provenance["fitted_on"] = len(samples)
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "plans": len(samples),
            "corrected_kernels": len(self.corrections), "scale": self.scale, "overhead_s": self.overhead_s,
            "mape_before": report.mape_before, "mape_after": report.mape_after})
        return report

    # ---- persistence ---------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The predictor's whole file (a saved cost model is self-contained) and the refit."""
        return {"dtype": self.dtype, "predictor": self.predictor.to_dict() if self.predictor else None,
                "scale": self.scale, "overhead_s": self.overhead_s, "corrections": self.corrections,
                "op_scale": self.op_scale}

    def set_params(self, params: dict[str, Any]) -> None:
        try:
            self.dtype = str(params.get("dtype", self.dtype))
            if params.get("predictor") is not None:
                self._use(KernelPredictor.from_dict(params["predictor"], source="the kernel cost model's predictor",
                                                    runtime=getattr(self.target, "runtime", None)))
            self.scale = float(params["scale"])
            self.overhead_s = float(params["overhead_s"])
            self.corrections = {str(k): float(v) for k, v in params.get("corrections", {}).items()}
            self.op_scale = {k: 1.0 for k in (*OP_KINDS, GLUE_KIND)} | {str(k): float(v) for k, v in
                                                                        params.get("op_scale", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CostModelFileError(f"kernel cost-model parameters are malformed ({exc}); refit the model") from None
