"""Export a model as a C source tree for Cortex-M (the project's kernels + weights).

Two exporters share :func:`build`:

* :func:`export_graph` — any model ``torch.export`` can trace made of conv / linear / BatchNorm
  (folded) / ReLU / residual add / global mean pooling / flatten (see ``_graph.py``), with a
  buffer plan that keeps residual inputs live and per-op instruction counts when run;
* :func:`export_c` — a sequential chain of :class:`ExportLayer` (below), ping-pong buffers.

    from targets.mcu.codegen import export_graph, build

    exp = export_graph(folded_model, x, "out/mcu", dtype="int8", formats={"res1": "block"})
    res = build("out/mcu", "cortex-m7", run=True)   # res.layer_instructions, res.model_flash_bytes

The sequential exporter:

    from targets.mcu.codegen import ExportLayer, export_c, build

    layers = [ExportLayer("conv2d", w1, b1, fmt="block", padding=1, relu=True),
              ExportLayer("dwconv2d", w2, b2, fmt="csr", padding=1, relu=True),
              ExportLayer("linear", w3, b3, fmt="nm")]
    exp = export_c(layers, x_example, "out/mcu", dtype="int8")   # writes the tree
    res = build("out/mcu", "cortex-m4", run=True)                 # compile, run in QEMU, compare

The tree (everything a firmware project needs, plus a test harness kept apart under ``test/``):

``model.h``       ``int model_run(const T *input, T *output)`` and the buffer sizes
``model.c``       layer descriptors, a ping-pong activation plan (two buffers of the largest
                  activation, one scratch area), and the calls in order
``weights.c/.h``  every layer's weights in its format (``hw_kernels.h`` documents the layouts),
                  bias and requantisation parameters, as ``const`` arrays (flash)
``hw_kernels*``   the kernels (C, no library needed)
``test/``         bare-metal QEMU harness and the reference input/output (``.npy``)
``manifest.json`` per-layer format, shapes, weight bytes; buffer sizes; quantisation scales

Layouts: activations are channels-last (conv2d ``[H][W][C]``, conv1d ``[L][C]``); a linear
layer after a conv reads the flattened activation (its weight columns are permuted at export
so the result equals PyTorch's ``flatten`` of NCHW). ``int8`` export quantises with the example
input as calibration: symmetric per-tensor activations, per-output-channel weights, int32 bias,
ReLU as the lower clamp. Layers run in the order given, each on the previous one's output.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _toolchain as tc
from ._formats import FORMATS
from ._layers import (OPS, LayerGeom, c_array, c_type, conv_initializer, geometry, mat_initializer, pack_layer,
                      scratch_bytes)
from ._graph import GRAPH_KIND, export_graph
from ._reference import (quantize_symmetric, reference_acc, reference_fp32, requant_from_real,
                         requantize)

__all__ = ["ExportLayer", "ExportResult", "BuildResult", "export_c", "export_graph", "build",
           "layers_from_sequential", "AUTO_FORMATS"]

log = logging.getLogger(__name__)

KERNEL_FILES = {"int8": ("hw_kernels.h", "hw_kernels_tmpl.h", "hw_kernels_s8.c"),
                "fp32": ("hw_kernels.h", "hw_kernels_tmpl.h", "hw_kernels_f32.c")}
HARNESS_FILES = ("hw_startup.c", "hw_harness.h", "hw_link.ld")
AUTO_FORMATS = ("dense", "csr", "bitmask", "nm", "block")


@dataclass(frozen=True)
class ExportLayer:
    """One layer of a sequential model, in PyTorch layout (zeros in ``weight`` are pruned).

    ``op``: linear / conv1d / conv2d / dwconv2d; ``fmt``: dense / csr / bitmask / nm / block
    (``n``, ``m``, ``block`` as in :func:`targets.mcu.measure_layer`) or ``auto`` (the format
    with the fewest weight bytes among those the weights fit); ``relu`` fuses a ReLU."""

    op: str
    weight: np.ndarray
    bias: np.ndarray | None = None
    fmt: str = "dense"
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (4, 4)
    relu: bool = False
    name: str | None = None


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_c` wrote: the directory, the files, and the manifest it saved."""

    out_dir: Path
    files: tuple[Path, ...]
    manifest: dict


@dataclass(frozen=True)
class BuildResult:
    """:func:`build`'s outcome. ``error`` is set on any failure (never raised). Sizes are
    bytes of the linked test image (``text`` = code + const data: flash; ``bss``/``data``:
    RAM), ``weight_bytes`` the weight storage alone; ``instructions`` counts one
    ``model_run`` call; ``max_abs_err`` compares its output with the host reference."""

    ok: bool
    cpu: str
    elf: Path | None
    text_bytes: int | None
    data_bytes: int | None
    bss_bytes: int | None
    weight_bytes: int | None
    instructions: int | None
    max_abs_err: float | None
    compile_s: float
    run_s: float
    error: str | None
    versions: dict = field(default_factory=dict)
    #: graph exports: instructions of each op (kernel call or glue) of one ``model_run``, by op name
    layer_instructions: dict | None = None
    #: graph exports: flash of the model alone (code + const data of model, weights, kernels and
    #: ops as linked; the QEMU harness and the test input excluded)
    model_flash_bytes: int | None = None
    #: graph exports: largest |emulator output (dequantised) - PyTorch output|
    torch_max_abs_err: float | None = None


def _kernel_layout(op: str, a: np.ndarray) -> np.ndarray:
    """PyTorch-layout activation (no batch) -> the kernels' channels-last layout, flattened."""
    if op in ("conv2d", "dwconv2d"):
        return a.transpose(1, 2, 0).reshape(-1)
    if op == "conv1d":
        return a.T.reshape(-1)
    return a.reshape(-1)


def _flatten_perm(prev_out: tuple[int, ...]) -> np.ndarray:
    """Column permutation mapping channels-last flattening onto PyTorch's (C-major) flatten."""
    idx = np.arange(int(np.prod(prev_out))).reshape(prev_out)  # PyTorch order [C, (H,) W]
    return np.moveaxis(idx, 0, -1).reshape(-1)


def export_c(layers: Sequence[ExportLayer], x: np.ndarray, out_dir: str | Path, *, dtype: str = "int8",
             name: str = "model") -> ExportResult:
    """Write the C tree for ``layers`` run on input ``x`` (PyTorch layout without batch, or
    ``[B, K]`` for an all-linear model) into ``out_dir``.

    ``x`` calibrates int8 activation scales and becomes the test vector of :func:`build`.
    Raises ``ValueError`` for unknown names, shapes that do not chain, weights that do not fit
    their format, or an op order this exporter does not support (a conv after a linear)."""
    if dtype not in ("int8", "fp32"):
        raise ValueError(f"unknown dtype {dtype!r}; valid: int8, fp32")
    if not layers:
        raise ValueError("export_c needs at least one layer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    s8 = dtype == "int8"
    T = "int8_t" if s8 else "float"
    BT = "int32_t" if s8 else "float"
    sfx = "s8" if s8 else "f32"

    # ---- float forward pass: shapes, calibration ranges, fp32 reference -----------------------
    xf = np.asarray(x, dtype=np.float32)
    act = xf
    prev_op: str | None = None
    geoms: list[LayerGeom] = []
    w_eff: list[np.ndarray] = []
    acts_f = [xf]
    for i, L in enumerate(layers):
        if L.op not in OPS:
            raise ValueError(f"layer {i}: unknown op {L.op!r}; valid: {', '.join(OPS)}")
        if L.fmt not in FORMATS and L.fmt != "auto":
            raise ValueError(f"layer {i}: unknown fmt {L.fmt!r}; valid: {', '.join(FORMATS)}, auto")
        w = np.asarray(L.weight, dtype=np.float32)
        if L.op == "linear":
            if prev_op is not None and prev_op != "linear":
                perm = _flatten_perm(act.shape)
                w = w[:, perm] if w.shape[1] == perm.size else w
                act_in = _kernel_layout(prev_op, act)  # channels-last flatten
            else:
                act_in = act
            if act_in.ndim > 2 or (prev_op not in (None, "linear") and act_in.ndim != 1):
                act_in = act_in.reshape(-1)
        else:
            if prev_op == "linear":
                raise ValueError(f"layer {i}: a {L.op} after a linear layer is not supported")
            act_in = act
        g = geometry(L.op, w.shape, act_in.shape, stride=L.stride, padding=L.padding, groups=L.groups)
        b = np.zeros(g.out_c, np.float32) if L.bias is None else np.asarray(L.bias, np.float32).reshape(-1)
        strides, pads = (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
        xin = act_in.reshape(g.batch, g.in_c) if L.op == "linear" else act_in
        y = reference_fp32(L.op, w, xin, b, stride=strides, padding=pads, groups=g.groups)
        if L.relu:
            y = np.maximum(y, 0)
        if L.op == "linear" and act_in.ndim == 1:
            y = y.reshape(-1)
        geoms.append(g)
        w_eff.append(w)
        act = y
        acts_f.append(y)
        prev_op = L.op

    # ---- quantisation (int8) and the exact integer reference ----------------------------------
    q_layers = []
    if s8:
        s_act = [float(max(np.abs(a).max(initial=0.0), 1e-8) / 127.0) for a in acts_f]
        xq = np.clip(np.rint(xf / s_act[0]), -127, 127).astype(np.int8)
        a_q = xq
        prev_op = None
        for i, (L, g, w) in enumerate(zip(layers, geoms, w_eff)):
            wq, ws = quantize_symmetric(w, axis=0)
            ws = ws.reshape(-1)
            wq = np.where(w == 0, 0, wq).astype(np.int8)  # keep the pruning pattern exactly
            b = np.zeros(g.out_c) if L.bias is None else np.asarray(L.bias, np.float64).reshape(-1)
            bq = np.rint(b / (s_act[i] * ws)).astype(np.int32)
            mreal = s_act[i] * ws / s_act[i + 1]
            if mreal.max(initial=0) > 0.5:  # the SMMULR form tops out at 0.5: widen the output scale
                s_act[i + 1] *= float(mreal.max()) / 0.5 * (1 + 1e-9)
                mreal = s_act[i] * ws / s_act[i + 1]
            mult, shift = requant_from_real(mreal)
            ain = a_q
            if L.op == "linear" and prev_op not in (None, "linear"):
                ain = _kernel_layout(prev_op, a_q)
            xin = ain.reshape(g.batch, g.in_c) if L.op == "linear" else ain
            acc = reference_acc(L.op, wq, xin, bq, stride=(g.stride_h, g.stride_w),
                                padding=(g.pad_h, g.pad_w), groups=g.groups)
            axis = 1 if L.op == "linear" else 0
            yq = requantize(acc, mult, shift, axis=axis, act_min=0 if L.relu else -128)
            if L.op == "linear" and ain.ndim == 1:
                yq = yq.reshape(-1)
            q_layers.append({"w": wq, "b": bq, "mult": mult, "shift": shift})
            a_q = yq
            prev_op = L.op
        ref_in, ref_out = xq, a_q
    else:
        for L, w in zip(layers, w_eff):
            b = np.zeros(w.shape[0], np.float32) if L.bias is None else np.asarray(L.bias, np.float32).reshape(-1)
            q_layers.append({"w": w, "b": b})
        ref_in, ref_out = xf, act
        s_act = []

    # ---- weights.c / weights.h -----------------------------------------------------------------
    wc = ["/* generated by targets.mcu.codegen: layer weights in their kernel formats */",
          "#include <stdint.h>", '#include "weights.h"', ""]
    wh = ["/* generated by targets.mcu.codegen */", "#ifndef HW_WEIGHTS_H", "#define HW_WEIGHTS_H",
          "#include <stdint.h>", ""]
    model_defs = []
    calls = []
    layer_info = []
    max_act = max(int(np.prod(a.shape)) for a in ([ref_in] + [np.zeros(g.out_elems) for g in geoms]))
    max_scratch = 8
    for i, (L, g, q) in enumerate(zip(layers, geoms, q_layers)):
        lname = L.name or f"L{i}"
        fmt = _auto_format(g, q["w"], L) if L.fmt == "auto" else L.fmt
        packs = pack_layer(g, q["w"], fmt, n=L.n, m=L.m, block=L.block)
        mats = []
        wbytes = 0
        for gi, pk in enumerate(packs):
            syms = {}
            for role, arr in pk.arrays.items():
                sym = f"hw_{lname}_g{gi}_{role}"
                wc.append(c_array(c_type(arr), sym, arr))
                wh.append(f"extern const {c_type(arr)} {sym}[{max(arr.size, 1)}];")
                syms[role] = sym
                wbytes += arr.nbytes
            mats.append(mat_initializer(pk, syms))
        wc.append(c_array(BT, f"hw_{lname}_bias", q["b"].astype(np.int32 if s8 else np.float32)))
        wh.append(f"extern const {BT} hw_{lname}_bias[{g.out_c}];")
        if s8:
            wc.append(c_array("int32_t", f"hw_{lname}_mult", q["mult"]))
            wc.append(c_array("int8_t", f"hw_{lname}_shift", q["shift"]))
            wh.append(f"extern const int32_t hw_{lname}_mult[{g.out_c}];")
            wh.append(f"extern const int8_t hw_{lname}_shift[{g.out_c}];")
            epi = (f"{{.mult = hw_{lname}_mult, .shift = hw_{lname}_shift, .out_zp = 0, "
                   f".act_min = {0 if L.relu else -128}, .act_max = 127}}")
        else:
            epi = f"{{.f_min = {'0.0f' if L.relu else '-INFINITY'}, .f_max = INFINITY}}"
        model_defs.append(f"static const hw_mat_t hw_{lname}_mats[{len(mats)}] = {{\n    "
                          + ",\n    ".join(mats) + "\n};")
        model_defs.append(f"static const hw_epi_t hw_{lname}_epi = {epi};")
        src, dst = f"hw_act[{i % 2}]", f"hw_act[{(i + 1) % 2}]"
        if g.op == "linear":
            call = f"hw_linear_{sfx}(&hw_{lname}_mats[0], hw_{lname}_bias, &hw_{lname}_epi, {src}, {dst}, {g.batch}u)"
        else:
            model_defs.append(f"static const hw_conv_t hw_{lname}_conv = {conv_initializer(g)};")
            if g.op == "dwconv2d":
                call = (f"hw_dwconv2d_{sfx}(&hw_{lname}_conv, &hw_{lname}_mats[0], hw_{lname}_bias, "
                        f"&hw_{lname}_epi, {src}, {dst}, hw_scratch)")
            else:
                call = (f"hw_conv2d_{sfx}(&hw_{lname}_conv, hw_{lname}_mats, hw_{lname}_bias, "
                        f"&hw_{lname}_epi, {src}, {dst}, ({T} *)hw_scratch)")
        calls.append(f"    if ({call} != 0)\n        return -{i + 1};")
        max_scratch = max(max_scratch, scratch_bytes(g, dtype))
        layer_info.append({"name": lname, "op": g.op, "fmt": fmt, "shape": g.shape_dict(),
                           "relu": L.relu, "weight_bytes": int(wbytes), "macs": int(g.macs),
                           "nnz": int(np.count_nonzero(q["w"])), "weights": int(q["w"].size),
                           "in_elems": int(g.in_elems), "out_elems": int(g.out_elems)})
    wh += ["", "#endif", ""]
    n_layers = len(layers)
    in_elems, out_elems = int(ref_in.size), int(ref_out.size)
    final = f"hw_act[{n_layers % 2}]"
    eb = 1 if s8 else 4
    mh = f"""/* generated by targets.mcu.codegen: {n_layers} layers, {dtype} */
#ifndef HW_MODEL_H
#define HW_MODEL_H
#include <stdint.h>

typedef {T} hw_model_elem_t;
#define HW_MODEL_INPUT_ELEMS {in_elems}
#define HW_MODEL_OUTPUT_ELEMS {out_elems}
#define HW_MODEL_ACT_ELEMS {max_act}          /* each of the two ping-pong buffers */
#define HW_MODEL_SCRATCH_BYTES {max_scratch}
#define HW_MODEL_RAM_BYTES {2 * max_act * eb + max_scratch} /* activation + scratch RAM */

/* Run the model: input channels-last ([H][W][C], [L][C] or [K]), output in the last layer's
 * layout. Returns 0, or -(layer index + 1) when a layer's kernel rejects its format. */
int {name}_run(const hw_model_elem_t *input, hw_model_elem_t *output);

#endif
"""
    mc = f"""/* generated by targets.mcu.codegen */
#include <math.h>
#include <stdint.h>
#include "hw_kernels.h"
#include "model.h"
#include "weights.h"

static {T} hw_act[2][HW_MODEL_ACT_ELEMS] __attribute__((aligned(8)));
static uint8_t hw_scratch[HW_MODEL_SCRATCH_BYTES] __attribute__((aligned(8)));

{chr(10).join(model_defs)}

int {name}_run(const hw_model_elem_t *input, hw_model_elem_t *output)
{{
    for (uint32_t i = 0; i < HW_MODEL_INPUT_ELEMS; ++i)
        hw_act[0][i] = input[i];
{chr(10).join(calls)}
    for (uint32_t i = 0; i < HW_MODEL_OUTPUT_ELEMS; ++i)
        output[i] = {final}[i];
    return 0;
}}
"""
    files = []
    for fname, text in (("weights.c", "\n".join(wc)), ("weights.h", "\n".join(wh)), ("model.h", mh),
                        ("model.c", mc)):
        (out / fname).write_text(text)
        files.append(out / fname)
    for k in KERNEL_FILES[dtype]:
        shutil.copyfile(tc.KERNEL_DIR / k, out / k)
        files.append(out / k)
    for k in HARNESS_FILES:
        shutil.copyfile(tc.KERNEL_DIR / k, out / "test" / k)
        files.append(out / "test" / k)
    first_op = layers[0].op
    last_op = layers[-1].op
    np.save(out / "test" / "reference_input.npy", _kernel_layout(first_op, ref_in) if first_op != "linear"
            else ref_in.reshape(-1))
    np.save(out / "test" / "reference_output.npy", _kernel_layout(last_op, ref_out) if last_op != "linear"
            else ref_out.reshape(-1))
    test_main = f"""/* generated by targets.mcu.codegen: run {name}_run once under the QEMU harness */
#include <stdint.h>
#include "hw_harness.h"
#include "model.h"
#include "test_input.h"
static hw_model_elem_t hw_out[HW_MODEL_OUTPUT_ELEMS];
int main(void)
{{
    HW_MEASURE_AND_REPORT({name}_run(hw_test_input, hw_out), hw_out, sizeof hw_out);
    return 0;
}}
"""
    (out / "test" / "test_main.c").write_text(test_main)
    inp = np.load(out / "test" / "reference_input.npy")
    (out / "test" / "test_input.h").write_text(
        "#include <stdint.h>\nstatic " + c_array(T, "hw_test_input", inp.astype(np.int8 if s8 else np.float32)))
    manifest = {"schema_version": 1, "kind": "hwsearch-mcu-c-export", "dtype": dtype, "entry": f"{name}_run",
                "layers": layer_info, "activation_buffer_elems": max_act, "scratch_bytes": max_scratch,
                "ram_bytes": 2 * max_act * eb + max_scratch,
                "weight_bytes": int(sum(li["weight_bytes"] for li in layer_info)),
                "input_elems": in_elems, "output_elems": out_elems,
                "activation_scales": s_act, "layout": "channels-last activations; see targets/mcu/codegen.py",
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    files.append(out / "manifest.json")
    log.info("exported %d layers (%s, %d weight bytes) to %s", n_layers, dtype, manifest["weight_bytes"], out)
    return ExportResult(out, tuple(files), manifest)


def _auto_format(g: LayerGeom, w: np.ndarray, L: ExportLayer) -> str:
    """The format with the fewest weight bytes among those ``w`` fits (ties: the earlier one in
    :data:`AUTO_FORMATS`, so dense wins over an equal-sized sparse format)."""
    best, best_bytes = "dense", None
    for fmt in AUTO_FORMATS:
        try:
            nbytes = sum(p.nbytes for p in pack_layer(g, w, fmt, n=L.n, m=L.m, block=L.block))
        except ValueError:
            continue
        if best_bytes is None or nbytes < best_bytes:
            best, best_bytes = fmt, nbytes
    return best


def layers_from_sequential(model, formats: str | dict | None = None) -> list[ExportLayer]:
    """:class:`ExportLayer` list from a ``torch.nn.Sequential`` (nested ones are flattened) of
    ``Conv1d``/``Conv2d``/``Linear`` with ``ReLU``, ``BatchNorm1d/2d`` (folded into the conv
    before it), ``Flatten``, ``Dropout`` and ``Identity``. A ``Conv2d`` with
    ``groups == in_channels == out_channels`` becomes ``dwconv2d``. ``formats``: one format for
    every layer, or ``{layer index or module name: fmt}`` (others ``auto``); default ``auto``.
    Zeros in the weights (pruned, e.g. by ``hwsearch.prune``) are what the formats store.
    Raises ``ValueError`` naming an unsupported module."""
    import torch.nn as nn

    def flat(mod, prefix=""):
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                yield from flat(child, full + ".")
            else:
                yield full, child

    layers: list[ExportLayer] = []
    names: list[str] = []
    for name, mod in flat(model):
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w = mod.weight.detach().cpu().numpy().astype(np.float32)
            b = None if mod.bias is None else mod.bias.detach().cpu().numpy().astype(np.float32)
            if isinstance(mod, nn.Linear):
                layers.append(ExportLayer("linear", w, b, name=f"L{len(layers)}"))
            else:
                if any(d != 1 for d in mod.dilation) or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    raise ValueError(f"{name}: only dilation 1, zero padding given as numbers is exported")
                is1d = isinstance(mod, nn.Conv1d)
                dw = (not is1d and mod.groups == mod.in_channels == mod.out_channels and mod.groups > 1)
                op = "conv1d" if is1d else ("dwconv2d" if dw else "conv2d")
                stride = mod.stride[0] if is1d else tuple(mod.stride)
                pad = mod.padding[0] if is1d else tuple(mod.padding)
                layers.append(ExportLayer(op, w, b, stride=stride, padding=pad, groups=1 if dw else mod.groups,
                                          name=f"L{len(layers)}"))
            names.append(name)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not layers or layers[-1].op == "linear" or layers[-1].relu:
                raise ValueError(f"{name}: BatchNorm is folded into a conv directly before it")
            prev = layers[-1]
            scale = (mod.weight.detach() / (mod.running_var + mod.eps).sqrt()).cpu().numpy()
            shift = (mod.bias.detach() - mod.running_mean * mod.weight.detach()
                     / (mod.running_var + mod.eps).sqrt()).cpu().numpy()
            w = prev.weight * scale.reshape(-1, *([1] * (prev.weight.ndim - 1)))
            b = (prev.bias if prev.bias is not None else 0.0) * scale + shift
            layers[-1] = ExportLayer(prev.op, w.astype(np.float32), np.asarray(b, np.float32), stride=prev.stride,
                                     padding=prev.padding, groups=prev.groups, name=prev.name)
        elif isinstance(mod, nn.ReLU):
            if not layers:
                raise ValueError(f"{name}: a ReLU before the first layer cannot be fused")
            prev = layers[-1]
            layers[-1] = ExportLayer(prev.op, prev.weight, prev.bias, stride=prev.stride, padding=prev.padding,
                                     groups=prev.groups, relu=True, name=prev.name)
        elif isinstance(mod, (nn.Flatten, nn.Dropout, nn.Identity)):
            continue
        else:
            raise ValueError(f"{name}: {type(mod).__name__} is not exportable; supported: Conv1d, Conv2d, "
                             "Linear, ReLU, BatchNorm1d/2d (after a conv), Flatten, Dropout, Identity")
    out = []
    for i, (L, name) in enumerate(zip(layers, names)):
        if isinstance(formats, str):
            fmt = formats
        elif isinstance(formats, dict):
            fmt = formats.get(i, formats.get(name, "auto"))
        else:
            fmt = "auto"
        out.append(ExportLayer(L.op, L.weight, L.bias, fmt=fmt, stride=L.stride, padding=L.padding,
                               groups=L.groups, relu=L.relu, name=L.name))
    return out


#: symbols of the QEMU test harness (hw_startup.c, test_main.c, test_input.h): not part of a deployment
_HARNESS_SYMBOLS = frozenset({"main", "Reset_Handler", "Fault_Handler", "SysTick_Handler", "hw_vectors",
                              "hw_timer_start", "hw_write_file", "hw_puts", "hw_exit", "hw_semihost", "hw_wraps",
                              "hw_test_input", "hw_out", "hw_model_prof"})


def _model_flash_bytes(elf: Path) -> int:
    """Bytes of the functions and objects linked into flash (address < 0x20000000) other than the
    test harness's: the model's code, const data, weights, kernels and ops."""
    import struct

    data = elf.read_bytes()
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    sections = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
    total = 0
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        str_off = sections[sh[6]][4]
        for j in range(sh[5] // 16):
            name_off, value, size, info, _other, shndx = struct.unpack_from("<IIIBBH", data, sh[4] + j * 16)
            if shndx == 0 or size == 0 or (info & 0xF) not in (1, 2) or value >= 0x20000000:
                continue
            end = data.index(b"\0", str_off + name_off)
            if data[str_off + name_off:end].decode() not in _HARNESS_SYMBOLS:
                total += size
    return total


def _decode_profile(raw: bytes, n_ops: int) -> list[int]:
    """Per-op instructions from ``hw_model_prof`` (see ``model.h``): stamp pairs (wraps, value):
    two calibration stamps, then one before each op and one after the last."""
    import struct

    words = struct.unpack(f"<{2 * (n_ops + 3)}I", raw[: 8 * (n_ops + 3)])
    scale = tc.SYSTICK_NS / (1 << tc.ICOUNT_SHIFT)
    el = [tc._elapsed(words[2 * i], words[2 * i + 1]) for i in range(n_ops + 3)]
    calib = round((el[1] - el[0]) * scale)
    return [round((el[k + 3] - el[k + 2]) * scale) - calib
            - tc.HANDLER_INSNS * (words[2 * (k + 3)] - words[2 * (k + 2)]) for k in range(n_ops)]


def _finish_graph(out: Path, manifest: dict, cpu: str, got: np.ndarray, qr, err: float, error: str | None,
                  link, versions: dict, common: dict) -> BuildResult:
    """Graph exports: compare with PyTorch, count every op's instructions in a second, profiled
    build, and record the measurements in ``manifest.json`` under ``measured[cpu]``."""
    torch_ref = np.load(out / "test" / "torch_output.npy").astype(np.float64).reshape(-1)
    s8 = manifest["dtype"] == "int8"
    deq = got * (manifest["tensors"][manifest["output"]["tensor"]]["scale"] if s8 else 1.0)
    torch_err = float(np.abs(deq - torch_ref).max(initial=0.0))
    layer_insn: dict[str, int] | None = None
    prof_error = None
    run_s = qr.run_s
    if error is None:
        pelf = out / "build" / "model_prof.elf"
        perr = link(pelf, ("-DHW_MODEL_PROFILE",))
        if perr:
            prof_error = perr
        else:
            (pelf.parent / "hw_profile.bin").unlink(missing_ok=True)
            pq = tc.run_qemu(pelf, cpu)
            run_s += pq.run_s
            prof = pelf.parent / "hw_profile.bin"
            if pq.error or not prof.exists():
                prof_error = pq.error or "the profiled run wrote no hw_profile.bin"
            else:
                counts = _decode_profile(prof.read_bytes(), len(manifest["ops"]))
                layer_insn = {op["name"]: int(c) for op, c in zip(manifest["ops"], counts)}
    flash = _model_flash_bytes(common["elf"])
    measured = {"instructions": qr.instructions, "layer_instructions": layer_insn,
                "glue_instructions": (None if layer_insn is None or qr.instructions is None
                                      else int(qr.instructions - sum(layer_insn.values()))),
                "model_flash_bytes": flash, "text_bytes": common["text_bytes"], "bss_bytes": common["bss_bytes"],
                "max_abs_err_vs_reference": err, "max_abs_err_vs_torch": torch_err, "error": error or prof_error,
                "board": tc.cpu_config(cpu).board, "icount_shift": tc.ICOUNT_SHIFT, "versions": versions,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest.setdefault("measured", {})[cpu] = measured
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return BuildResult(ok=error is None and prof_error is None, cpu=cpu, instructions=qr.instructions,
                       max_abs_err=err, run_s=run_s, error=error or prof_error, versions=versions,
                       layer_instructions=layer_insn, model_flash_bytes=flash, torch_max_abs_err=torch_err,
                       **common)


def _sizes(elf: Path) -> tuple[int, int, int]:
    res = subprocess.run([tc.GCC.replace("gcc", "size"), "-A", str(elf)], capture_output=True, text=True,
                         timeout=60)
    sec = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sec[parts[0]] = int(parts[1])
    text = sec.get(".text", 0) + sec.get(".ARM.exidx", 0)
    return text, sec.get(".data", 0), sec.get(".bss", 0)


def build(out_dir: str | Path, cpu: str = "cortex-m4", *, run: bool = False, timeout_s: float = 120.0,
          ) -> BuildResult:
    """Compile the exported tree for ``cpu`` with the test harness into ``out_dir/build/model.elf``;
    with ``run=True`` execute ``model_run`` once in QEMU on the exported test input and compare
    the output with the reference (int8 exact; fp32 within 1e-4 relative to the output's scale).
    Failures come back in ``error``."""
    out = Path(out_dir)
    cfg = tc.cpu_config(cpu)
    versions = {**tc.tool_versions(), "cflags": " ".join(cfg.cflags + tc.COMMON_CFLAGS)}
    t0 = time.perf_counter()

    def fail(msg: str, **kw) -> BuildResult:
        base = dict(ok=False, cpu=cpu, elf=None, text_bytes=None, data_bytes=None, bss_bytes=None,
                    weight_bytes=None, instructions=None, max_abs_err=None,
                    compile_s=time.perf_counter() - t0, run_s=0.0, error=msg, versions=versions)
        base.update(kw)
        return BuildResult(**base)

    missing = tc.missing_tools()
    if missing:
        return fail(f"missing tools {missing}: {tc.INSTALL_HINT}")
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return fail(f"{out} is not an export_c tree ({exc})")
    bdir = out / "build"
    bdir.mkdir(exist_ok=True)
    if "sources" in manifest:
        srcs = [out / k for k in manifest["sources"]]
    else:
        kern = [f for f in KERNEL_FILES[manifest["dtype"]] if f.endswith(".c")]
        srcs = [out / "model.c", out / "weights.c", *(out / k for k in kern)]
    srcs += [out / "test" / "hw_startup.c", out / "test" / "test_main.c"]
    graph = manifest.get("kind") == GRAPH_KIND

    def link(elf: Path, extra: tuple[str, ...] = ()) -> str | None:
        cmd = [tc.GCC, *cfg.cflags, *tc.COMMON_CFLAGS, *extra, "-I", str(out), "-I", str(out / "test"),
               *map(str, srcs), "--specs=nosys.specs", "-nostartfiles", "-T", str(out / "test" / "hw_link.ld"),
               "-Wl,--gc-sections", "-o", str(elf)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"compiler did not run: {exc}"
        if res.returncode != 0:
            return "build failed: " + "\n".join(res.stderr.strip().splitlines()[-15:])
        return None

    elf = bdir / "model.elf"
    err = link(elf)
    if err:
        return fail(err)
    text, data, bss = _sizes(elf)
    compile_s = time.perf_counter() - t0
    common = dict(elf=elf, text_bytes=text, data_bytes=data, bss_bytes=bss,
                  weight_bytes=int(manifest["weight_bytes"]), compile_s=compile_s)
    if not run:
        return BuildResult(ok=True, cpu=cpu, instructions=None, max_abs_err=None, run_s=0.0, error=None,
                           versions=versions, **common)
    qr = tc.run_qemu(elf, cpu, timeout_s=timeout_s)
    if qr.error:
        return fail(qr.error, run_s=qr.run_s, instructions=qr.instructions, **common)
    s8 = manifest["dtype"] == "int8"
    got = np.frombuffer(qr.output, dtype=np.int8 if s8 else np.float32).astype(np.float64)
    ref = np.load(out / "test" / "reference_output.npy").astype(np.float64).reshape(-1)
    if got.size != ref.size:
        return fail(f"output has {got.size} elements, expected {ref.size}", run_s=qr.run_s,
                    instructions=qr.instructions, **common)
    err = float(np.abs(got - ref).max(initial=0.0))
    tol = 0.0 if s8 else 1e-4 * max(1.0, float(np.abs(ref).max(initial=0.0)))
    error = None if err <= tol else f"output differs from the reference by {err:g} (> {tol:g})"
    if not graph:
        return BuildResult(ok=error is None, cpu=cpu, instructions=qr.instructions, max_abs_err=err,
                           run_s=qr.run_s, error=error, versions=versions, **common)
    return _finish_graph(out, manifest, cpu, got, qr, err, error, link, versions, common)
