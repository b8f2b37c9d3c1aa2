"""TVM's C code generator as an MCU kernel source (``impl="tvm"``, dense layers only).

TVM 0.27 has no C runtime and no AOT executor, so the generated code is called directly: the
layer is a TE compute (TOPI conv/dense + the kernels' requantisation) turned into a PrimFunc,
compiled with ``tvm.compile(..., target={"kind": "c"})`` and exported as C. The entry function
keeps TVM's packed calling convention (``int32_t __tvm_ffi_<name>(void*, TVMFFIAny*, int32_t,
TVMFFIAny*)``); our glue builds the ``DLTensor``/``TVMFFIAny`` arguments in C, provides
``TVMBackendAllocWorkspace`` (a bump allocator in a static arena) for intermediate buffers and
an error hook, and compiles it all with ``arm-none-eabi-gcc`` against the headers shipped in the
``tvm``/``tvm_ffi`` wheels. Argument checks are compiled out (``tirx.disable_assert``), as a
deployment would. Schedules are TVM's defaults (untuned): the counts say what plain TVM C costs.
Layout is PyTorch's (NCHW / NCW / [batch, features]).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ._layers import AsmData

log = logging.getLogger(__name__)

__all__ = ["tvm_layer_source", "write_tvm_harness", "tvm_include_dirs"]

WORKSPACE_BYTES_MIN = 4096


def tvm_include_dirs() -> list[str]:
    """Header directories of the installed ``tvm`` and ``tvm_ffi`` wheels."""
    import tvm
    import tvm_ffi

    return [os.path.join(os.path.dirname(tvm.__file__), "include"),
            os.path.join(os.path.dirname(tvm_ffi.__file__), "include")]


def _te_layer(p):
    """TE placeholders and output for the prepared layer (see ``_measure.PreparedLayer``)."""
    from tvm import te, topi

    g = p.geom
    s8 = p.dtype == "int8"
    dt = "int8" if s8 else "float32"
    acc_dt = "int32" if s8 else "float32"
    W = te.placeholder(p.w.shape, dtype=dt, name="w")
    B = te.placeholder((g.out_c,), dtype=acc_dt, name="bias")
    if g.op == "linear":
        X = te.placeholder((g.batch, g.in_c), dtype=dt, name="x")
        k = te.reduce_axis((0, g.in_c), name="k")
        acc = te.compute((g.batch, g.out_c),
                         lambda b, n: te.sum(X[b, k].astype(acc_dt) * W[n, k].astype(acc_dt), axis=k),
                         name="acc")
        ch = 1
    elif g.op == "conv1d":
        X = te.placeholder((1, g.in_c, g.in_w), dtype=dt, name="x")
        acc = topi.nn.conv1d(X, W, strides=g.stride_w, padding=g.pad_w, dilation=1, groups=g.groups,
                             data_layout="NCW", out_dtype=acc_dt)
        ch = 1
    else:
        X = te.placeholder((1, g.in_c, g.in_h, g.in_w), dtype=dt, name="x")
        strides, pads = (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
        if g.op == "dwconv2d":
            acc = topi.nn.depthwise_conv2d_nchw(X, W, strides, pads, 1, out_dtype=acc_dt)
        elif g.groups == 1:
            acc = topi.nn.conv2d_nchw(X, W, strides, pads, 1, out_dtype=acc_dt)
        else:
            acc = topi.nn.group_conv2d_nchw(X, W, strides, pads, 1, g.groups, out_dtype=acc_dt)
        ch = 1
    shape = tuple(acc.shape)

    def chan(idx):
        return idx[ch]

    if not s8:
        out = te.compute(shape, lambda *i: acc(*i) + B[chan(i)], name="out")
        return [X, W, B, out]
    M = te.placeholder((g.out_c,), dtype="int32", name="mult")
    S = te.placeholder((g.out_c,), dtype="int32", name="shift")

    def rq(*i):
        c = chan(i)
        a = (acc(*i) + B[c]).astype("int64")
        hi = ((a * M[c].astype("int64") + (1 << 31)) >> 32).astype("int32")
        r = (hi + ((1 << S[c]) >> 1)) >> S[c]
        return te.max(te.min(r, 127), -128).astype("int8")

    out = te.compute(shape, rq, name="out")
    return [X, W, B, M, S, out]


def tvm_layer_source(p, name: str = "hw_tvm_layer") -> tuple[str, list]:
    """C source of the layer's PrimFunc from TVM's ``c`` target, and the TE tensors in argument order."""
    import tvm
    from tvm import te

    tensors = _te_layer(p)
    func = te.create_prim_func(tensors).with_attr("global_symbol", name)
    mod = tvm.IRModule({name: func})
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        ex = tvm.compile(mod, target=tvm.target.Target({"kind": "c"}))
    src = ex.mod.inspect_source()
    return src, tensors


_DL = {"int8": ("kDLInt", 8), "int32": ("kDLInt", 32), "float32": ("kDLFloat", 32)}


def write_tvm_harness(p, d: Path) -> tuple[list[Path], int, list[str]]:
    """Write the TVM C source, its glue and the data; returns (sources, output bytes, gcc flags)."""
    g = p.geom
    name = "hw_tvm_layer"
    src, tensors = tvm_layer_source(p, name)
    (d / "hw_tvm_layer.c").write_text(src)
    data = AsmData(d)
    s8 = p.dtype == "int8"
    x = p.x.reshape(g.batch, g.in_c) if g.op == "linear" else p.x.reshape((1, *p.x.shape))
    arrays = [("hw_x", x, True), ("hw_wt_w", p.w, False), ("hw_bias", p.bias, False)]
    if s8:
        arrays += [("hw_qmult", p.mult, False), ("hw_qshift", p.shift.astype(np.int32), False)]
    for sym, arr, writable in arrays:
        data.add(sym, arr, writable=writable)
    out_t = tensors[-1]
    out_shape = [int(s) for s in out_t.shape]
    out_elems = int(np.prod(out_shape))
    out_ct = "int8_t" if s8 else "float"
    # intermediate buffers (padding copy, accumulators) come from the workspace arena
    ws = max(WORKSPACE_BYTES_MIN, 4 * (g.out_elems + (g.in_c * (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w))
                                        + g.batch * g.in_c) + 1024)
    lines = []
    syms = [s for s, _, _ in arrays] + ["hw_y"]
    for i, (t, sym) in enumerate(zip(tensors, syms)):
        code, bits = _DL[str(t.dtype)]
        shp = ", ".join(str(int(s)) for s in t.shape)
        lines.append(f"static int64_t hw_shape{i}[] = {{{shp}}};")
        lines.append(f"static DLTensor hw_t{i} = {{.data = (void *){sym}, .device = {{kDLCPU, 0}}, "
                     f".ndim = {len(t.shape)}, .dtype = {{{code}, {bits}, 1}}, .shape = hw_shape{i}, "
                     f".strides = 0, .byte_offset = 0}};")
    nargs = len(tensors)
    glue = f"""/* generated by targets.mcu (impl="tvm"): calls TVM's C code for one layer */
#include <stdint.h>
#include "tvm/ffi/c_api.h"
#include "hw_harness.h"
{data.declarations()}
static {out_ct} hw_y[{out_elems}];
int32_t __tvm_ffi_{name}(void *self, void *args, int32_t num_args, void *result);

static uint8_t hw_ws[{ws}] __attribute__((aligned(16)));
static uint32_t hw_ws_top;
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits)
{{
    (void)device_type; (void)device_id; (void)code; (void)bits;
    uint32_t at = (hw_ws_top + 15u) & ~15u;
    if (at + nbytes > sizeof hw_ws) {{ hw_puts("HWERROR workspace arena too small\\n"); hw_exit(3); }}
    hw_ws_top = at + (uint32_t)nbytes;
    return hw_ws + at;
}}
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr)
{{
    (void)device_type; (void)device_id;
    hw_ws_top = (uint32_t)((uint8_t *)ptr - hw_ws); /* frees are LIFO in generated code */
    return 0;
}}
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n)
{{
    hw_puts("HWERROR TVM "); hw_puts(kind); hw_puts(": ");
    for (int32_t i = 0; i < n; ++i) hw_puts(parts[i]);
    hw_puts("\\n");
}}
{chr(10).join(lines)}
static TVMFFIAny hw_args[{nargs}];
static TVMFFIAny hw_ret;

int main(void)
{{
    DLTensor *ts[{nargs}] = {{{", ".join(f"&hw_t{i}" for i in range(nargs))}}};
    for (int i = 0; i < {nargs}; ++i) {{
        hw_args[i].type_index = kTVMFFIDLTensorPtr;
        hw_args[i].v_ptr = ts[i];
    }}
    HW_MEASURE_AND_REPORT(__tvm_ffi_{name}(0, hw_args, {nargs}, &hw_ret), hw_y, sizeof hw_y);
    return 0;
}}
"""
    main = d / "hw_main.c"
    main.write_text(glue)
    asm = data.write()
    flags = [f"-I{inc}" for inc in tvm_include_dirs()] + ["-Wno-unused-variable", "-Wno-unused-parameter",
                                                          "-Wno-unused-but-set-variable"]
    log.debug("TVM harness for %s in %s (output %s)", g.op, d, out_shape)
    return [d / "hw_tvm_layer.c", main, asm], out_elems * (1 if s8 else 4), flags
