"""Lookup-table cost model fitted from a profile (NetAdapt / HALP style), with interpolation.

Per layer, the measured kernel latency at grid points (fraction of input channels kept,
fraction of output channels kept) is interpolated linearly (scipy ``LinearNDInterpolator``;
nearest measured point outside the grid's hull). Weight-level patterns multiply that by the
measured ratio ``latency(pattern, ratio) / latency(dense)`` interpolated over the ratio. The
model overhead (VM call, glue kernels) is the dense model's measured latency minus the sum of
its layers. A refit adds every measured per-layer timing of the records as a new grid point
and re-estimates the overhead from measured totals.

The table belongs to one model: a layer it has no points for is a coverage gap. It holds measured
layers only, so it prices no compute op without a layer row (``priced_op_kinds`` is empty): every
attention, matmul, embedding, norm and softmax row of ``ModelGraph.ops`` is a coverage gap
``"<node (kind)>"`` — never a zero. Price such graphs with the roofline model.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

from costmodels.base import CostModel, CostModelFileError, FitReport, Sample

__all__ = ["LUTModel"]


class LUTModel(CostModel):
    kind = "lut"
    version = 1

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.points: dict[str, list[list[float]]] = {}       # layer -> [[in_frac, out_frac, seconds], ...]
        self.factors: dict[str, dict[str, list[list[float]]]] = {}  # layer -> pattern -> [[ratio, factor]]
        self.overhead_s = 0.0
        self._interp: dict[str, Any] = {}

    @classmethod
    def from_profile(cls, target: Any, df: pd.DataFrame) -> LUTModel:
        """Fit from :func:`hwsearch.profiling.profile`'s DataFrame (rows with NaN latency are skipped)."""
        m = cls(target)
        ok = df.dropna(subset=["latency_s"])
        for layer, d in ok.groupby("layer", sort=False):
            ch = d[d["pattern"].isin(["dense", "channel"])]
            m.points[layer] = [[float(a), float(b), float(c)] for a, b, c in
                               zip(ch["in_frac"], ch["out_frac"], ch["latency_s"])]
            dense = ch[(ch["in_frac"] == 1.0) & (ch["out_frac"] == 1.0)]["latency_s"]
            if dense.empty:
                continue
            for pat, p in d[~d["pattern"].isin(["dense", "channel"])].groupby("pattern"):
                m.factors.setdefault(layer, {})[str(pat)] = [[0.0, 1.0]] + [
                    [float(r), float(t) / float(dense.iloc[0])] for r, t in zip(p["ratio"], p["latency_s"])]
        m.overhead_s = float(df.attrs.get("overhead_s") or 0.0)
        m.provenance.update(source="profile", profile=df.attrs.get("provenance", {}), relative_std=0.1,
                            cells=int(len(ok)))
        return m

    def _layer_interp(self, layer: str):
        if layer not in self._interp:
            from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

            pts = np.array(self.points[layer], dtype=float)
            xy, z = pts[:, :2], pts[:, 2]
            near = NearestNDInterpolator(xy, z)
            lin = None
            if len(pts) >= 3 and np.linalg.matrix_rank(xy - xy.mean(0)) == 2:
                lin = LinearNDInterpolator(xy, z)
            elif len(np.unique(xy[:, 1])) >= 2:  # one axis only (e.g. depthwise: in = out)
                order = np.argsort(xy[:, 1])

                def lin(q, _x=xy[order, 1], _z=z[order]):
                    return np.interp(np.asarray(q)[:, 1], _x, _z)

            def f(q: np.ndarray) -> np.ndarray:
                v = lin(q) if lin is not None else np.full(len(q), np.nan)
                v = np.asarray(v, dtype=float).reshape(-1)
                bad = np.isnan(v)
                if bad.any():
                    v[bad] = near(q[bad])
                return v

            self._interp[layer] = f
        return self._interp[layer]

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        lat = np.full(len(resolved), math.nan)
        gaps = []
        for i, (layer, r) in enumerate(resolved.iterrows()):
            if layer not in self.points or not self.points[layer]:
                gaps.append(layer)
                continue
            t = float(self._layer_interp(layer)(np.array([[float(r["in_frac"]), float(r["out_frac"])]]))[0])
            pat = str(r["pattern"])
            if pat not in ("dense", "channel"):
                tab = self.factors.get(layer, {}).get(pat)
                if tab is None:
                    gaps.append(layer)
                    continue
                tab_a = np.array(sorted(tab), dtype=float)
                t *= float(np.interp(float(r["ratio"]), tab_a[:, 0], tab_a[:, 1]))
            lat[i] = t
        return lat, gaps

    def model_overhead_s(self) -> float:
        return self.overhead_s

    def params(self) -> dict[str, Any]:
        return {"points": self.points, "factors": self.factors, "overhead_s": self.overhead_s}

    def set_params(self, params: dict[str, Any]) -> None:
        try:
            self.points = {str(k): [[float(a), float(b), float(c)] for a, b, c in v] for k, v in params["points"].items()}
            self.factors = {str(k): {str(p): [[float(a), float(b)] for a, b in t] for p, t in v.items()}
                            for k, v in params.get("factors", {}).items()}
            self.overhead_s = float(params["overhead_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CostModelFileError(f"lookup-table cost-model parameters are malformed ({exc}); profile again") from None
        self._interp = {}

    def total_latency(self, resolved: pd.DataFrame) -> float:
        return float(np.nansum(self.layer_latency(resolved)[0])) + self.overhead_s

    def refit(self, samples: list[Sample]) -> FitReport:
        """Add measured per-layer timings as grid points (dense/channel layers), then set the
        overhead to the median of measured total − predicted layer sum. Raises
        :class:`CostModelError` for an empty list."""
        self._require_samples(samples)
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([self.total_latency(s.resolved) for s in samples])
        added = 0
        for s in samples:
            for layer, t in (s.layer_s or {}).items():
                if layer in s.resolved.index and str(s.resolved.at[layer, "pattern"]) in ("dense", "channel") and t > 0:
                    r = s.resolved.loc[layer]
                    self.points.setdefault(layer, []).append([float(r["in_frac"]), float(r["out_frac"]), float(t)])
                    added += 1
        self._interp = {}
        sums = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
        self.overhead_s = float(max(0.0, np.median(meas - sums)))
        after = np.array([self.total_latency(s.resolved) for s in samples])
        report = FitReport.of(before, after, meas, layer_rows=added, params={"overhead_s": self.overhead_s})
        rel = (after - meas) / meas
        self.provenance["relative_std"] = float(max(0.02, np.sqrt(np.mean(rel ** 2))))
        self.provenance["fitted_on"] = len(samples)
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "plans": len(samples),
            "points_added": added, "mape_before": report.mape_before, "mape_after": report.mape_after})
        return report
