"""Roofline-style analytical latency model for CPUs and GPUs, refit from measurements.

Per layer::

    roofline_s = max(effective_MACs / peak_MACs_per_s, bytes_moved / bandwidth_Bps)
    latency_s  = scale[kind] · roofline_s + overhead[kind]

``effective_MACs`` are the MACs after channel removal; a weight-level pattern (unstructured,
N:M, block) reduces them only when the target spec says its kernels accelerate that pattern
(``[patterns.X] speedup = true``) — TVM on the host runs zeros through dense kernels, so there
unstructured sparsity buys storage and no time, and the model says so (``accelerated`` column).
``bytes_moved`` = weights as the kernel reads them + input and output activations.
``peak_MACs_per_s`` = clock × cores × MACs/cycle; the bandwidth is the cache's when the layer's
working set fits ``sram_bytes``, else DRAM's. Priors for ``scale`` (1/efficiency) and the
overheads come from the target spec; :meth:`RooflineModel.refit` replaces them with a
non-negative least-squares fit (scipy) on measured per-layer times, and the model-level
overhead with the median residual of measured totals.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from costmodels.base import CostModel, FitReport, fidelity
from costmodels.memory import DTYPE_BYTES
from hwsearch.errors import SpecError

__all__ = ["RooflineModel", "Sample", "KINDS"]

KINDS = ("conv", "depthwise", "grouped", "linear")
_MIN_ROWS_PER_KIND = 3


@dataclass(frozen=True)
class Sample:
    """One measured plan for a refit: its resolved table, the measured whole-model latency
    (seconds) and, when the backend timed layers alone, ``layer_s`` {layer: seconds}."""

    resolved: pd.DataFrame
    latency_s: float
    layer_s: dict[str, float] | None = None
    extra: dict | None = None  # backend-specific evidence, e.g. {"mcu_rows": [...]} per-layer counts


class RooflineModel(CostModel):
    kind = "roofline"
    version = 1

    def __init__(self, target: Any, dtype: str = "fp32") -> None:
        super().__init__(target)
        self.dtype = dtype
        t = target
        mpc_key = f"macs_per_cycle_{dtype}"
        self.peak_macs_s = t.figure("compute", "clock_hz") * t.figure("compute", "cores") * t.figure("compute", mpc_key)
        self.cache_bw = t.figure("memory", "cache_bandwidth_Bps") if t.has("memory", "cache_bandwidth_Bps") else None
        self.dram_bw = t.figure("memory", "dram_bandwidth_Bps")
        self.cache_bytes = t.figure("memory", "sram_bytes") if t.has("memory", "sram_bytes") else 0.0
        self.scale: dict[str, float] = {}
        self.overhead: dict[str, float] = {}
        for k in KINDS:
            eff_key = f"efficiency_{k}" if t.has("compute", f"efficiency_{k}") else "efficiency_conv"
            if t.has("compute", eff_key):
                self.scale[k] = 1.0 / t.figure("compute", eff_key)
                self.overhead[k] = t.figure("compute", "overhead_per_layer_s")
        self.overhead_model = t.figure("compute", "overhead_model_s")
        self.provenance.update(relative_std=0.5, source="analytical prior from " + t.identity)

    # ---- prediction ----------------------------------------------------------------------------
    def features(self, resolved: pd.DataFrame) -> pd.DataFrame:
        """Per-layer roofline inputs: ``macs_eff``, ``bytes``, ``roofline_s``, ``accelerated``."""
        b = DTYPE_BYTES[self.dtype]
        accel = np.array([self.target.accelerates(p) for p in resolved["pattern"]])
        density = resolved["weight_density"].to_numpy(dtype=float)
        dense_macs = resolved["dense_macs"].to_numpy(dtype=float)
        macs = np.where(accel, dense_macs * density, dense_macs)
        wbytes = np.where(accel, resolved["nnz"].to_numpy(dtype=float), resolved["dense_weights"].to_numpy(dtype=float)) * b
        ex_b = resolved["dtype_bytes"].to_numpy(dtype=float)
        act = (resolved["act_in_bytes_kept"].to_numpy(dtype=float) + resolved["act_out_bytes_kept"].to_numpy(dtype=float)) * b / ex_b
        nbytes = wbytes + act
        bw = np.where((nbytes <= self.cache_bytes) & (self.cache_bw is not None), self.cache_bw or self.dram_bw, self.dram_bw)
        roof = np.maximum(macs / self.peak_macs_s, nbytes / bw)
        return pd.DataFrame({"kind": resolved["kind"].to_numpy(), "macs_eff": macs, "bytes": nbytes,
                             "roofline_s": roof, "accelerated": accel}, index=resolved.index)

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        f = self.features(resolved)
        lat = np.full(len(f), math.nan)
        gaps = []
        for i, (layer, kind, roof) in enumerate(zip(f.index, f["kind"], f["roofline_s"])):
            if kind not in self.scale:
                gaps.append(layer)
                continue
            lat[i] = self.scale[kind] * roof + self.overhead[kind]
        return lat, gaps

    def model_overhead_s(self) -> float:
        return self.overhead_model

    # ---- persistence ---------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "overhead": self.overhead,
                "overhead_model_s": self.overhead_model}

    def set_params(self, params: dict[str, Any]) -> None:
        try:
            self.dtype = str(params.get("dtype", self.dtype))
            self.scale = {str(k): float(v) for k, v in params["scale"].items()}
            self.overhead = {str(k): float(v) for k, v in params["overhead"].items()}
            self.overhead_model = float(params["overhead_model_s"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpecError(f"roofline cost-model parameters are malformed ({exc}); refit the model") from None

    # ---- refit ---------------------------------------------------------------------------------
    def total_latency(self, resolved: pd.DataFrame) -> float:
        lat, _ = self.layer_latency(resolved)
        return float(np.nansum(lat)) + self.overhead_model

    def refit(self, samples: list[Sample], graphs: Any = None) -> FitReport:
        """Refit per-kind scale and overhead on measured layer times (NNLS), then the model
        overhead on measured totals. Kinds with fewer than 3 measured layer rows keep their
        previous parameters. With no per-layer times, one global scale and the overhead are
        fitted on totals."""
        if not samples:
            raise ValueError("refit needs at least one measured plan")
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([self.total_latency(s.resolved) for s in samples])
        rows = []
        for s in samples:
            if not s.layer_s:
                continue
            f = self.features(s.resolved)
            for layer, t in s.layer_s.items():
                if layer in f.index and t > 0:
                    rows.append((f.at[layer, "kind"], f.at[layer, "roofline_s"], t))
        fitted_kinds = {}
        if rows:
            df = pd.DataFrame(rows, columns=["kind", "roofline_s", "t"])
            for kind, g in df.groupby("kind"):
                if len(g) < _MIN_ROWS_PER_KIND or g["roofline_s"].nunique() < 2:
                    continue
                # Relative (weighted) least squares: divide each row by its measured time so
                # small layers count as much as large ones.
                w = 1.0 / g["t"].to_numpy()
                A = np.stack([g["roofline_s"].to_numpy(), np.ones(len(g))], axis=1) * w[:, None]
                coef, _ = nnls(A, g["t"].to_numpy() * w)
                if coef[0] > 0:
                    self.scale[str(kind)], self.overhead[str(kind)] = float(coef[0]), float(coef[1])
                    fitted_kinds[str(kind)] = len(g)
            layer_sums = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
            self.overhead_model = float(max(0.0, np.median(meas - layer_sums)))
        else:
            # Totals only: t_total ≈ a · Σ roofline-layer-latency + c  (NNLS on relative errors).
            sums = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
            w = 1.0 / meas
            if len(samples) >= 2 and np.ptp(sums) > 0:
                coef, _ = nnls(np.stack([sums, np.ones(len(sums))], 1) * w[:, None], meas * w)
                a, c = float(coef[0]), float(coef[1])
            else:
                a, c = float(np.median(meas / (sums + self.overhead_model))), self.overhead_model
            if a > 0:
                self.scale = {k: v * a for k, v in self.scale.items()}
                self.overhead = {k: v * a for k, v in self.overhead.items()}
                self.overhead_model = c
        after = np.array([self.total_latency(s.resolved) for s in samples])
        fb, fa = fidelity(before, meas), fidelity(after, meas)
        rel = (after - meas) / meas
        self.provenance["relative_std"] = float(max(0.02, np.sqrt(np.mean(rel ** 2))))
        self.provenance["fitted_on"] = len(samples)
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "plans": len(samples), "layer_rows": len(rows), "fitted_kinds": fitted_kinds,
            "mape_before": fb["mape"], "mape_after": fa["mape"]})
        return FitReport(n=len(samples), mape_before=fb["mape"], mape_after=fa["mape"],
                         within10_before=fb["within10"], within10_after=fa["within10"],
                         within5_after=fa["within5"], kendall_tau_after=fa["kendall_tau"],
                         layer_rows=len(rows), params=self.params())
