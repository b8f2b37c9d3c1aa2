"""Roofline-style analytical latency model for CPUs and GPUs, refit from measurements.

Per layer::

    roofline_s = max(effective_MACs / peak_MACs_per_s, bytes_moved / bandwidth_Bps)
    latency_s  = (scale[kind] · roofline_s + overhead[kind]) · correction[kernel]

and per plan ``Σ latency_s + overhead_model + glue_per_byte · Σ kept output activation bytes``.

``effective_MACs`` are the MACs after channel removal; a weight-level pattern (unstructured,
N:M, block) reduces them only when the target spec says its kernels accelerate that pattern
(``[patterns.X] speedup = true``) — TVM on the host runs zeros through dense kernels, so there
unstructured sparsity buys storage and no time, and the model says so (``accelerated`` column).
``bytes_moved`` = weights as the kernel reads them + input and output activations.
``peak_MACs_per_s`` = clock × cores × MACs/cycle; the bandwidth is the cache's when the layer's
working set fits ``sram_bytes``, else DRAM's. Priors for ``scale`` (1/efficiency) and the
overheads come from the target spec; :meth:`RooflineModel.refit` replaces them with a
non-negative least-squares fit (scipy) on measured per-layer times. A roofline is smooth in the
channel count, but compiled kernels are not (a schedule found for 48 channels can be slower than
one for 64), so the refit also keeps, per measured *kernel* — its kind, geometry, kept input and
output channels and, where a weight pattern is accelerated, its density
(:func:`costmodels.kernels.kernel_key`) — the median ratio of measured to roofline time, and applies it
wherever that kernel appears again (nn-Meter's kernel-level view; ``correction`` is 1 for a
kernel never measured). The model-level overhead and the glue term are fitted (NNLS) on what
measured totals leave after the layers: adds, activations and pooling shrink with the kept
channels.

Compute ops without a layer row (``ModelGraph.ops``: attention, matmul, embedding, norm, softmax;
:mod:`costmodels.ops`) are priced on the same roofline, with the same peak, bandwidths and dtype
scaling of bytes as the layers::

    op_s = op_scale[kind] · max(FLOPs / (2 · peak_MACs_per_s), bytes_moved / bandwidth_Bps)

with FLOPs = 2 · MACs + the other FLOPs of norms and softmax (embedding: none, so bytes alone),
bytes_moved = bytes read + written, both times the kept fraction of the op's input channel
group. A decode step (one query token against a KV cache) is memory-bound by this formula alone;
a long prefill is compute-bound. ``op_scale`` starts at 1 and is refitted per op kind on measured
totals (see :meth:`RooflineModel.refit`), as the glue term is.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from costmodels.base import BatchLatency, CostModel, CostModelFileError, FitReport, PlanArrays, Sample
from costmodels.kernels import (batch_kernel_corrections, kernel_correction, kernel_density, kernel_keys,
                                static_signature)
from costmodels.memory import DTYPE_BYTES
from costmodels.ops import OP_KINDS, op_gaps, op_table, op_work

__all__ = ["RooflineModel", "KINDS"]

KINDS = ("conv", "depthwise", "grouped", "linear")
_MIN_ROWS_PER_KIND = 3
# Methods whose override makes price_batch give up (it re-implements them array-wise).
_PRICED_BY_BATCH = ("predict", "features", "layer_latency", "model_overhead_s", "op_latency")


class RooflineModel(CostModel):
    """Roofline latency per layer and per op, refit from measurements (see the module docstring).
    Prices every op kind (``priced_op_kinds`` = :data:`costmodels.ops.OP_KINDS`)."""

    kind = "roofline"
    version = 1
    priced_op_kinds = frozenset(OP_KINDS)

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
        self.glue_per_byte = 0.0
        self.corrections: dict[str, float] = {}
        self.op_scale: dict[str, float] = {k: 1.0 for k in OP_KINDS}
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
        roof = np.maximum(macs / self.peak_macs_s, nbytes / self._bandwidth(nbytes))
        return pd.DataFrame({"kind": resolved["kind"].to_numpy(), "macs_eff": macs, "bytes": nbytes,
                             "roofline_s": roof, "accelerated": accel}, index=resolved.index)

    def _bandwidth(self, nbytes: np.ndarray) -> np.ndarray:
        """Bytes per second for a working set of ``nbytes``: the cache's when it fits ``sram_bytes``
        (and the spec gives a cache bandwidth), else DRAM's."""
        return np.where((nbytes <= self.cache_bytes) & (self.cache_bw is not None), self.cache_bw or self.dram_bw,
                        self.dram_bw)

    def op_features(self, ops: pd.DataFrame, kept: np.ndarray | None = None,
                    example_bytes: float = 4.0) -> pd.DataFrame:
        """Per op row (``ModelGraph.ops``) under a plan keeping ``kept`` of it (default: all):
        ``flops``, ``bytes`` (in this model's dtype), ``compute_s`` (FLOPs at peak), ``memory_s``
        (bytes at the bandwidth their size gets), ``roofline_s`` (the larger) and ``bound``
        ("compute" or "memory"); ``example_bytes``: bytes per element the op table counts in."""
        kept = np.ones(len(ops)) if kept is None else np.asarray(kept, dtype=float)
        flops, nbytes = op_work(ops, kept, DTYPE_BYTES[self.dtype] / example_bytes)
        compute_s, memory_s = flops / (2.0 * self.peak_macs_s), nbytes / self._bandwidth(nbytes)
        return pd.DataFrame({"kind": ops["kind"].to_numpy(), "flops": flops, "bytes": nbytes, "compute_s": compute_s,
                             "memory_s": memory_s, "roofline_s": np.maximum(compute_s, memory_s),
                             "bound": np.where(compute_s >= memory_s, "compute", "memory")}, index=ops.index)

    def op_latency(self, ops: pd.DataFrame, kept: np.ndarray, example_bytes: float) -> np.ndarray:
        """``op_scale[kind] · max(FLOPs / peak FLOP/s, bytes / bandwidth)`` per op row (see
        :meth:`CostModel.op_latency`; ``kept`` of shape ``(O,)`` or ``(P, O)``)."""
        flops, nbytes = op_work(ops, kept, DTYPE_BYTES[self.dtype] / example_bytes)
        roof = np.maximum(flops / (2.0 * self.peak_macs_s), nbytes / self._bandwidth(nbytes))
        scale = np.array([self.op_scale.get(k, math.nan) if k in self.priced_op_kinds else math.nan
                          for k in ops["kind"]], dtype=float)
        return roof * scale

    def signatures(self, resolved: pd.DataFrame) -> list[str]:
        """:func:`costmodels.kernels.kernel_key` of every layer of a resolved plan."""
        return list(kernel_keys(resolved, self.target.accelerates))

    def _base_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        f = self.features(resolved)
        lat = np.full(len(f), math.nan)
        gaps = []
        for i, (layer, kind, roof) in enumerate(zip(f.index, f["kind"], f["roofline_s"])):
            if kind not in self.scale:
                gaps.append(layer)
                continue
            lat[i] = self.scale[kind] * roof + self.overhead[kind]
        return lat, gaps

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        lat, gaps = self._base_latency(resolved)
        if self.corrections:
            acc = self.target.accelerates
            lat = lat * np.array([kernel_correction(self.corrections, static_signature(r), r["kept_in"], r["kept_out"],
                                                    kernel_density(str(r["pattern"]), float(r["weight_density"]), acc))
                                  for _, r in resolved.iterrows()])
        return lat, gaps

    def model_overhead_s(self) -> float:
        return self.overhead_model

    def price_batch(self, arrays: PlanArrays) -> BatchLatency | None:
        """:meth:`features` and :meth:`layer_latency` array-wise (see :class:`CostModel`); ``None``
        when a subclass overrides how this model prices (:data:`_PRICED_BY_BATCH`)."""
        cls = type(self)
        if any(getattr(cls, name) is not getattr(RooflineModel, name) for name in _PRICED_BY_BATCH):
            return None
        roof, sped = self._batch_roofline(arrays)
        scale = np.array([self.scale.get(k, math.nan) for k in arrays.kind])
        overhead = np.array([self.overhead.get(k, math.nan) for k in arrays.kind])
        lat = scale[None, :] * roof + overhead[None, :]
        if self.corrections:
            lat = lat * batch_kernel_corrections(self.corrections, arrays, np.where(sped, arrays.density, -1.0))
        latency = np.nansum(lat, axis=1) + self.model_overhead_s()
        if self.glue_per_byte:
            latency = latency + self.glue_per_byte * arrays.act_out_bytes_kept.sum(axis=1)
        gaps = tuple(layer for layer, kind in zip(arrays.layers, arrays.kind) if kind not in self.scale)
        ops = op_table(arrays)
        if not len(ops):
            return BatchLatency(layer_latency_s=lat, latency_s=latency, coverage_gaps=gaps)
        op_lat = self.op_latency(ops, arrays.op_frac, float(arrays.example_bytes[0]))
        return BatchLatency(layer_latency_s=lat, latency_s=latency + np.nansum(op_lat, axis=1),
                            coverage_gaps=gaps + tuple(op_gaps(ops, self.priced_op_kinds, op_lat)),
                            op_latency_s=op_lat)

    def _batch_roofline(self, a: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
        """``P × L`` roofline seconds (:meth:`features`) and where an accelerated weight pattern
        prices its zeros away."""
        b = DTYPE_BYTES[self.dtype]
        accel_code = np.array([bool(self.target.accelerates(p)) for p in a.patterns])
        macs_eff = a.dense_macs.astype(float)
        wbytes = a.dense_weights.astype(float) * b
        # Only accelerated weight-level patterns price their zeros away (density < 1 there).
        sped = a.weight_level & accel_code[np.clip(a.codes, 0, len(a.patterns) - 1)]
        if sped.any():
            macs_eff[sped] = macs_eff[sped] * a.density[sped]
            wbytes[sped] = a.nnz[sped].astype(float) * b
        act = (a.act_in_bytes_kept + a.act_out_bytes_kept) * b / a.example_bytes[None, :]
        nbytes = wbytes + act
        return np.maximum(macs_eff / self.peak_macs_s, nbytes / self._bandwidth(nbytes)), sped

    def glue_s(self, resolved: pd.DataFrame) -> float:
        return self.glue_per_byte * float(resolved["act_out_bytes_kept"].sum()) if self.glue_per_byte else 0.0

    # ---- persistence ---------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "overhead": self.overhead,
                "overhead_model_s": self.overhead_model, "glue_s_per_byte": self.glue_per_byte,
                "corrections": self.corrections, "op_scale": self.op_scale}

    def set_params(self, params: dict[str, Any]) -> None:
        try:
            self.dtype = str(params.get("dtype", self.dtype))
            self.scale = {str(k): float(v) for k, v in params["scale"].items()}
            self.overhead = {str(k): float(v) for k, v in params["overhead"].items()}
            self.overhead_model = float(params["overhead_model_s"])
            self.glue_per_byte = float(params.get("glue_s_per_byte", 0.0))
            self.corrections = {str(k): float(v) for k, v in params.get("corrections", {}).items()}
            # files written before ops were priced have no op_scale: the analytical prior
            self.op_scale = {k: 1.0 for k in OP_KINDS} | {str(k): float(v)
                                                          for k, v in params.get("op_scale", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CostModelFileError(f"roofline cost-model parameters are malformed ({exc}); refit the model") from None

    # ---- refit ---------------------------------------------------------------------------------
    def total_latency(self, resolved: pd.DataFrame, ops: pd.DataFrame | None = None) -> float:
        """Seconds of a resolved plan as :meth:`predict` gives them, its model's op rows ``ops``
        (``ModelGraph.ops``, e.g. a :class:`Sample`'s) priced too."""
        lat, _ = self.layer_latency(resolved)
        total = float(np.nansum(lat)) + self.overhead_model + self.glue_s(resolved)
        if ops is not None and len(ops):
            total += float(np.nansum(self.plan_op_latency(ops, resolved)))
        return total

    def refit(self, samples: list[Sample], *, totals_of: list[Sample] | None = None) -> FitReport:
        """Refit per-kind scale and overhead on measured layer times (NNLS); then the per-kernel
        corrections (median measured / roofline time of every kernel measured; the previous ones
        are replaced); then the model overhead and glue term on measured totals (of ``totals_of``,
        default all samples). Kinds with fewer than 3 measured layer rows keep their previous
        parameters. With no per-layer times, one global scale and the overhead are fitted on
        totals. The ops of samples that carry them (``Sample.ops``) are priced in every total:
        with per-layer times, each op kind's ``op_scale`` is a further NNLS column of the totals'
        fit (when its seconds vary across plans and are not collinear with the columns before it;
        else it keeps its scale and its seconds are subtracted); with none, the global scale
        multiplies ``op_scale`` too. ``op_scale`` stays 1.0 while no sample has ops. Raises
        :class:`CostModelError` for an empty list."""
        self._require_samples(samples)
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        rows = self._layer_rows(samples)
        fitted_kinds: dict[str, int] = {}
        if rows:
            fitted_kinds = self._fit_kinds(rows)
            self.corrections = self._kernel_ratios(samples)
            # the overheads from the totals of ``totals_of`` (default: every sample) — a caller
            # whose samples include layers this model does not price (2:4 on a GPU) passes the others
            tot = samples if totals_of is None else totals_of
            if tot:
                self._fit_overheads(tot, np.array([s.latency_s for s in tot], dtype=float))
        else:
            self._fit_totals_only(samples, meas)
        after = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        report = FitReport.of(before, after, meas, layer_rows=len(rows), params=self.params())
        self.provenance["corrected_kernels"] = len(self.corrections)
        rel = (after - meas) / meas
        self.provenance["relative_std"] = float(max(0.02, np.sqrt(np.mean(rel ** 2))))
        self.provenance["fitted_on"] = len(samples)
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "plans": len(samples), "layer_rows": len(rows), "fitted_kinds": fitted_kinds,
            "corrected_kernels": len(self.corrections), "glue_s_per_byte": self.glue_per_byte,
            "mape_before": report.mape_before, "mape_after": report.mape_after})
        return report

    def _layer_rows(self, samples: list[Sample]) -> list[tuple[str, float, float]]:
        """(kind, roofline seconds, measured seconds) of every positive measured layer time."""
        rows = []
        for s in samples:
            if not s.layer_s:
                continue
            f = self.features(s.resolved)
            for layer, t in s.layer_s.items():
                if layer in f.index and t > 0:
                    rows.append((f.at[layer, "kind"], f.at[layer, "roofline_s"], t))
        return rows

    def _fit_kinds(self, rows: list[tuple[str, float, float]]) -> dict[str, int]:
        """Per kind with 3+ rows at 2+ roofline times: scale and overhead by NNLS on relative
        errors. Returns {kind: rows used} of the kinds refitted."""
        fitted: dict[str, int] = {}
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
                fitted[str(kind)] = len(g)
        return fitted

    def _kernel_ratios(self, samples: list[Sample]) -> dict[str, float]:
        """Median measured / roofline time of each kernel measured (by kernel key)."""
        ratios: dict[str, list[float]] = {}
        for s in samples:
            if not s.layer_s:
                continue
            base, _ = self._base_latency(s.resolved)
            for layer, sig, b in zip(s.resolved.index, self.signatures(s.resolved), base):
                t = s.layer_s.get(layer)
                if t and t > 0 and b > 0:
                    ratios.setdefault(sig, []).append(t / b)
        return {sig: float(np.median(v)) for sig, v in ratios.items()}

    def _fit_totals_only(self, samples: list[Sample], meas: np.ndarray) -> None:
        """t_total ≈ a · Σ roofline-layer-latency + c (NNLS on relative errors); every scale
        and per-layer overhead times ``a``, the model overhead ``c``."""
        sums = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
        op_sums = self._op_sums(samples)
        if op_sums:
            sums = sums + sum(op_sums.values())
        w = 1.0 / meas
        if len(samples) >= 2 and np.ptp(sums) > 0:
            coef, _ = nnls(np.stack([sums, np.ones(len(sums))], 1) * w[:, None], meas * w)
            a, c = float(coef[0]), float(coef[1])
        else:
            a, c = float(np.median(meas / (sums + self.overhead_model))), self.overhead_model
        if a > 0:
            self.scale = {k: v * a for k, v in self.scale.items()}
            self.overhead = {k: v * a for k, v in self.overhead.items()}
            self.op_scale = {k: v * a for k, v in self.op_scale.items()}
            self.overhead_model = c

    def _fit_overheads(self, samples: list[Sample], meas: np.ndarray) -> None:
        """What measured totals leave after the layers = overhead_model + Σ_kind c_kind · op
        seconds of that kind + glue_per_byte · kept output activation bytes (NNLS, relative
        errors). An op kind is a column when its seconds vary and add a dimension (else its
        seconds are subtracted as priced); the glue term when there are 3+ plans whose
        activations differ (and, with op columns, it adds a dimension too); with no column, the
        median residual. ``op_scale[kind]`` is multiplied by a positive ``c_kind`` (a zero keeps
        it: an op is never priced as nothing)."""
        layer_sums = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
        resid = meas - layer_sums
        act = np.array([float(s.resolved["act_out_bytes_kept"].sum()) for s in samples])
        self.glue_per_byte = 0.0
        w = 1.0 / meas
        cols, fit_ops = [np.ones(len(samples))], []
        for k, v in sorted(self._op_sums(samples).items()):
            if len(samples) > len(cols) + 1 and np.ptp(v) > 0 and _adds_rank(cols, v, w):
                cols.append(v)
                fit_ops.append(k)
            else:
                resid = resid - v
        use_act = len(samples) >= 3 and np.ptp(act) > 0 and (
            not fit_ops or (len(samples) > len(cols) + 1 and _adds_rank(cols, act, w)))
        if use_act:
            cols.append(act)
        if len(cols) > 1:
            coef, _ = nnls(np.stack(cols, axis=1) * w[:, None], np.maximum(resid, 0.0) * w)
            self.overhead_model = float(coef[0])
            for k, c in zip(fit_ops, coef[1:]):
                if c > 0:
                    self.op_scale[k] *= float(c)
            if use_act:
                self.glue_per_byte = float(coef[-1])
        else:
            self.overhead_model = float(max(0.0, np.median(resid)))

    def _op_sums(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        """Per op kind some sample has (``Sample.ops``), the predicted seconds of that kind's ops
        in each sample (0 where a sample has none)."""
        out: dict[str, np.ndarray] = {}
        for i, s in enumerate(samples):
            ops = op_table(s)
            if not len(ops):
                continue
            for k, t in zip(ops["kind"], self.plan_op_latency(ops, s.resolved)):
                out.setdefault(str(k), np.zeros(len(samples)))[i] += float(t)
        return out


def _adds_rank(cols: list[np.ndarray], v: np.ndarray, w: np.ndarray) -> bool:
    """Whether column ``v`` is not (nearly) a combination of ``cols`` once rows are weighted by
    ``w`` (columns scaled to unit norm, singular values below 1e-6 count as zero)."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=0), 1e-300)

    A = unit(np.stack(cols, axis=1) * w[:, None])
    B = unit(np.column_stack([A, v * w]))
    return np.linalg.matrix_rank(B, tol=1e-6) > np.linalg.matrix_rank(A, tol=1e-6)
