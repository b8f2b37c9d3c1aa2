"""Measuring one layer in the emulator: quantise, pack, generate the harness, build, run, check."""
from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import _toolchain as tc
from ._formats import FORMATS
from ._layers import (DTYPES, OPS, AsmData, LayerGeom, as_conv2d_depthwise, conv_initializer, geometry,
                      mat_initializer, pack_layer, scratch_bytes, weight_matrices)
from ._reference import choose_requant, quantize_symmetric, reference_acc, reference_fp32, requantize

__all__ = ["McuLayerMeasurement", "measure_layer", "PreparedLayer", "prepare_layer", "IMPLS"]

log = logging.getLogger(__name__)

IMPLS = ("c", "tvm")
FP32_TOL = 1e-4


@dataclass(frozen=True)
class McuLayerMeasurement:
    """One layer measured in QEMU. A failed build or run is a record with ``error`` set.

    ``instructions``: instructions executed by the kernel call alone (exact, from SysTick under
    ``-icount``), not cycles. ``flash_bytes``: bytes of the weight storage in ``fmt`` as linked
    (sizes of the ``hw_wt_*`` symbols in the ELF; bias and requantisation parameters excluded,
    see ``stats``). ``max_abs_err``: largest absolute difference to the host reference (int8:
    in output quanta, must be 0; fp32: absolute, must be <= 1e-4 x max(1, max|reference|)).
    ``density``: nonzero weights / all weights.
    ``compile_s``: packing, code generation, compiling and linking; ``run_s``: the QEMU process.
    """

    instructions: int | None
    board: str
    cpu: str
    op: str
    fmt: str
    dtype: str
    shape: dict
    density: float
    flash_bytes: int
    max_abs_err: float | None
    compile_s: float
    run_s: float
    versions: dict
    date: str
    error: str | None
    impl: str = "c"
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.instructions is not None

    def to_row(self) -> dict:
        """Flat dict for a CSV row (shape and stats keys are prefixed ``shape.`` / ``stats.``)."""
        row = {"instructions": self.instructions, "board": self.board, "cpu": self.cpu, "op": self.op,
               "fmt": self.fmt, "dtype": self.dtype, "impl": self.impl, "density": self.density,
               "flash_bytes": self.flash_bytes, "max_abs_err": self.max_abs_err,
               "compile_s": round(self.compile_s, 4), "run_s": round(self.run_s, 4),
               "date": self.date, "error": self.error}
        row.update({f"shape.{k}": v for k, v in self.shape.items()})
        row.update({f"stats.{k}": v for k, v in self.stats.items()})
        row.update({f"version.{k}": v for k, v in self.versions.items()})
        return row


@dataclass(frozen=True)
class PreparedLayer:
    """A layer ready for a kernel: quantised/cast tensors in PyTorch layout and the reference."""

    geom: LayerGeom
    dtype: str
    w: np.ndarray          # int8 or float32, PyTorch layout
    x: np.ndarray          # int8 or float32, PyTorch layout (linear: [B, K])
    bias: np.ndarray       # int32 or float32 [out_c]
    mult: np.ndarray       # int32 [out_c] (int8 only)
    shift: np.ndarray      # int8 [out_c] (int8 only)
    reference: np.ndarray  # expected output, PyTorch layout (linear: [B, N])


def _is_int_valued(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer)


def prepare_layer(op: str, weight: np.ndarray, x: np.ndarray, *, dtype: str, bias: np.ndarray | None,
                  stride=1, padding=0, groups: int = 1) -> PreparedLayer:
    """Quantise (int8: integer arrays are used as they are, float ones symmetrically — weights per
    output channel, input per tensor, bias to ``int32`` at the product scale) or cast (fp32), and
    compute the reference output. Raises ``ValueError`` for inconsistent shapes."""
    weight = np.asarray(weight)
    x = np.asarray(x)
    g = geometry(op, weight.shape, x.shape, stride=stride, padding=padding, groups=groups)
    xs = x.reshape(g.batch, g.in_c) if op == "linear" else x.reshape(x.shape[-3:] if op != "conv1d" else x.shape[-2:])
    strides = (g.stride_h, g.stride_w)
    pads = (g.pad_h, g.pad_w)
    if dtype == "fp32":
        w = weight.astype(np.float32)
        xf = xs.astype(np.float32)
        b = np.zeros(g.out_c, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(g.out_c)
        ref = reference_fp32(op, w, xf, b, stride=strides, padding=pads, groups=g.groups)
        empty = np.zeros(0, np.int32)
        return PreparedLayer(g, dtype, w, xf, b, empty, empty.astype(np.int8), ref)
    if dtype != "int8":
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if _is_int_valued(weight):
        if weight.min(initial=0) < -128 or weight.max(initial=0) > 127:
            raise ValueError("integer weights must lie in -128..127 for int8")
        wq, ws = weight.astype(np.int8), np.ones(g.out_c)
    else:
        wq, ws = quantize_symmetric(weight, axis=0)
        ws = ws.reshape(-1)
    if _is_int_valued(xs):
        if xs.min(initial=0) < -128 or xs.max(initial=0) > 127:
            raise ValueError("integer inputs must lie in -128..127 for int8")
        xq, xsc = xs.astype(np.int8), 1.0
    else:
        xq, xsc_arr = quantize_symmetric(xs)
        xsc = float(xsc_arr)
    if bias is None:
        bq = np.zeros(g.out_c, np.int32)
    else:
        bias = np.asarray(bias).reshape(g.out_c)
        bq = bias.astype(np.int32) if _is_int_valued(bias) else np.rint(bias / (xsc * ws)).astype(np.int32)
    acc = reference_acc(op, wq, xq, bq, stride=strides, padding=pads, groups=g.groups)
    axis = 1 if op == "linear" else 0
    mult, shift = choose_requant(acc, axis=axis)
    ref = requantize(acc, mult, shift, axis=axis)
    return PreparedLayer(g, dtype, wq, xq, bq, mult, shift, ref)


def _to_kernel_input(p: PreparedLayer) -> np.ndarray:
    g = p.geom
    if g.op == "linear":
        return p.x.reshape(-1)
    if g.op == "conv1d":
        return p.x.reshape(g.in_c, g.in_w).T.reshape(-1)
    return p.x.reshape(g.in_c, g.in_h, g.in_w).transpose(1, 2, 0).reshape(-1)


def _from_kernel_output(p: PreparedLayer, flat: np.ndarray) -> np.ndarray:
    g = p.geom
    if g.op == "linear":
        return flat.reshape(g.batch, g.out_c)
    if g.op == "conv1d":
        return flat.reshape(g.out_w, g.out_c).T
    return flat.reshape(g.out_h, g.out_w, g.out_c).transpose(2, 0, 1)


def _elf_symbol_sizes(elf: Path) -> dict[str, int]:
    """``{symbol: st_size}`` of the defined symbols of a little-endian ELF32 file (what
    ``arm-none-eabi-nm -S`` prints, read directly: no subprocess)."""
    import struct

    data = elf.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise RuntimeError(f"{elf} is not a little-endian ELF32 file")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    sections = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
    sizes: dict[str, int] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        str_off = sections[sh[6]][4]
        for j in range(sh[5] // 16):
            name_off, _value, size, _info, _other, shndx = struct.unpack_from("<IIIBBH", data, sh[4] + j * 16)
            if shndx == 0 or name_off == 0:
                continue
            end = data.index(b"\0", str_off + name_off)
            sizes[data[str_off + name_off:end].decode()] = size
    return sizes


def _write_c_harness(p: PreparedLayer, packs, d: Path) -> tuple[list[Path], int]:
    """hw_main.c + hw_data.S for the project's kernels; returns (sources, output bytes)."""
    g = p.geom
    s8 = p.dtype == "int8"
    T = "int8_t" if s8 else "float"
    sfx = "s8" if s8 else "f32"
    data = AsmData(d)
    mats = []
    for gi, pk in enumerate(packs):
        syms = {role: data.add(f"hw_wt_g{gi}_{role}", arr) for role, arr in pk.arrays.items()}
        mats.append(mat_initializer(pk, syms))
    data.add("hw_bias", p.bias)
    if s8:
        data.add("hw_qmult", p.mult)
        data.add("hw_qshift", p.shift)
    data.add("hw_x", _to_kernel_input(p), writable=True)
    out_elems = g.out_elems
    scratch = scratch_bytes(g, p.dtype)
    epi = ("{.mult = hw_qmult, .shift = hw_qshift, .out_zp = 0, .act_min = -128, .act_max = 127}"
           if s8 else "{.f_min = -INFINITY, .f_max = INFINITY}")
    if g.op == "linear":
        call = f"hw_linear_{sfx}(&hw_mats[0], hw_bias, &hw_epi, hw_x, hw_y, {g.batch}u)"
    elif g.op == "dwconv2d":
        call = f"hw_dwconv2d_{sfx}(&hw_conv, &hw_mats[0], hw_bias, &hw_epi, hw_x, hw_y, hw_scratch)"
    else:
        call = f"hw_conv2d_{sfx}(&hw_conv, hw_mats, hw_bias, &hw_epi, hw_x, hw_y, ({T} *)hw_scratch)"
    conv = f"static const hw_conv_t hw_conv = {conv_initializer(g)};\n" if g.is_conv else ""
    src = f"""/* generated by targets.mcu.measure_layer */
#include <math.h>
#include <stdint.h>
#include "hw_kernels.h"
#include "hw_harness.h"
{data.declarations()}
static {T} hw_y[{out_elems}];
static uint8_t hw_scratch[{scratch}] __attribute__((aligned(8)));
static const hw_mat_t hw_mats[{len(mats)}] = {{
    {(','+chr(10)+'    ').join(mats)}
}};
static const hw_epi_t hw_epi = {epi};
{conv}
int main(void)
{{
    HW_MEASURE_AND_REPORT({call}, hw_y, sizeof hw_y);
    return 0;
}}
"""
    main = d / "hw_main.c"
    main.write_text(src)
    asm = data.write()
    return [main, asm], out_elems * (1 if s8 else 4)


def _build(sources: list[Path], cpu: str, d: Path, extra_objs: list[Path] | None = None,
           extra_flags: list[str] | None = None) -> Path:
    cfg = tc.cpu_config(cpu)
    elf = d / "hw_layer.elf"
    cmd = [tc.GCC, *cfg.cflags, *tc.COMMON_CFLAGS, "-I", str(tc.KERNEL_DIR), *(extra_flags or []),
           *map(str, sources), *map(str, tc.kernel_objects(cpu)), *map(str, extra_objs or []),
           *tc.link_flags(), "-o", str(elf)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        msg = "\n".join(res.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"build failed: {msg}")
    return elf


def measure_layer(op: str, weight: np.ndarray, x: np.ndarray, *, fmt: str = "dense", dtype: str = "int8",
                  cpu: str = "cortex-m4", n: int = 2, m: int = 4, block: tuple[int, int] = (4, 4),
                  stride=1, padding=0, groups: int = 1, bias: np.ndarray | None = None,
                  work_dir: str | Path | None = None, impl: str = "c", timeout_s: float = 60.0,
                  ) -> McuLayerMeasurement:
    """Build one layer for ``cpu`` with the kernel for ``fmt``, run it in QEMU and return the
    executed-instruction count, the weight flash bytes and the error against the host reference.

    ``op``: ``linear`` (weight ``[out, in]``, x ``[in]`` or ``[batch, in]``), ``conv1d``
    (``[out, in/groups, k]``, x ``[C, L]``), ``conv2d`` (``[out, in/groups, kh, kw]``, x
    ``[C, H, W]``), ``dwconv2d`` (``[C, 1, kh, kw]``; a ``[C, 1, k]`` weight with a ``[C, L]`` input
    is a depthwise conv1d, run as a height-1 conv2d). ``fmt``: ``dense``, ``csr``, ``bitmask``,
    ``nm`` (``n``:``m`` along the reduction, which for convs runs over input channels) or
    ``block`` (``block`` = (bh, bw) over output × reduction). Zeros in ``weight`` are the pruned
    weights. ``impl="tvm"`` measures TVM's C code generator instead (dense only).

    Raises ``ValueError`` only for unknown names (op, fmt, dtype, cpu, impl); everything that fails
    later — weights not fitting the format, a compiler or emulator error, a wrong output — comes
    back as a record with ``error`` set.
    """
    for name, val, valid in (("op", op, OPS), ("fmt", fmt, FORMATS), ("dtype", dtype, DTYPES),
                             ("impl", impl, IMPLS)):
        if val not in valid:
            raise ValueError(f"unknown {name} {val!r}; valid: {', '.join(valid)}")
    cfg = tc.cpu_config(cpu)
    versions = {**tc.tool_versions(), "cflags": " ".join(cfg.cflags + tc.COMMON_CFLAGS),
                "icount_shift": str(tc.ICOUNT_SHIFT)}
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    w_arr = np.asarray(weight)
    if op == "dwconv2d" and w_arr.ndim == 3:  # a depthwise conv1d: run it as a height-1 conv2d
        w_arr, x, stride, padding = as_conv2d_depthwise(w_arr, x, stride, padding)
    density = float(np.count_nonzero(w_arr)) / max(1, w_arr.size)
    shape: dict = {}
    stats: dict = {}

    def record(instructions=None, flash=0, err_val=None, compile_s=0.0, run_s=0.0, error=None):
        return McuLayerMeasurement(instructions, cfg.board, cpu, op, fmt, dtype, shape, density, flash,
                                   err_val, compile_s, run_s, versions, date, error, impl, stats)

    missing = tc.missing_tools()
    if missing:
        return record(error=f"missing tools {missing}: {tc.INSTALL_HINT}")
    t0 = time.perf_counter()
    tmp = None
    try:
        p = prepare_layer(op, w_arr, np.asarray(x), dtype=dtype, bias=bias, stride=stride,
                          padding=padding, groups=groups)
        shape.update(p.geom.shape_dict())
        if fmt == "nm":
            shape.update(n=n, m=m)
        if fmt == "block":
            shape.update(block_h=int(block[0]), block_w=int(block[1]))
        if impl == "tvm" and fmt != "dense":
            return record(error=f"impl='tvm' measures TVM's dense C code only, not fmt={fmt!r}",
                          compile_s=time.perf_counter() - t0)
        packs = pack_layer(p.geom, p.w, fmt, n=n, m=m, block=block)
        stats.update(macs=p.geom.macs, weights=int(p.w.size), nnz=int(np.count_nonzero(p.w)),
                     stored=sum(pk.stats["stored"] for pk in packs),
                     weight_bytes=sum(pk.nbytes for pk in packs),
                     bias_bytes=int(p.bias.nbytes), quant_bytes=int(p.mult.nbytes + p.shift.nbytes))
        if fmt == "block":  # block rows without a kept block
            stats["empty_rows"] = int(sum(int((np.diff(pk.arrays["ptr"].astype(np.int64)) == 0).sum())
                                          for pk in packs))
        else:  # weight rows without a nonzero
            stats["empty_rows"] = int(sum(int((~(mat != 0).any(axis=1)).sum())
                                          for mat in weight_matrices(p.geom, p.w)))
        if fmt == "block":
            stats["kept_blocks"] = sum(pk.stats["kept_blocks"] for pk in packs)
        if work_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="hwsearch-mcu-")
            d = Path(tmp.name)
        else:
            d = Path(work_dir)
            d.mkdir(parents=True, exist_ok=True)
        if impl == "tvm":
            from ._tvm import write_tvm_harness
            sources, out_bytes, flags = write_tvm_harness(p, d)
        else:
            sources, out_bytes = _write_c_harness(p, packs, d)
            flags = []
        elf = _build(sources, cpu, d, extra_flags=flags)
        sizes = _elf_symbol_sizes(elf)
        flash = sum(v for k, v in sizes.items() if k.startswith("hw_wt_"))
        compile_s = time.perf_counter() - t0
        qr = tc.run_qemu(elf, cpu, timeout_s=timeout_s)
        if qr.error:
            return record(qr.instructions, flash, None, compile_s, qr.run_s, qr.error)
        got = np.frombuffer(qr.output, dtype=np.int8 if dtype == "int8" else np.float32)
        if got.size != p.geom.out_elems:
            return record(qr.instructions, flash, None, compile_s, qr.run_s,
                          f"output has {got.size} elements, expected {p.geom.out_elems}")
        out = _from_kernel_output(p, got) if impl == "c" else got.reshape(p.reference.shape)
        err_val = float(np.abs(out.astype(np.float64) - p.reference.astype(np.float64)).max(initial=0.0))
        # fp32: 1e-4 absolute for outputs of magnitude <= 1, relative beyond (summation order differs)
        tol = 0.0 if dtype == "int8" else FP32_TOL * max(1.0, float(np.abs(p.reference).max(initial=0.0)))
        error = None if err_val <= tol else f"output differs from the reference by {err_val:g} (> {tol:g})"
        return record(qr.instructions, flash, err_val, compile_s, qr.run_s, error)
    except (ValueError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.debug("measure_layer failed", exc_info=True)
        return record(error=f"{type(exc).__name__}: {exc}", compile_s=time.perf_counter() - t0)
    finally:
        if tmp is not None:
            tmp.cleanup()
