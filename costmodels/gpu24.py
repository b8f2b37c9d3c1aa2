"""2:4 (semi-structured) sparsity on NVIDIA GPUs: a shape-dependent speed-up on a dense roofline.

Each prunable layer is priced as its GEMM ``Y[M, N] = X[M, K] · W[N, K]ᵀ`` with

* ``M`` = batch × spatial positions (tokens), ``N`` = kept output channels, ``K`` = input
  channels per group × kernel elements (the reduction dim, along which 2:4 keeps 2 of every 4);
* a dense time from the target's roofline (:class:`costmodels.analytical.RooflineModel` in the
  model's dtype, so a plan without N:M layers is priced exactly as the roofline prices it);
* for a 2:4 layer, the dense time divided by a predicted speed-up ``s(M, N, K, dtype)``.

``s`` comes from a regression on log-dimensions fitted on a table of measured dense-vs-2:4 GEMM
times (:meth:`Gpu24Model.fit`). Measured speed-ups are far from NVIDIA's 2× peak ratio and are
often below 1 for small GEMMs, so the sign matters more than the size: :meth:`Gpu24Model.fit`
reports the held-out *sign accuracy* (share of held-out shapes where "predicted s > 1" agrees with
"measured s > 1") next to the MAPE of ``s``.

Which table is used (first that applies):

1. ``costmodels/data/<[measure] gpu24_table>`` — rows measured on the device by
   ``studies/gpu_24/measure.py`` (``table_source = "measured"``);
2. rows of ``costmodels/data/gpu24_public.csv`` (numbers from cited public benchmarks) whose
   ``device`` contains the spec's ``[measure] device_match``, when there are at least
   ``MIN_FIT_ROWS`` of them (``table_source = "public"``);
3. none: ``s`` falls back to the spec's peak ratio (``peak_<dtype>_sparse24_ops_per_s`` /
   ``peak_<dtype>_dense_ops_per_s``, 2.0 on A100/H100/H200), ``measured = False``, and the model
   says so loudly (a warning, the ``identity`` string and the provenance).

A layer whose shape breaks the 2:4 kernel's rules (see :data:`SHAPE_RULES`), whose kind is not in
``[patterns.nm] layer_kinds``, or whose N:M is not the spec's, gets no speed-up (``s = 1``) and a
one-line reason (:meth:`Gpu24Model.check`, :meth:`Gpu24Model.explain`).

Compute ops without a layer row (attention, matmul, embedding, norm, softmax: ``ModelGraph.ops``)
are priced as the dense path prices them — by the inner roofline on the GPU's figures in the
model's dtype (:meth:`costmodels.analytical.RooflineModel.op_latency`); 2:4 never applies to
them. Prefill and decode shapes need nothing apart: an attention row's ``seq_q`` and ``seq_k``
set its FLOPs and bytes, and a decode step (``seq_q = 1`` against a ``seq_k``-token KV cache)
comes out memory-bound.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmodels.analytical import RooflineModel
from costmodels.ops import OP_KINDS
from costmodels.base import CostModel, CostModelError, CostModelFileError, FitReport, Sample, fidelity

__all__ = ["Gpu24Model", "Gpu24FitReport", "ShapeRule", "SHAPE_RULES", "load_table", "TABLE_SCHEMA_VERSION",
           "DATA_DIR", "PUBLIC_TABLE", "MIN_FIT_ROWS", "device_matches"]

log = logging.getLogger(__name__)

TABLE_SCHEMA_VERSION = 1
DATA_DIR = Path(__file__).parent / "data"
PUBLIC_TABLE = DATA_DIR / "gpu24_public.csv"
MIN_FIT_ROWS = 8          # fewer usable rows than this: no fit, peak-ratio fallback
_MIN_HELDOUT_SHAPES = 4   # fewer distinct shapes than this: no held-out report
_GBR_MIN_ROWS = 40        # "auto" picks gradient boosting from this many rows on, ridge below
_S_FLOOR = 0.02           # predictions are clipped to [_S_FLOOR, peak ratio]
_REQUIRED_COLUMNS = ("device", "dtype", "M", "N", "K", "source")
_DTYPES = ("fp16", "bf16", "int8", "fp32")
_N_CONT = 4               # continuous leading columns of _features (log2 M, N, K, min)


@dataclass(frozen=True)
class ShapeRule:
    """Shape constraints of one 2:4 kernel backend for one dtype, in elements.

    The sparse weight ``W[N, K]`` needs ``N`` a multiple of (and >=) ``weight_rows`` and ``K`` a
    multiple of (and >=) ``weight_cols``; the dense activation (``Xᵀ[K, M]`` in torch's
    ``W_sparse @ Xᵀ``) is zero-padded so that ``M`` becomes a multiple of ``dense_cols`` — padding
    costs time but is not an error."""

    weight_rows: int
    weight_cols: int
    dense_rows: int
    dense_cols: int


# torch 2.13, torch/sparse/semi_structured.py: SparseSemiStructuredTensorCUSPARSELT and
# SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS = (sparse_min_rows, sparse_min_cols,
# dense_min_rows, dense_min_cols). tests/test_gpu24.py checks this table against the installed torch.
SHAPE_RULES: dict[tuple[str, str], ShapeRule] = {
    ("cusparselt", "fp16"): ShapeRule(16, 16, 8, 8),
    ("cusparselt", "bf16"): ShapeRule(16, 16, 8, 8),
    ("cusparselt", "int8"): ShapeRule(32, 32, 16, 16),
    ("cutlass", "fp16"): ShapeRule(32, 64, 8, 8),
    ("cutlass", "bf16"): ShapeRule(32, 64, 8, 8),
    ("cutlass", "int8"): ShapeRule(16, 128, 16, 16),
    ("cutlass", "fp32"): ShapeRule(32, 32, 4, 4),
}


@dataclass(frozen=True)
class Gpu24FitReport:
    """How well the speed-up model predicts measured 2:4 speed-ups on held-out shapes.

    Rows are split into ``folds`` groups by shape ``(M, N, K)`` (all dtypes/backends of a shape
    are held out together); every row is predicted by a model that never saw its shape.
    ``sign_accuracy``: share of held-out rows where ``predicted s > 1`` equals ``measured s > 1``;
    ``baseline_sign_accuracy``: the same for the peak-ratio fallback (which always says ``s > 1``);
    ``mape`` / ``within10`` / ``kendall_tau``: relative error of ``s`` (see
    :func:`costmodels.base.fidelity`). NaN when there are fewer than 4 distinct shapes."""

    n_rows: int
    n_shapes: int
    folds: int
    sign_accuracy: float
    baseline_sign_accuracy: float
    mape: float
    within10: float
    kendall_tau: float
    share_speedup_gt1: float
    estimator: str
    table: str
    table_source: str
    device_match: str | None
    measured: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_table(path: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read and validate a dense-vs-2:4 timing table (CSV written by ``studies/gpu_24/measure.py``
    or the cited ``gpu24_public.csv``).

    Required columns: ``device, dtype, M, N, K, source`` and either ``speedup`` or both
    ``dense_ms`` and ``sparse_ms`` (milliseconds); optional: ``backend`` (default
    ``"cusparselt"``), ``fit`` (1/0, default 1), ``error`` (non-empty = failed row, kept as a
    record, never fitted), ``schema_version`` (must be 1 when present). ``speedup`` is filled from
    ``dense_ms / sparse_ms`` where missing. Raises :class:`CostModelFileError` naming the file, the CSV line
    and the fix."""
    name = "<DataFrame>" if isinstance(path, pd.DataFrame) else str(path)
    if isinstance(path, pd.DataFrame):
        df = path.copy()
    else:
        try:
            df = pd.read_csv(path, dtype={"error": str, "source": str, "note": str})
        except FileNotFoundError:
            raise CostModelFileError(f"gpu24 table {name} does not exist; run studies/gpu_24/measure.py on the GPU "
                            "or pass costmodels/data/gpu24_public.csv") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CostModelFileError(f"gpu24 table {name} is not a readable CSV ({first}); restore it from git "
                            "or re-run studies/gpu_24/measure.py") from None
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CostModelFileError(f"gpu24 table {name} lacks columns {missing}; required: {', '.join(_REQUIRED_COLUMNS)} "
                        "and speedup or dense_ms+sparse_ms")
    if "schema_version" in df.columns:
        bad = df.index[pd.to_numeric(df["schema_version"], errors="coerce") != TABLE_SCHEMA_VERSION]
        if len(bad):
            raise CostModelFileError(f"gpu24 table {name} line {int(bad[0]) + 2}: schema_version "
                            f"{df.at[bad[0], 'schema_version']!r} is not {TABLE_SCHEMA_VERSION}; "
                            "re-measure with this hwsearch's studies/gpu_24/measure.py")
    if "speedup" not in df.columns and not {"dense_ms", "sparse_ms"} <= set(df.columns):
        raise CostModelFileError(f"gpu24 table {name} has neither a speedup column nor dense_ms and sparse_ms")
    for col in ("M", "N", "K"):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = df.index[~(vals > 0) | (vals != np.round(vals))]
        if len(bad):
            raise CostModelFileError(f"gpu24 table {name} line {int(bad[0]) + 2}: {col} = {df.at[bad[0], col]!r} is not a "
                            "positive integer")
        df[col] = vals.astype(np.int64)
    src = df["source"].fillna("").astype(str).str.strip()
    if (src == "").any():
        line = int(df.index[src == ""][0]) + 2
        raise CostModelFileError(f"gpu24 table {name} line {line} has no source; every row cites where its numbers come "
                        "from (a URL, a paper, or 'measured: studies/gpu_24/measure.py')")
    df["dtype"] = df["dtype"].astype(str).str.strip().str.lower()
    unknown = sorted(set(df["dtype"]) - set(_DTYPES))
    if unknown:
        raise CostModelFileError(f"gpu24 table {name}: unknown dtypes {unknown}; valid: {', '.join(_DTYPES)}")
    if "backend" not in df.columns:
        df["backend"] = "cusparselt"
    df["backend"] = df["backend"].fillna("cusparselt").astype(str)
    df["fit"] = pd.to_numeric(df["fit"], errors="coerce").fillna(1).astype(int) if "fit" in df.columns else 1
    df["error"] = df["error"].fillna("").astype(str) if "error" in df.columns else ""
    speed = pd.to_numeric(df["speedup"], errors="coerce") if "speedup" in df.columns else \
        pd.Series(np.nan, index=df.index)
    if {"dense_ms", "sparse_ms"} <= set(df.columns):
        ratio = pd.to_numeric(df["dense_ms"], errors="coerce") / pd.to_numeric(df["sparse_ms"], errors="coerce")
        speed = speed.fillna(ratio)
    df["speedup"] = speed
    return df


def device_matches(device: str, match: str | None) -> bool:
    """True when ``match`` occurs in ``device`` not glued to a preceding letter or digit
    (case-insensitive): "H200" matches "NVIDIA H200" and "NVIDIA H200 NVL", not "NVIDIA GH200"."""
    return not match or re.search(rf"(?<![a-z0-9]){re.escape(match)}", device, flags=re.IGNORECASE) is not None


def _device_rows(df: pd.DataFrame, device_match: str | None) -> pd.DataFrame:
    if not device_match:
        return df
    return df[[device_matches(str(d), device_match) for d in df["device"]]]


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    ok = (df["fit"] == 1) & (df["error"].str.strip() == "") & np.isfinite(df["speedup"]) & (df["speedup"] > 0)
    return df[ok]


def _features(M: np.ndarray, N: np.ndarray, K: np.ndarray, dtype: Sequence[str], backend: Sequence[str],
              ) -> np.ndarray:
    """Regression inputs: log2 of the (padded) dims, the smallest of them, dtype and backend flags."""
    lm, ln, lk = np.log2(np.maximum(M, 1)), np.log2(np.maximum(N, 1)), np.log2(np.maximum(K, 1))
    dt = np.asarray(dtype, dtype=object)
    be = np.asarray([str(b).lower() for b in backend], dtype=object)
    return np.column_stack([lm, ln, lk, np.minimum(np.minimum(lm, ln), lk),
                            (dt == "int8").astype(float), (dt == "bf16").astype(float),
                            np.char.find(be.astype(str), "cutlass") >= 0])


def _make_estimator(kind: str, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    if kind == "gbr":
        return GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8,
                                         random_state=seed)
    raise CostModelError(f"unknown gpu24 estimator {kind!r}; valid: auto, ridge, gbr")


class Gpu24Model(CostModel):
    """Dense roofline + fitted 2:4 speed-up per GEMM (see the module docstring).

    ``dtype`` (default: the spec's ``[measure] dtype``, else its first of fp16/bf16/int8) prices
    every layer; ``backend`` (default ``[patterns.nm] sparse_backend``, else ``"cusparselt"``)
    selects the shape rules and the backend feature of the regression; ``table`` overrides the
    table discovery (``any_device``: fit all its rows, not only the spec's device's);
    ``estimator`` is ``"auto"`` (gradient boosting from 40 rows on, else ridge),
    ``"ridge"`` or ``"gbr"``. Not thread-safe while fitting; read-only use is."""

    kind = "gpu24"
    version = 1
    priced_op_kinds = frozenset(OP_KINDS)

    def __init__(self, target: Any, dtype: str | None = None, *, backend: str | None = None,
                 table: str | Path | pd.DataFrame | None = None, any_device: bool = False, estimator: str = "auto",
                 seed: int = 0) -> None:
        super().__init__(target)
        nm = dict(target.patterns.get("nm", {}))
        self.dtype = dtype or target.measure.get("dtype") or next(
            (d for d in target.dtypes if d in ("fp16", "bf16", "int8")), "fp16")
        if self.dtype not in _DTYPES:
            raise CostModelError(f"gpu24 dtype {self.dtype!r} unknown; valid: {', '.join(_DTYPES)}")
        self.backend = str(backend or nm.get("sparse_backend", "cusparselt"))
        self.n, self.m = int(nm.get("n", 2)), int(nm.get("m", 4))
        self.layer_kinds = tuple(nm.get("layer_kinds", ("linear",)))
        self.device_match: str | None = target.measure.get("device_match")
        self.estimator_kind = estimator
        self.seed = int(seed)
        self.roofline = RooflineModel(target, dtype=self.dtype)
        self._est: Any = None
        self._xlo = self._xhi = np.zeros(_N_CONT)
        self._rows: pd.DataFrame | None = None
        self.report: Gpu24FitReport | None = None
        self.heldout: pd.DataFrame | None = None  # usable rows of the last fit with out-of-fold "pred"
        self.table_source = "none"
        self._warned: set[tuple[int, int, str]] = set()
        self.provenance.update(relative_std=self.roofline.relative_std(), measured=False,
                               source="analytical prior from " + target.identity)
        if table is not None:
            self.fit(table, any_device=any_device)
        else:
            self._discover_table()

    # ---- table discovery and fallback --------------------------------------------------------
    def _discover_table(self) -> None:
        name = self.target.measure.get("gpu24_table") or f"gpu24_{self.target.name.replace('-', '_')}.csv"
        measured = DATA_DIR / str(name)
        if measured.exists():
            self.fit(measured, table_source="measured")
            return
        public = _usable(_device_rows(load_table(PUBLIC_TABLE), self.device_match)) if PUBLIC_TABLE.exists() \
            else pd.DataFrame()
        if self.device_match and len(public) >= MIN_FIT_ROWS:
            self.fit(PUBLIC_TABLE, table_source="public")
            return
        evidence = ""
        if len(public):
            evidence = (f"; public evidence for {self.device_match!r}: {len(public)} row(s), speed-ups "
                        f"{public['speedup'].min():.2f}x-{public['speedup'].max():.2f}x ({PUBLIC_TABLE.name})")
        log.warning("gpu24 for %s: no measured 2:4 table (%s missing) and fewer than %d public rows: 2:4 speed-ups "
                    "fall back to the spec's peak ratio %.2fx (measured=False), which is optimistic%s. Run "
                    "studies/gpu_24/measure.py then studies/gpu_24/fit.py on the GPU.", self.target.identity,
                    measured, MIN_FIT_ROWS, self.peak_ratio(), evidence)

    @property
    def measured(self) -> bool:
        """True when speed-ups come from a fitted table of measurements (own or cited public)."""
        return self._est is not None

    @property
    def identity(self) -> str:
        base = super().identity
        return f"{base}[{self.table_source}]" if self.measured else f"{base}[measured=False]"

    def peak_ratio(self, dtype: str | None = None) -> float:
        """Spec's sparse/dense tensor peak for ``dtype`` (2.0 on Ampere/Hopper); 1.0 when absent."""
        d = dtype or self.dtype
        t = self.target
        sk, dk = f"peak_{d}_sparse24_ops_per_s", f"peak_{d}_dense_ops_per_s"
        if t.has("compute", sk) and t.has("compute", dk):
            return t.figure("compute", sk) / t.figure("compute", dk)
        return 1.0

    # ---- shape rules -------------------------------------------------------------------------
    def rule(self, dtype: str | None = None) -> ShapeRule | None:
        return SHAPE_RULES.get((self.backend, dtype or self.dtype))

    def check(self, M: int, N: int, K: int, dtype: str | None = None) -> str | None:
        """Why a ``M×K · (N×K)ᵀ`` GEMM cannot run on the 2:4 kernel, or None when it can."""
        d = dtype or self.dtype
        r = self.rule(d)
        if r is None:
            valid = sorted(dt for (b, dt) in SHAPE_RULES if b == self.backend)
            return f"dtype {d} has no 2:4 kernel in the {self.backend} backend (valid: {', '.join(valid)})"
        bad = []
        if N < r.weight_rows or N % r.weight_rows:
            bad.append(f"out channels N={N} must be a multiple of {r.weight_rows}")
        if K < r.weight_cols or K % r.weight_cols:
            bad.append(f"reduction dim K={K} (in_channels*kernel) must be a multiple of {r.weight_cols}")
        if M < 1:
            bad.append(f"M={M} must be >= 1")
        if bad:
            return (f"{self.backend} 2:4 {d} kernel: " + "; ".join(bad) +
                    " — use channel pruning or keep the layer dense")
        return None

    def padded_m(self, M: int, dtype: str | None = None) -> int:
        """``M`` after the zero-padding torch applies to the dense operand (costs time, not an error)."""
        r = self.rule(dtype)
        q = r.dense_cols if r else 1
        return int(math.ceil(max(M, 1) / q) * q)

    # ---- speed-up ----------------------------------------------------------------------------
    def speedup(self, M: int, N: int, K: int, dtype: str | None = None, batch: int = 1) -> float:
        """Predicted dense-time / 2:4-time of the GEMM; ``M`` = tokens (batch × spatial) of one
        sample times ``batch``. 1.0 when :meth:`check` refuses the shape."""
        return float(self.speedups(np.array([M * batch]), np.array([N]), np.array([K]), dtype)[0])

    def speedup_pays(self, M: int, N: int, K: int, dtype: str | None = None, batch: int = 1) -> bool:
        """True when the 2:4 kernel is predicted to be faster than dense for this GEMM."""
        return self.speedup(M, N, K, dtype, batch) > 1.0

    def speedups(self, M: np.ndarray, N: np.ndarray, K: np.ndarray, dtype: str | None = None) -> np.ndarray:
        """Vectorised :meth:`speedup` (``M`` already includes the batch)."""
        d = dtype or self.dtype
        M, N, K = (np.asarray(a, dtype=np.int64) for a in (M, N, K))
        out = np.ones(len(M))
        ok = np.array([self.check(int(a), int(b), int(c), d) is None for a, b, c in zip(M, N, K)], dtype=bool)
        if not ok.any():
            return out
        cap = self.peak_ratio(d)
        if self._est is None:
            out[ok] = cap
            return out
        Mp = np.array([self.padded_m(int(a), d) for a in M[ok]])
        X = _features(Mp, N[ok], K[ok], [d] * int(ok.sum()), [self.backend] * int(ok.sum()))
        # Outside the measured range a regression on log-dims extrapolates wildly (a ridge fitted on
        # M >= 3072 predicts ~1.9x at M = 1, where measurements show < 1x): hold the log-dims at the
        # edge of the measured range instead, and let extrapolated() say so.
        X[:, :_N_CONT] = np.clip(X[:, :_N_CONT], self._xlo, self._xhi)
        out[ok] = np.clip(np.exp(self._est.predict(X)), _S_FLOOR, max(cap, 1.0))
        return out

    def extrapolated(self, M: int, N: int, K: int, dtype: str | None = None) -> bool:
        """True when (padded M, N, K) lie outside the range of the fitted table (or nothing is
        fitted): the speed-up there is the one at the nearest edge of the measured range."""
        if self._est is None:
            return True
        d = dtype or self.dtype
        x = _features(np.array([self.padded_m(M, d)]), np.array([N]), np.array([K]), [d], [self.backend])[0, :_N_CONT]
        return bool(np.any(x < self._xlo - 1e-9) or np.any(x > self._xhi + 1e-9))

    def _fit_estimator(self, X: np.ndarray, y: np.ndarray) -> None:
        self._est = _make_estimator(self.estimator_kind, self.seed).fit(X, y)
        self._xlo, self._xhi = X[:, :_N_CONT].min(axis=0), X[:, :_N_CONT].max(axis=0)

    # ---- fitting -----------------------------------------------------------------------------
    def fit(self, table: str | Path | pd.DataFrame, *, any_device: bool = False, table_source: str | None = None,
            estimator: str | None = None) -> Gpu24FitReport:
        """Fit ``log s`` on a timing table (see :func:`load_table`): rows of the spec's device
        (``[measure] device_match``; all rows when ``any_device``), with ``fit == 1``, no error and
        a finite speed-up. Reports held-out sign accuracy and MAPE, then fits on all usable rows.
        Raises :class:`CostModelFileError` when fewer than ``MIN_FIT_ROWS`` rows are usable."""
        df = load_table(table)
        name = "<DataFrame>" if isinstance(table, pd.DataFrame) else str(table)
        match = None if any_device else self.device_match
        rows = _usable(_device_rows(df, match)).reset_index(drop=True)
        if len(rows) < MIN_FIT_ROWS:
            raise CostModelFileError(f"gpu24 table {name} has {len(rows)} usable rows for device {match!r} (need "
                            f"{MIN_FIT_ROWS}): measure more shapes with studies/gpu_24/measure.py")
        kind = estimator or self.estimator_kind
        if kind == "auto":
            kind = "gbr" if len(rows) >= _GBR_MIN_ROWS else "ridge"
        rows["Mp"] = [self._pad_for(int(m), str(d), str(b)) for m, d, b in zip(rows["M"], rows["dtype"], rows["backend"])]
        X = _features(rows["Mp"].to_numpy(), rows["N"].to_numpy(), rows["K"].to_numpy(), list(rows["dtype"]),
                      list(rows["backend"]))
        y = np.log(rows["speedup"].to_numpy(dtype=float))
        shapes = rows[["M", "N", "K"]].astype(str).agg("x".join, axis=1).to_numpy()
        n_shapes = len(set(shapes))
        meas = rows["speedup"].to_numpy(dtype=float)
        sign = base_sign = mape = w10 = tau = math.nan
        folds = 0
        self.heldout = None
        if n_shapes >= _MIN_HELDOUT_SHAPES:
            from sklearn.model_selection import GroupKFold

            folds = min(5, n_shapes)
            pred = np.empty(len(rows))
            for tr, te in GroupKFold(n_splits=folds).split(X, y, groups=shapes):
                est = _make_estimator(kind, self.seed).fit(X[tr], y[tr])
                pred[te] = np.clip(np.exp(est.predict(X[te])), _S_FLOOR, None)
            self.heldout = rows[["M", "N", "K", "dtype", "backend", "speedup"]].assign(pred=pred)
            sign = float(np.mean((pred > 1.0) == (meas > 1.0)))
            base_sign = float(np.mean(meas > 1.0))
            fid = fidelity(pred, meas)
            mape, w10, tau = fid["mape"], fid["within10"], fid["kendall_tau"]
        self.estimator_kind = kind
        self._fit_estimator(X, y)
        self._rows = rows[["M", "N", "K", "dtype", "backend", "speedup"]].copy()
        if table_source is None:
            table_source = "public" if Path(name).name == PUBLIC_TABLE.name else \
                ("synthetic" if _all_contain(df, "source", "synthetic") else "measured")
        self.table_source = table_source
        self.report = Gpu24FitReport(
            n_rows=len(rows), n_shapes=n_shapes, folds=folds, sign_accuracy=sign, baseline_sign_accuracy=base_sign,
            mape=mape, within10=w10, kendall_tau=tau, share_speedup_gt1=float(np.mean(meas > 1.0)),
            estimator=kind, table=name, table_source=table_source, device_match=match, measured=True)
        self.provenance["measured"] = True
        self.provenance["speedup_table"] = {"table": name, "source": table_source, "rows": len(rows)}
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "what": "gpu24 speed-up fit",
            **{k: v for k, v in self.report.to_dict().items() if k not in ("measured",)}})
        log.info("gpu24 fitted on %s (%s, %d rows, %d shapes, %s): held-out sign accuracy %.3f (peak-ratio "
                 "baseline %.3f), MAPE %.3f", name, table_source, len(rows), n_shapes, kind, sign, base_sign, mape)
        return self.report

    def _pad_for(self, M: int, dtype: str, backend: str) -> int:
        key = ("cutlass" if "cutlass" in backend.lower() else "cusparselt", dtype)
        r = SHAPE_RULES.get(key)
        q = r.dense_cols if r else 1
        return int(math.ceil(max(M, 1) / q) * q)

    # ---- per-layer pricing -------------------------------------------------------------------
    @staticmethod
    def gemm_dims(resolved: pd.DataFrame) -> pd.DataFrame:
        """``M`` (batch × spatial), ``N`` (kept out channels), ``K`` (in per group × kernel) per layer."""
        N = resolved["rows2d"].to_numpy(dtype=np.int64)
        K = resolved["cols2d"].to_numpy(dtype=np.int64)
        macs = resolved["dense_macs"].to_numpy(dtype=float)
        M = np.where(N * K > 0, np.rint(macs / np.maximum(N * K, 1)), 0).astype(np.int64)
        return pd.DataFrame({"M": M, "N": N, "K": K}, index=resolved.index)

    def explain(self, resolved: pd.DataFrame) -> pd.DataFrame:
        """Per layer: GEMM dims, dense roofline seconds, 2:4 speed-up applied, seconds, and the
        reason when an N:M layer gets no speed-up (``message``)."""
        dims = self.gemm_dims(resolved)
        dense_res = resolved.copy()
        is_nm = (resolved["pattern"] == "nm").to_numpy()
        dense_res.loc[is_nm, "pattern"] = "dense"
        dense_s, _ = self.roofline.layer_latency(dense_res)
        s = np.ones(len(resolved))
        extra = np.zeros(len(resolved), dtype=bool)
        msgs: list[str] = [""] * len(resolved)
        for i, (layer, row) in enumerate(resolved.iterrows()):
            if row["pattern"] != "nm":
                continue
            M, N, K = (int(dims.at[layer, c]) for c in ("M", "N", "K"))
            if not self.target.accelerates("nm"):
                msgs[i] = f"{self.target.identity} does not accelerate N:M ([patterns.nm] kernel/speedup not true)"
            elif (int(row["n"]), int(row["m"])) != (self.n, self.m):
                msgs[i] = f"{int(row['n'])}:{int(row['m'])} has no kernel here (the tensor cores do {self.n}:{self.m})"
            elif row["kind"] not in self.layer_kinds:
                msgs[i] = (f"{row['kind']} layers have no 2:4 kernel in this backend (accelerated kinds: "
                           f"{', '.join(self.layer_kinds)})")
            else:
                msg = self.check(M, N, K)
                if msg:
                    msgs[i] = msg
                else:
                    s[i] = self.speedups(np.array([M]), np.array([N]), np.array([K]))[0]
                    extra[i] = self.extrapolated(M, N, K)
            if msgs[i]:
                key = (N, K, msgs[i][:40])
                if key not in self._warned:
                    self._warned.add(key)
                    log.info("layer %r priced without 2:4 speed-up: %s", layer, msgs[i])
        latency = dense_s / s
        if self._est is None:
            # the unmeasured fallback is a ratio of tensor-core peaks: it speeds up the GEMM, not the
            # per-kernel launch overhead (a measured table's kernel times include it, so a fitted
            # speed-up applies to the whole call)
            launch = np.array([self.roofline.overhead.get(k, 0.0) for k in resolved["kind"]], dtype=float)
            latency = np.where(s != 1.0, launch + np.maximum(dense_s - launch, 0.0) / s, dense_s)
        return pd.DataFrame({"kind": resolved["kind"].to_numpy(), "pattern": resolved["pattern"].to_numpy(),
                             "M": dims["M"], "N": dims["N"], "K": dims["K"], "dense_s": dense_s, "speedup": s,
                             "latency_s": latency, "accelerated": is_nm & (np.asarray(msgs) == ""),
                             "extrapolated": extra, "message": msgs}, index=resolved.index)

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        dense_res = resolved.copy()
        dense_res.loc[dense_res["pattern"] == "nm", "pattern"] = "dense"
        _, gaps = self.roofline.layer_latency(dense_res)
        return self.explain(resolved)["latency_s"].to_numpy(dtype=float), gaps

    def model_overhead_s(self) -> float:
        return self.roofline.model_overhead_s()

    def op_latency(self, ops: pd.DataFrame, kept: np.ndarray, example_bytes: float) -> np.ndarray:
        """The dense roofline's op seconds (:meth:`RooflineModel.op_latency`): no 2:4 for ops."""
        return self.roofline.op_latency(ops, kept, example_bytes)

    def glue_s(self, resolved: pd.DataFrame) -> float:
        return self.roofline.glue_s(resolved)

    def relative_std(self) -> float:
        return float(self.roofline.relative_std())

    # ---- persistence -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        sp: dict[str, Any] = {"measured": self.measured, "table_source": self.table_source,
                              "estimator": self.estimator_kind, "seed": self.seed, "device_match": self.device_match}
        if self._rows is not None:
            sp["rows"] = self._rows.to_dict(orient="list")
            probe = self._rows.head(20)
            sp["check"] = [float(v) for v in self._predict_rows(probe)]
            sp["report"] = self.report.to_dict() if self.report else None
        return {"dtype": self.dtype, "backend": self.backend, "roofline": self.roofline.params(), "speedup": sp}

    def _predict_rows(self, rows: pd.DataFrame) -> np.ndarray:
        Mp = [self._pad_for(int(m), str(d), str(b)) for m, d, b in zip(rows["M"], rows["dtype"], rows["backend"])]
        X = _features(np.asarray(Mp), rows["N"].to_numpy(), rows["K"].to_numpy(), list(rows["dtype"]),
                      list(rows["backend"]))
        return np.exp(self._est.predict(X))

    def set_params(self, params: dict[str, Any]) -> None:
        """Restore a saved model: the roofline parameters, and the speed-up regression refitted on the
        stored rows (deterministic); warns when the refit no longer reproduces the stored predictions
        (a different scikit-learn)."""
        try:
            self.dtype = str(params.get("dtype", self.dtype))
            self.backend = str(params.get("backend", self.backend))
            self.roofline = RooflineModel(self.target, dtype=self.dtype)
            self.roofline.set_params(params["roofline"])
            sp = dict(params["speedup"])
            self.estimator_kind = str(sp.get("estimator", "auto"))
            self.seed = int(sp.get("seed", 0))
            self.table_source = str(sp.get("table_source", "none"))
            rows = sp.get("rows")
            if not sp.get("measured") or rows is None:
                self._est, self._rows, self.report = None, None, None
                return
            df = pd.DataFrame(rows)
            df["fit"], df["error"] = 1, ""
            Mp = [self._pad_for(int(m), str(d), str(b)) for m, d, b in zip(df["M"], df["dtype"], df["backend"])]
            X = _features(np.asarray(Mp), df["N"].to_numpy(), df["K"].to_numpy(), list(df["dtype"]), list(df["backend"]))
            self._fit_estimator(X, np.log(df["speedup"].to_numpy(float)))
            self._rows = df[["M", "N", "K", "dtype", "backend", "speedup"]].copy()
            self.report = Gpu24FitReport(**sp["report"]) if sp.get("report") else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CostModelFileError(f"gpu24 cost-model parameters are malformed ({exc}); refit the model") from None
        stored = np.asarray(sp.get("check", []), dtype=float)
        if len(stored):
            now = self._predict_rows(self._rows.head(len(stored)))
            if not np.allclose(now, stored, rtol=1e-6):
                log.warning("gpu24: the refit on load differs from the saved predictions (max rel. diff %.2e): "
                            "scikit-learn changed; refit with studies/gpu_24/fit.py",
                            float(np.max(np.abs(now - stored) / stored)))

    # ---- refit from measured plans -----------------------------------------------------------
    def total_latency(self, resolved: pd.DataFrame, ops: pd.DataFrame | None = None) -> float:
        """Seconds of a resolved plan as :meth:`predict` gives them, its op rows ``ops`` priced too."""
        lat, _ = self.layer_latency(resolved)
        total = float(np.nansum(lat)) + self.model_overhead_s() + self.glue_s(resolved)
        if ops is not None and len(ops):
            total += float(np.nansum(self.plan_op_latency(ops, resolved)))
        return total

    def refit(self, samples: list[Sample]) -> FitReport:
        """Refit the dense roofline (per-kind scale/overhead, see :meth:`RooflineModel.refit`) on
        the measured plans' dense layers: per-layer times of N:M layers are left out (their 2:4
        speed-up is fitted from kernel tables by :meth:`fit`), and whole-plan times are used only
        for plans without N:M layers. The report's errors are those of this whole model on all
        samples. Raises :class:`CostModelError` when the list is empty or no sample is usable."""
        self._require_samples(samples)
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        dense_samples = []
        for s in samples:
            nm_layers = set(s.resolved.index[s.resolved["pattern"] == "nm"])
            if s.layer_s:
                kept = {k: v for k, v in s.layer_s.items() if k not in nm_layers}
                if kept:
                    dense_samples.append(dataclasses.replace(s, layer_s=kept))
            elif not nm_layers:
                dense_samples.append(s)
        if not dense_samples:
            raise CostModelError("no sample is usable for the dense refit: give per-layer times (layer_s) or plans "
                                 "without N:M layers; 2:4 speed-ups are fitted with Gpu24Model.fit(table)")
        inner = self.roofline.refit(dense_samples, totals_of=[s for s in dense_samples
                                                              if not (s.resolved["pattern"] == "nm").any()])
        after = np.array([self.total_latency(s.resolved, s.ops) for s in samples])
        rel = (after - meas) / meas
        self.roofline.provenance["relative_std"] = float(max(0.02, np.sqrt(np.mean(rel ** 2))))
        self.provenance["relative_std"] = self.roofline.provenance["relative_std"]
        self.provenance["fitted_on"] = len(samples)
        report = FitReport.of(before, after, meas, layer_rows=inner.layer_rows, params=self.params())
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "what": "dense roofline refit",
            "plans": len(samples), "dense_plans": len(dense_samples), "mape_before": report.mape_before,
            "mape_after": report.mape_after})
        return report


def _all_contain(df: pd.DataFrame, col: str, word: str) -> bool:
    return bool(len(df)) and bool(df[col].astype(str).str.contains(word, case=False, regex=False).all())
