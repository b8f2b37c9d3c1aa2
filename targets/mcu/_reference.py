"""Host references for the MCU kernels: int8 quantisation, the kernels' exact requantisation and
PyTorch/numpy layer outputs to compare the emulator against."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["quantize_symmetric", "choose_requant", "requantize", "reference_acc", "reference_fp32",
           "requant_from_real"]


def quantize_symmetric(a: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation: ``q = round(a / s)`` with ``s = max|a| / 127`` per tensor
    (``axis=None``) or per slice along ``axis``. Returns ``(q int8, s float64)``; an all-zero
    slice gets scale 1."""
    a = np.asarray(a, dtype=np.float64)
    if axis is None:
        mx = np.abs(a).max(initial=0.0)
        s = np.array(mx / 127.0 if mx > 0 else 1.0)
    else:
        red = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
        mx = np.abs(a).max(axis=red, keepdims=True, initial=0.0)
        s = np.where(mx > 0, mx / 127.0, 1.0)
    q = np.clip(np.rint(a / s), -127, 127).astype(np.int8)
    return q, s


def choose_requant(acc: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mult int32, shift int8)`` mapping each channel's largest ``|acc|`` to about
    127 (scale capped at 0.5, the largest the kernel's SMMULR form can express).

    The effective scale is ``mult · 2^-(32 + shift)`` with ``mult < 2^31`` and ``shift`` in 0..31.
    """
    red = tuple(i for i in range(acc.ndim) if i != axis % acc.ndim)
    mx = np.abs(acc.astype(np.float64)).max(axis=red, initial=0.0)
    scale = np.where(mx > 0, 127.0 / np.maximum(mx, 1.0), 0.5)
    scale = np.minimum(scale, 0.5)
    # largest shift (0..31) that keeps mult = scale * 2^(32+shift) below 2^31
    shift = np.clip(np.floor(np.log2((2.0 ** 31 - 1) / scale)) - 32, 0, 31).astype(np.int64)
    mult = np.rint(scale * np.exp2(32 + shift))
    mult = np.clip(mult, 1, 2 ** 31 - 1).astype(np.int32)
    return mult, shift.astype(np.int8)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, axis: int, out_zp: int = 0,
               act_min: int = -128, act_max: int = 127) -> np.ndarray:
    """The kernels' requantisation, bit-exact: ``hi = (acc·mult + 2^31) >> 32`` (SMMULR), then a
    rounding right shift, the zero point and the clamp. ``axis`` is the channel axis of ``acc``."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    a = acc.astype(np.int64)
    mu = mult.astype(np.int64).reshape(shape)
    sh = shift.astype(np.int64).reshape(shape)
    hi = (a * mu + (1 << 31)) >> 32
    r = ((hi + ((1 << sh) >> 1)) >> sh) + out_zp
    return np.clip(r, act_min, act_max).astype(np.int8)


def _conv_args(op: str, stride: tuple[int, int], padding: tuple[int, int]) -> dict:
    if op == "conv1d":
        return {"stride": stride[1], "padding": padding[1]}
    return {"stride": stride, "padding": padding}


def _im2col(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """``x`` ``[C, H, W]`` -> windows ``[OH, OW, C, kh, kw]`` (zero padding)."""
    xp = np.pad(x, ((0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # [C, H', W', kh, kw]
    win = win[:, ::stride[0], ::stride[1]]
    return win.transpose(1, 2, 0, 3, 4)


def _conv_matmul(w: np.ndarray, x: np.ndarray, *, stride: tuple[int, int], padding: tuple[int, int],
                 groups: int) -> np.ndarray:
    """Grouped 2-D convolution as float64 matmuls: ``w`` ``[Co, Ci/g, kh, kw]``, ``x`` ``[Ci, H, W]``
    -> ``[Co, OH, OW]``."""
    co, cig, kh, kw = w.shape
    cols = _im2col(x, kh, kw, stride, padding)  # [OH, OW, Ci, kh, kw]
    oh, ow = cols.shape[:2]
    cog = co // groups
    out = np.empty((co, oh, ow), dtype=np.float64)
    for gi in range(groups):
        c = cols[:, :, gi * cig:(gi + 1) * cig].reshape(oh * ow, -1)
        wm = w[gi * cog:(gi + 1) * cog].reshape(cog, -1)
        out[gi * cog:(gi + 1) * cog] = (wm @ c.T).reshape(cog, oh, ow)
    return out


def reference_acc(op: str, w: np.ndarray, x: np.ndarray, bias: np.ndarray, *, stride: tuple[int, int],
                  padding: tuple[int, int], groups: int) -> np.ndarray:
    """Exact int64 accumulators (products + bias) in PyTorch layout: linear ``[B, N]``, conv
    ``[Co, (OH,) OW]``. Integer math in float64 is exact for these ranges (< 2^53); numpy
    matmuls, not torch: torch's float64 grouped convolutions take ~1 s per call."""
    wf = w.astype(np.float64)
    xf = x.astype(np.float64)
    bf = bias.astype(np.float64)
    if op == "linear":
        out = xf @ wf.T + bf
    elif op == "conv1d":
        out = _conv_matmul(wf[:, :, None, :], xf[:, None, :], stride=(1, stride[1]), padding=(0, padding[1]),
                           groups=groups)[:, 0, :] + bf[:, None]
    else:
        out = _conv_matmul(wf, xf, stride=stride, padding=padding, groups=groups) + bf[:, None, None]
    return np.rint(out).astype(np.int64)


def reference_fp32(op: str, w: np.ndarray, x: np.ndarray, bias: np.ndarray, *, stride: tuple[int, int],
                   padding: tuple[int, int], groups: int) -> np.ndarray:
    """float32 PyTorch output in PyTorch layout."""
    tw = torch.from_numpy(w.astype(np.float32))
    tx = torch.from_numpy(x.astype(np.float32))
    tb = torch.from_numpy(bias.astype(np.float32))
    if op == "linear":
        out = F.linear(tx, tw, tb)
    elif op == "conv1d":
        out = F.conv1d(tx[None], tw, tb, groups=groups, **_conv_args(op, stride, padding))[0]
    else:
        out = F.conv2d(tx[None], tw, tb, groups=groups, **_conv_args(op, stride, padding))[0]
    return out.numpy()


def requant_from_real(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mult int32, shift int8)`` with ``mult · 2^-(32+shift)`` ≈ ``multiplier`` (per channel).

    The kernels' SMMULR form covers multipliers in (0, 0.5]; larger ones raise ``ValueError``
    (raise the output scale). Zero maps to ``mult = 0``."""
    mr = np.asarray(multiplier, dtype=np.float64).reshape(-1)
    if np.any(mr > 0.5 + 1e-12) or np.any(mr < 0):
        raise ValueError(f"requantisation multipliers must lie in [0, 0.5], got max {mr.max():.4g}")
    safe = np.where(mr > 0, mr, 0.5)
    shift = np.clip(np.floor(np.log2((2.0 ** 31 - 1) / safe)) - 32, 0, 31).astype(np.int64)
    mult = np.clip(np.rint(safe * np.exp2(32 + shift)), 0, 2 ** 31 - 1)
    mult = np.where(mr > 0, mult, 0).astype(np.int32)
    return mult, shift.astype(np.int8)
