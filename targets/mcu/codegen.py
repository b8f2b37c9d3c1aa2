"""Export a model as a C source tree for Cortex-M (the project's kernels + weights) and build it.

    from targets.mcu.codegen import export_graph, build

    exp = export_graph(folded_model, x, "out/mcu", dtype="int8", formats={"res1": "block"})
    res = build("out/mcu", "cortex-m7", run=True)   # res.layer_instructions, res.model_flash_bytes

:func:`export_graph` takes any model ``torch.export`` can trace made of conv / linear / BatchNorm
(folded) / ReLU / residual add / global mean pooling / flatten (see ``_graph.py``) and plans the
activation buffers so that residual inputs stay live; :func:`build` compiles the tree with the
QEMU harness and, with ``run=True``, counts the instructions of ``model_run`` and of every op.

The tree (everything a firmware project needs, plus a test harness kept apart under ``test/``):

``model.h``       ``int model_run(const T *input, T *output)`` and the buffer sizes
``model.c``       op descriptors, one arena of planned activation buffers, one scratch area, and
                  the calls in order
``weights.c/.h``  every layer's weights in its format (``hw_kernels.h`` documents the layouts),
                  bias and requantisation parameters, as ``const`` arrays (flash)
``hw_kernels*``, ``hw_ops*``  the kernels and glue ops (C, no library needed)
``test/``         bare-metal QEMU harness and the reference input/output (``.npy``)
``manifest.json`` per-op format, shapes, weight bytes; buffer plan; quantisation scales

Layouts: activations are channels-last (conv2d ``[H][W][C]``, conv1d ``[L][C]``); a linear
layer after a flatten reads the flattened activation (its weight columns are permuted at export
so the result equals PyTorch's ``flatten`` of NCHW). ``int8`` export quantises with the example
input (or a calibration batch): symmetric per-tensor activations, per-output-channel weights,
int32 bias, ReLU as the lower clamp.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _toolchain as tc
from ._export import GRAPH_KIND, ExportResult, export_graph
from ._lower import AUTO_FORMATS

__all__ = ["ExportResult", "BuildResult", "export_graph", "build", "AUTO_FORMATS", "GRAPH_KIND"]

log = logging.getLogger(__name__)


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
    #: instructions of each op (kernel call or glue) of one ``model_run``, by op name
    layer_instructions: dict | None = None
    #: flash of the model alone (code + const data of model, weights, kernels and ops as linked;
    #: the QEMU harness and the test input excluded)
    model_flash_bytes: int | None = None
    #: largest |emulator output (dequantised) - PyTorch output|
    torch_max_abs_err: float | None = None


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
    """Compare with PyTorch, count every op's instructions in a second, profiled
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
        return fail(f"{out} is not an export_graph tree ({exc})")
    if manifest.get("kind") != GRAPH_KIND:
        return fail(f"{out} is not an export_graph tree (manifest kind {manifest.get('kind')!r}); "
                    "export it again with export_graph")
    bdir = out / "build"
    bdir.mkdir(exist_ok=True)
    srcs = [out / k for k in manifest["sources"]]
    srcs += [out / "test" / "hw_startup.c", out / "test" / "test_main.c"]

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
    return _finish_graph(out, manifest, cpu, got, qr, err, error, link, versions, common)
