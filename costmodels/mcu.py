"""Instruction-count model of the MCU kernels (``targets.mcu``), fitted from emulator measurements.

Each kernel's executed instructions are an exact linear function of counts that follow from its
loop structure: per kept weight, per 4-column SMLAD step, per stored block, per output row, per
im2col tap, per pixel... :func:`layer_features` computes those counts from a layer's shape and
density, and :class:`McuInstructionModel` holds, per ``(cpu, op, fmt, dtype)``, non-negative
coefficients (instructions per event) fitted by non-negative least squares on relative error.
The format kernels are the same C functions for linear and conv layers, so one fit per
``(cpu, family, dtype)`` — family ``gemm`` (linear, conv1d, conv2d) or ``dw`` (depthwise) —
pools every format's rows, with features namespaced by format (``csr.kept``) or stage
(``im.copy_words`` for im2col, ``conv.pixels``).

Time only follows through an assumed CPI: ``latency_s = instructions * cpi / clock_hz``; QEMU has
no timing model, so ``cpi`` comes from the target spec and is labelled there as an assumption.

File format (JSON, ``schema_version`` 1)::

    {"schema_version": 1, "kind": "mcu-instructions", "provenance": {...},
     "groups": {"cortex-m4|gemm|int8": {"features": [...], "coef": [...], "scale": [...],
                "xtx": [[...]], "xty": [...], "yty": 1.0, "n": 12, "seen": [...],
                "rel_rms": 0.001, "max_rel_err": 0.002}, ...}}

``xtx``/``xty``/``yty`` are the (relative-error weighted, scaled) normal equations, so
:meth:`McuInstructionModel.refit` adds new measurement rows without needing the old ones.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from costmodels.errors import CostModelError

__all__ = ["McuInstructionModel", "McuModelError", "GroupFit", "layer_features", "family", "fit", "load",
           "default_model", "SCHEMA_VERSION", "DATA_DIR", "shape_from_layer"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "mcu-instructions"
DATA_DIR = Path(__file__).parent / "data"
DEFAULT_FILE = DATA_DIR / "mcu_model.json"


class McuModelError(CostModelError):
    """A bad model file, or a layer kind the model has no coefficients for (a
    :class:`CostModelError`, hence also a ``ValueError`` as before)."""


# ---------------------------------------------------------------------------------------------
# geometry and features


@dataclass(frozen=True)
class _Geom:
    op: str
    batch: int
    in_c: int
    out_c: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    k_h: int
    k_w: int
    s_h: int
    s_w: int
    p_h: int
    p_w: int
    groups: int


def _geom(op: str, s: Mapping[str, Any]) -> _Geom:
    if op == "linear":
        return _Geom(op, int(s.get("batch", 1)), int(s["in_features"]), int(s["out_features"]),
                     1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1)
    if op == "conv1d":
        L, k, st, pd_ = int(s["in_len"]), int(s["kernel"]), int(s.get("stride", 1)), int(s.get("padding", 0))
        ol = int(s.get("out_len", (L + 2 * pd_ - k) // st + 1))
        return _Geom(op, 1, int(s["in_channels"]), int(s["out_channels"]), 1, L, 1, ol, 1, k, 1, st, 0, pd_,
                     int(s.get("groups", 1)))
    h, w = int(s["in_h"]), int(s["in_w"])
    kh, kw = int(s.get("kernel_h", s.get("kernel", 1))), int(s.get("kernel_w", s.get("kernel", 1)))
    sh, sw = int(s.get("stride_h", s.get("stride", 1))), int(s.get("stride_w", s.get("stride", 1)))
    ph, pw = int(s.get("pad_h", s.get("padding", 0))), int(s.get("pad_w", s.get("padding", 0)))
    oh = int(s.get("out_h", (h + 2 * ph - kh) // sh + 1))
    ow = int(s.get("out_w", (w + 2 * pw - kw) // sw + 1))
    c = int(s["in_channels"])
    groups = c if op == "dwconv2d" else int(s.get("groups", 1))
    return _Geom(op, 1, c, int(s["out_channels"]), h, w, oh, ow, kh, kw, sh, sw, ph, pw, groups)


def shape_from_layer(op: str, in_shape: tuple[int, ...], out_channels: int, *, kernel: tuple[int, ...] = (),
                     stride: tuple[int, ...] | int = 1, padding: tuple[int, ...] | int = 0,
                     groups: int = 1) -> dict[str, int]:
    """The ``shape`` dict of a measurement from PyTorch-style layer parameters (``in_shape``
    with or without the batch dimension; linear: ``[..., in_features]``, batch = product of the
    leading dimensions)."""
    def two(v):
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        return (int(v[0]), int(v[-1]))
    if op == "linear":
        return {"batch": int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1,
                "in_features": int(in_shape[-1]), "out_features": int(out_channels)}
    if op == "conv1d":
        c, L = int(in_shape[-2]), int(in_shape[-1])
        k, st, pd_ = int(kernel[-1]), two(stride)[1], two(padding)[1]
        return {"in_channels": c, "out_channels": int(out_channels), "in_len": L, "kernel": k, "stride": st,
                "padding": pd_, "groups": int(groups), "out_len": (L + 2 * pd_ - k) // st + 1}
    c, h, w = (int(v) for v in in_shape[-3:])
    kh, kw = two(kernel)
    sh, sw = two(stride)
    ph, pw = two(padding)
    return {"in_channels": c, "out_channels": int(out_channels), "in_h": h, "in_w": w, "kernel_h": kh,
            "kernel_w": kw, "stride_h": sh, "stride_w": sw, "pad_h": ph, "pad_w": pw,
            "groups": c if op == "dwconv2d" else int(groups),
            "out_h": (h + 2 * ph - kh) // sh + 1, "out_w": (w + 2 * pw - kw) // sw + 1}


def _valid(n_out: int, stride: int, pad: int, k: int, n_in: int) -> np.ndarray:
    """Valid kernel taps along one axis for each output position."""
    start = np.arange(n_out) * stride - pad
    lo = np.maximum(0, -start)
    hi = np.minimum(k, n_in - start)
    return np.maximum(hi - lo, 0)


def _words_touched(rows: int, cols: int) -> int:
    """Bit-stream words the BITMASK kernel visits over ``rows`` rows of ``cols`` bits."""
    if rows == 0 or cols == 0:
        return 0
    start = np.arange(rows, dtype=np.int64) * cols
    return int(((start + cols - 1) // 32 - start // 32 + 1).sum())


def _matvec_features(fmt: str, dtype: str, R: int, K: int, *, nnz: float, n: int, m: int, bh: int, bw: int,
                     kept_blocks: float, empty_rows: float) -> dict[str, float]:
    """Events of one matrix-vector product over an ``R x K`` matrix in ``fmt`` (one call)."""
    f: dict[str, float] = {"mv_calls": 1.0, "mv_rows": float(R)}
    if fmt == "dense":
        if dtype == "int8":
            # two rows per pass (a last odd row alone); per pass a SMLAD loop over K//4 words and
            # a scalar tail loop over K%4 columns, each costing an entry when it runs at all
            passes = R // 2 + R % 2
            f["dense_pair_k4"] = float((R // 2) * (K // 4))
            f["dense_single_k4"] = float((R % 2) * (K // 4))
            f["dense_pair_tail"] = float((R // 2) * (K % 4))
            f["dense_single_tail"] = float((R % 2) * (K % 4))
            f["dense_pairs"] = float(R // 2)
            f["dense_k4_loops"] = float(passes * (K >= 4))
            f["dense_tail_loops"] = float(passes * (K % 4 > 0))
        else:
            f["dense_macs"] = float(R * K)
    elif fmt == "csr":
        f["kept"] = float(nnz)
        f["empty_rows"] = float(empty_rows)  # rows whose inner loop is skipped
    elif fmt == "bitmask":
        f["kept"] = float(nnz)
        f["mask_words"] = float(_words_touched(R, K))
    elif fmt == "nm":
        stored = R * (K // m) * n
        if n == 2 and m == 4 and K % 8 == 0:
            f["nm_byte_groups"] = float(R * K // 8)
        else:
            bits = max(1, math.ceil(math.log2(m)))
            f["nm_stored"] = float(stored)
            f["nm_groups"] = float(R * (K // m))
            f["nm_refills"] = float(math.ceil(stored * bits / 8))
    elif fmt == "block":
        brows = R // max(bh, 1)
        f["blocks"] = float(kept_blocks)
        f["block_rows"] = float(brows)
        f["empty_rows"] = float(empty_rows)  # block rows without a kept block
        if not (dtype == "int8" and bh == 4 and bw == 4):
            step = 4 if dtype == "int8" and bw % 4 == 0 else 1
            if bh == 4 and (dtype != "int8" or bw % 4 == 0):
                f["block_steps"] = float(kept_blocks * (bw // step))
            else:
                f["block_row_loops"] = float(kept_blocks * bh)
                f["block_elems"] = float(kept_blocks * bh * bw)
    else:
        raise McuModelError(f"unknown format {fmt!r}")
    return f


def layer_features(op: str, fmt: str, dtype: str, shape: Mapping[str, Any], density: float, *,
                   nnz: int | None = None, kept_blocks: int | None = None,
                   empty_rows: int | None = None) -> dict[str, float]:
    """Event counts of one layer on the MCU kernels (the regressors of the instruction model).

    ``density`` (kept / all weights) sets the number of kept weights (csr, bitmask, depthwise) and
    of kept ``bh x bw`` blocks (block: ``density * weights / (bh*bw)``, i.e. whole blocks);
    ``nnz`` / ``kept_blocks`` override those when known exactly, as does ``empty_rows`` (weight
    rows with no kept weight — block rows without a kept block for ``block``; otherwise expected
    as ``rows * (1 - density) ** cols``, i.e. pruning spread evenly over the rows). N:M stores ``n/m`` of the weights
    whatever the density. ``shape`` is a measurement's ``shape`` dict (see
    :func:`shape_from_layer`), including ``n``/``m`` or ``block_h``/``block_w`` where they apply.
    """
    g = _geom(op, shape)
    n, m = int(shape.get("n", 2)), int(shape.get("m", 4))
    bh, bw = int(shape.get("block_h", 4)), int(shape.get("block_w", 4))
    if op == "dwconv2d":
        rows, cols = g.out_c, g.k_h * g.k_w
        total = rows * cols
    elif op == "linear":
        rows, cols = g.out_c, g.in_c
        total = rows * cols
    else:
        rows, cols = g.out_c // g.groups, g.k_h * g.k_w * (g.in_c // g.groups)
        total = rows * cols * g.groups
    kept = float(nnz) if nnz is not None else float(round(density * total))
    kb = float(kept_blocks) if kept_blocks is not None else float(round(density * total / (bh * bw)))
    n_mats = g.groups if op in ("conv1d", "conv2d") else 1
    dens = min(max(density, 0.0), 1.0)
    if empty_rows is not None:
        empty = float(empty_rows)
    elif fmt == "block":
        empty = float((rows // bh) * n_mats * (1.0 - dens) ** (cols // bw))
    else:
        empty = float(rows * n_mats * (1.0 - dens) ** cols)
    if op == "linear":
        mv = _matvec_features(fmt, dtype, rows, cols, nnz=kept, n=n, m=m, bh=bh, bw=bw, kept_blocks=kb,
                              empty_rows=empty)
        f = {f"{fmt}.{k}": v * g.batch for k, v in mv.items()}
        f["linear.const"] = 1.0
        f["linear.batch"] = float(g.batch)
        return f
    P = g.out_h * g.out_w
    vh = _valid(g.out_h, g.s_h, g.p_h, g.k_h, g.in_h)
    vw = _valid(g.out_w, g.s_w, g.p_w, g.k_w, g.in_w)
    vtaps = float(vh.sum() * vw.sum())
    if op == "dwconv2d":
        C, T = g.out_c, g.k_h * g.k_w
        f = {"dw.const": 1.0, "dw.pixels": float(P), "dw.out_rows": float(g.out_h)}
        if fmt == "dense":
            if g.k_h == 3 and g.k_w == 3:
                # interior: the window starts inside the input (kh0 = kw0 = 0) and is whole
                start_h = np.arange(g.out_h) * g.s_h - g.p_h
                start_w = np.arange(g.out_w) * g.s_w - g.p_w
                ih = int(((vh == 3) & (start_h >= 0)).sum())
                iw = int(((vw == 3) & (start_w >= 0)).sum())
            else:
                ih = iw = 0
            interior = ih * iw
            f["dw_dense.int_ch"] = float(interior * C)
            f["dw_dense.int_px"] = float(interior)
            # border pixels: generic loops over their valid rows and taps
            f["dw_dense.bord_px"] = float(P - interior)
            f["dw_dense.bord_ch"] = float((P - interior) * C)
            f["dw_dense.bord_rows"] = float(vh.sum() * g.out_w - 3 * interior) * C
            f["dw_dense.bord_taps"] = float(vtaps - 9 * interior) * C
        else:
            f["dw_sparse.tap_ptrs"] = float(P * T)
            f["dw_sparse.tap_valid"] = vtaps
            f[f"dw_{fmt}.px"] = float(P)
            f[f"dw_{fmt}.ch"] = float(P * C)
            f[f"dw_{fmt}.kept"] = float(P * kept)
            if fmt == "csr":
                f["dw_csr.empty_rows"] = float(P * empty)
            if fmt == "bitmask":
                f["dw_bitmask.mask_words"] = float(P * _words_touched(C, T))
        return f
    G, cig = g.groups, g.in_c // g.groups
    f = {"conv.const": 1.0, "conv.pixels": float(P), "conv.out_rows": float(g.out_h),
         "conv.mv_sites": float(P * G)}
    direct = g.k_h == 1 and g.k_w == 1 and G == 1 and g.p_h == 0 and g.p_w == 0
    if not direct:
        vrows = float(vh.sum() * g.out_w)  # (pixel, kh) pairs inside the input
        f["im.pixels"] = float(P)
        f["im.groups"] = float(P * G)
        f["im.rows"] = float(G * P * g.k_h)
        f["im.rows_invalid"] = G * (P * g.k_h - vrows)
        f["im.copy_calls"] = G * vtaps
        f["im.zero_calls"] = G * (vrows * g.k_w - vtaps)
        f["im.zero_elems"] = G * cig * (P * g.k_h * g.k_w - vtaps)
        if dtype == "int8":
            f["im.copy_words"] = G * vtaps * (cig // 4)
            f["im.copy_tail"] = G * vtaps * (cig % 4)
            f["im.copy_word_loops"] = G * vtaps * float(cig >= 4)
            f["im.copy_tail_loops"] = G * vtaps * float(cig % 4 > 0)
        else:
            f["im.copy_elems"] = G * vtaps * cig
    mv = _matvec_features(fmt, dtype, rows, cols, nnz=kept / G, n=n, m=m, bh=bh, bw=bw,
                          kept_blocks=kb / G, empty_rows=empty / G)
    f.update({f"{fmt}.{k}": v * P * G for k, v in mv.items()})
    return f


def family(op: str) -> str:
    """Model family of an op: ``gemm`` (linear, conv1d, conv2d share the format kernels) or ``dw``."""
    if op in ("linear", "conv1d", "conv2d"):
        return "gemm"
    if op == "dwconv2d":
        return "dw"
    raise McuModelError(f"unknown op {op!r}; valid: linear, conv1d, conv2d, dwconv2d")


# ---------------------------------------------------------------------------------------------
# the model


def _group_key(cpu: str, op: str, dtype: str) -> str:
    return f"{cpu}|{family(op)}|{dtype}"


@dataclass
class GroupFit:
    """Coefficients of one ``(cpu, family, dtype)``: instructions = sum(coef_i * feature_i).

    Features are namespaced events (``csr.kept``, ``im.copy_words``, ``conv.pixels`` ...): the
    format kernels are shared by linear and conv layers, so one fit per family pools them.
    ``seen`` lists the features some fit row had nonzero (a layer needing another one is not
    covered). ``xtx``/``xty``/``yty``/``n`` are the weighted, scaled normal equations of every
    row seen (rows weighted by 1/measured: the fit minimises relative error); ``rel_rms`` is the
    relative RMS residual over them and ``max_rel_err`` the worst row of the last (re)fit batch."""

    features: list[str]
    scale: list[float]
    coef: list[float]
    xtx: list[list[float]]
    xty: list[float]
    yty: float
    n: int
    seen: list[str] = field(default_factory=list)
    rel_rms: float = 0.0
    max_rel_err: float = 0.0

    def predict(self, feats: Mapping[str, float]) -> float:
        return float(sum(c * float(feats.get(k, 0.0)) for k, c in zip(self.features, self.coef)))

    def missing(self, feats: Mapping[str, float]) -> list[str]:
        seen = set(self.seen)
        return sorted(k for k, v in feats.items() if v and k not in seen)

    def solve(self) -> None:
        """Non-negative least squares (every feature is an event costing >= 0 instructions),
        solved from the stored normal equations via their Cholesky factor."""
        A = np.asarray(self.xtx, dtype=float)
        b = np.asarray(self.xty, dtype=float)
        k = A.shape[0]
        ridge = 1e-10 * max(1e-30, float(np.trace(A)) / max(k, 1))
        L = np.linalg.cholesky(A + ridge * np.eye(k))
        z = np.linalg.solve(L, b)
        beta_s, _ = nnls(L.T, z, maxiter=100 * k)
        self.coef = [float(bs / sc) for bs, sc in zip(beta_s, self.scale)]
        rss = self.yty - 2 * beta_s @ b + beta_s @ A @ beta_s
        self.rel_rms = float(math.sqrt(max(rss, 0.0) / max(self.n, 1)))


def _design(rows: pd.DataFrame, features: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    feats = [_row_features(r) for _, r in rows.iterrows()]
    names = list(features) if features is not None else sorted({k for f in feats for k in f})
    X = np.array([[f.get(k, 0.0) for k in names] for f in feats], dtype=float).reshape(len(feats), len(names))
    y = rows["instructions"].to_numpy(dtype=float)
    return names, X, y


def _row_shape(r: pd.Series) -> dict[str, Any]:
    if isinstance(r.get("shape"), dict):
        return dict(r["shape"])
    return {k[6:]: v for k, v in r.items() if isinstance(k, str) and k.startswith("shape.") and pd.notna(v)}


def _row_features(r: pd.Series) -> dict[str, float]:
    shape = _row_shape(r)

    def opt(col: str) -> int | None:
        v = r.get(col)
        return int(v) if v is not None and pd.notna(v) else None

    return layer_features(str(r["op"]), str(r["fmt"]), str(r["dtype"]), shape, float(r["density"]),
                          nnz=opt("stats.nnz"), kept_blocks=opt("stats.kept_blocks"),
                          empty_rows=opt("stats.empty_rows"))


@dataclass
class McuInstructionModel:
    """Instruction model per ``(cpu, family, dtype)`` (families: ``gemm`` = linear/conv1d/conv2d,
    ``dw`` = dwconv2d). Build with :func:`fit`, refine with :meth:`refit`, persist with
    :meth:`save` / :func:`load`. Predictions are instructions; see :meth:`latency_s`."""

    groups: dict[str, GroupFit] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- prediction ---------------------------------------------------------------------------
    def covers(self, cpu: str, op: str, fmt: str, dtype: str, shape: Mapping[str, Any] | None = None,
               density: float = 0.5) -> bool:
        """True when the model has coefficients for every event of such a layer."""
        try:
            self._checked(cpu, op, fmt, dtype, shape, density)
            return True
        except McuModelError:
            return False

    def _checked(self, cpu: str, op: str, fmt: str, dtype: str, shape: Mapping[str, Any] | None,
                 density: float, **kw: Any) -> tuple[GroupFit, dict[str, float]]:
        key = _group_key(cpu, op, dtype)
        if key not in self.groups:
            have = ", ".join(sorted(self.groups)) or "none"
            raise McuModelError(f"no MCU instruction model for {key!r}; fitted groups: {have}. Measure "
                                "such layers (targets.mcu.measure_layer) and refit")
        g = self.groups[key]
        if shape is None:
            if not any(k.startswith(f"{fmt}.") or k.startswith(f"dw_{fmt}.") for k in g.seen):
                raise McuModelError(f"the {key} model was fitted without {fmt!r} layers; measure some and refit")
            return g, {}
        feats = layer_features(op, fmt, dtype, shape, density, **kw)
        miss = g.missing(feats)
        if miss:
            raise McuModelError(f"the {key} model has no coefficients for {miss} ({op} {fmt}); measure "
                                "such layers (targets.mcu.measure_layer) and refit")
        return g, feats

    def predict(self, op: str, fmt: str, dtype: str, shape: Mapping[str, Any], density: float = 1.0, *,
                cpu: str = "cortex-m4", nnz: int | None = None, kept_blocks: int | None = None,
                empty_rows: int | None = None) -> float:
        """Predicted executed instructions of one layer (see :func:`layer_features` for the
        arguments). Raises :class:`McuModelError` when the model does not cover the layer."""
        g, feats = self._checked(cpu, op, fmt, dtype, shape, density, nnz=nnz, kept_blocks=kept_blocks,
                                 empty_rows=empty_rows)
        return g.predict(feats)

    def predict_with_std(self, op: str, fmt: str, dtype: str, shape: Mapping[str, Any], density: float = 1.0,
                         *, cpu: str = "cortex-m4", **kw: Any) -> tuple[float, float]:
        """``(instructions, 1σ)`` with σ = the group's relative RMS error on its fit rows × prediction."""
        pred = self.predict(op, fmt, dtype, shape, density, cpu=cpu, **kw)
        return pred, pred * self.groups[_group_key(cpu, op, dtype)].rel_rms

    def predict_df(self, df: pd.DataFrame, *, exact_counts: bool = False) -> np.ndarray:
        """Predictions for measurement rows (columns as :meth:`McuLayerMeasurement.to_row`).
        ``exact_counts`` uses the rows' recorded nnz/blocks/empty rows instead of their density."""
        out = []
        for _, r in df.iterrows():
            if exact_counts:
                g = self.groups[_group_key(str(r["cpu"]), str(r["op"]), str(r["dtype"]))]
                out.append(g.predict(_row_features(r)))
            else:
                out.append(self.predict(str(r["op"]), str(r["fmt"]), str(r["dtype"]), _row_shape(r),
                                        float(r["density"]), cpu=str(r["cpu"])))
        return np.asarray(out, dtype=float)

    @staticmethod
    def latency_s(instructions: float, *, clock_hz: float, cpi: float) -> float:
        """``instructions * cpi / clock_hz`` — CPI is an assumption (QEMU has no timing model);
        take it from the target spec's ``[compute] cpi`` and report it with the result."""
        return float(instructions) * float(cpi) / float(clock_hz)

    # -- fitting ------------------------------------------------------------------------------
    def refit(self, df: pd.DataFrame, *, source: str = "") -> McuInstructionModel:
        """Add measurement rows (successful ones: ``error`` empty, ``instructions`` > 0) to the
        normal equations of their groups and re-solve; new groups and new features are added
        (earlier rows had those features at 0). Returns ``self``."""
        ok = _ok_rows(df)
        keys = [_group_key(str(c), str(o), str(d)) for c, o, d in zip(ok["cpu"], ok["op"], ok["dtype"])]
        for key, rows in ok.groupby(np.asarray(keys), sort=True):
            key = str(key)
            old = self.groups.get(key)
            names, X, y = _design(rows, None)
            Z = X / y[:, None]  # relative-error weighting
            zmax = np.abs(Z).max(axis=0)
            new_scale = np.where(zmax > 0, zmax, 1.0)
            if old is None:
                feats = names
                scale = new_scale
                xtx = np.zeros((len(feats), len(feats)))
                xty = np.zeros(len(feats))
                yty, n0, seen = 0.0, 0, set()
            else:
                feats = list(old.features) + [k for k in names if k not in old.features]
                k_old = len(old.features)
                scale = np.concatenate([np.asarray(old.scale),
                                        [new_scale[names.index(k)] for k in feats[k_old:]]])
                xtx = np.zeros((len(feats), len(feats)))
                xtx[:k_old, :k_old] = np.asarray(old.xtx)
                xty = np.zeros(len(feats))
                xty[:k_old] = np.asarray(old.xty)
                yty, n0, seen = old.yty, old.n, set(old.seen)
            cols = [names.index(k) if k in names else -1 for k in feats]
            Zf = np.stack([Z[:, c] if c >= 0 else np.zeros(len(y)) for c in cols], axis=1) / scale
            ones = np.ones(len(y))
            xtx += Zf.T @ Zf
            xty += Zf.T @ ones
            yty += float(len(y))
            seen |= {k for k in names if np.any(X[:, names.index(k)] != 0)}
            gf = GroupFit(feats, scale.tolist(), [0.0] * len(feats), xtx.tolist(), xty.tolist(), yty,
                          n0 + len(y), sorted(seen))
            gf.solve()
            pred = Zf * scale @ np.asarray(gf.coef)  # relative predictions
            gf.max_rel_err = float(np.max(np.abs(pred - 1.0))) if len(y) else 0.0
            self.groups[key] = gf
        prov = self.provenance
        prov["rows"] = int(prov.get("rows", 0)) + len(ok)
        prov["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for col in ("version.gcc", "version.qemu", "version.python"):
            if col in ok.columns and len(ok):
                k = col.split(".")[1]
                prov[k] = sorted(set(prov.get(k, [])) | {str(v) for v in ok[col].dropna()})
        prov.setdefault("history", []).append({"rows": len(ok), "date": prov["date"], "source": source})
        return self

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": KIND,
                "latency_note": "instructions only; latency_s = instructions * cpi / clock_hz with an "
                                "assumed CPI (QEMU has no timing model)",
                "provenance": self.provenance,
                "groups": {k: vars(g) for k, g in sorted(self.groups.items())}}

    def save(self, path: str | Path) -> Path:
        """Write versioned JSON atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<dict>") -> McuInstructionModel:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise McuModelError(f"{where}: schema_version {data.get('schema_version')!r} is not "
                                f"{SCHEMA_VERSION}; refit with costmodels.mcu.fit(rows) and save again")
        if data.get("kind") != KIND:
            raise McuModelError(f"{where}: kind {data.get('kind')!r} is not {KIND!r}")
        groups = {}
        for key, g in data.get("groups", {}).items():
            try:
                gf = GroupFit(**g)
            except TypeError as exc:
                raise McuModelError(f"{where}: group {key!r} is malformed ({exc})") from None
            if not (len(gf.features) == len(gf.coef) == len(gf.scale) == len(gf.xty) == len(gf.xtx)):
                raise McuModelError(f"{where}: group {key!r} has inconsistent lengths")
            groups[key] = gf
        return cls(groups, dict(data.get("provenance", {})))

    @classmethod
    def load(cls, path: str | Path) -> McuInstructionModel:
        """Read a file written by :meth:`save`; :class:`McuModelError` says what is wrong."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise McuModelError(f"MCU model file {path} does not exist; fit one with costmodels.mcu.fit") from None
        except json.JSONDecodeError as exc:
            raise McuModelError(f"MCU model file {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data, where=str(path))


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["instructions"].notna()]
    if "error" in ok.columns:
        ok = ok[ok["error"].isna() | (ok["error"].astype(str) == "")]
    return ok[ok["instructions"].astype(float) > 0]


def fit(df: pd.DataFrame, *, source: str = "") -> McuInstructionModel:
    """Fit a fresh model on measurement rows (``McuLayerMeasurement.to_row()`` dicts in a
    DataFrame, or the CSVs under ``costmodels/data``)."""
    return McuInstructionModel().refit(df, source=source)


def load(path: str | Path = DEFAULT_FILE) -> McuInstructionModel:
    """Read a saved model (default: the coefficients shipped in ``costmodels/data``)."""
    return McuInstructionModel.load(path)


def default_model() -> McuInstructionModel:
    """The shipped model, fitted on ``costmodels/data/mcu_counts_cortex_m4.csv`` and ``_m7.csv``."""
    return load(DEFAULT_FILE)
