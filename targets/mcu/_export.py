"""Export a PyTorch model *graph* (``torch.export``) as C for Cortex-M: layer kernels in their
sparse formats, glue ops (residual add, global mean pooling, ReLU), a buffer plan and
``model_run()``. See :func:`export_graph`; what it takes is listed in :mod:`._graph`, the
numerics in :mod:`._lower`.

The steps, one module each: read the graph (:mod:`._graph`), lower every op to its kernel and
quantise it (:mod:`._lower`), place the activations (:mod:`._buffers`), write the C tree and the
test vectors (:mod:`._emit`), then the manifest (here).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import _toolchain as tc
from ._buffers import BufferPlan, plan_buffers
from ._emit import KERNEL_SRC, write_sources, write_test_vectors
from ._formats import FORMATS
from ._graph import GraphReader, Op, float_forward, read_graph
from ._lower import Lowered, lower_ops

__all__ = ["export_graph", "ExportResult", "GRAPH_KIND"]

log = logging.getLogger(__name__)

#: ``manifest.json`` ``kind`` of a graph export
GRAPH_KIND = "hwsearch-mcu-c-graph"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_graph` wrote: the directory, the files, and the manifest it saved."""

    out_dir: Path
    files: tuple[Path, ...]
    manifest: dict


def export_graph(model: Any, example_input: Any, out_dir: str | Path, *, dtype: str = "int8",
                 formats: Mapping[str, Any] | None = None, calibration: Any = None,
                 depthwise_kernel: str = "dw", name: str = "model") -> ExportResult:
    """Export ``model`` (an ``nn.Module`` in eval mode, run on ``example_input`` of batch size 1)
    as a C tree in ``out_dir`` and return an :class:`ExportResult`.

    ``formats`` maps a layer (its module path, e.g. ``"res1"``, or its graph node name) to a
    weight format — ``dense``, ``csr``, ``bitmask``, ``nm``, ``block`` or ``auto`` (default: the
    fewest weight bytes among the formats the weights fit) — or to a dict ``{"fmt": ..., "n": 2,
    "m": 4, "block": (4, 4)}``. Zeros in the weights are the pruned ones (prune first, e.g. with
    ``hwsearch.prune.apply(graph, plan, mode="fold")``). ``calibration``: an input batch
    ``[N, ...]`` whose ranges set the int8 activation scales (default: ``example_input``).
    ``depthwise_kernel``: ``"dw"`` runs depthwise convs (conv1d too, as height 1) on the depthwise
    kernel, ``"grouped"`` on the grouped-conv kernels (one input channel per group).

    The tree: ``model.h``/``model.c`` (``int <name>_run(const T *input, T *output)``: input and
    output channels-last, one arena of planned buffers, one scratch area), ``weights.c``/``.h``
    (``const`` arrays: flash), the kernels and glue ops, ``test/`` (QEMU harness, reference input
    and output, PyTorch's output) and ``manifest.json`` (per-op formats, shapes, weight bytes,
    buffer plan, flash and peak SRAM; :func:`~targets.mcu.codegen.build` adds measured
    instruction counts). Raises ``ValueError`` naming the node and aten op of anything it cannot
    export, a wrong ``formats`` entry or weights that do not fit the format asked for.
    """
    import torch

    if dtype not in ("int8", "fp32"):
        raise ValueError(f"unknown dtype {dtype!r}; valid: int8, fp32")
    if depthwise_kernel not in ("dw", "grouped"):
        raise ValueError(f"unknown depthwise_kernel {depthwise_kernel!r}; valid: dw, grouped")
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    x = x.detach().float()
    if x.shape[0] != 1:
        raise ValueError(f"example_input must have batch size 1, got shape {tuple(x.shape)}")
    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        y_torch = model(x)
    if not isinstance(y_torch, torch.Tensor):
        raise ValueError(f"the model returns {type(y_torch).__name__}; export supports one output tensor")
    b = read_graph(ep)
    specs = _format_spec(formats, _name_layers(b.ops), {op.name: op.node for op in b.ops if op.kind == "layer"})
    rng, fv = _calibrate(b, x, y_torch, calibration)
    lw = lower_ops(b, specs, rng, fv, dtype, depthwise_kernel)
    eb = 1 if lw.s8 else 4
    buf = plan_buffers(b, lw.built, eb)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    files = write_sources(out, b, lw, buf, name)
    vs_torch, test_files = write_test_vectors(out, b, lw, buf, fv, y_torch, name)
    files += test_files
    manifest = _manifest(type(model).__name__, b, lw, buf, name=name, depthwise_kernel=depthwise_kernel,
                         vs_torch=vs_torch, calibration=calibration)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_json_default))
    files.append(out / "manifest.json")
    log.info("exported %d ops (%s, %d weight bytes, %d B arena + %d B scratch) to %s", len(b.ops), dtype,
             manifest["weight_bytes"], buf.arena, buf.max_scratch, out)
    return ExportResult(out, tuple(files), manifest)


def _name_layers(ops: list[Op]) -> list[str]:
    """The layer ops' names, a module called more than once named apart (``name#k``, renaming
    the ops)."""
    layers = [op for op in ops if op.kind == "layer"]
    names = [op.name for op in layers]
    if len(set(names)) != len(names):  # a module called twice: name its calls apart
        seen: dict[str, int] = {}
        for op in layers:
            k = seen.get(op.name, 0)
            seen[op.name] = k + 1
            if k:
                op.name = f"{op.name}#{k}"
        names = [op.name for op in layers]
    return names


def _format_spec(formats: Mapping[str, Any] | None, names: list[str], node_names: dict[str, str]) -> dict[str, dict]:
    specs: dict[str, dict] = {n: {"fmt": "auto"} for n in names}
    if not formats:
        return specs
    by_node = {v: k for k, v in node_names.items()}
    for key, val in formats.items():
        layer = key if key in specs else by_node.get(key)
        if layer is None:
            raise ValueError(f"formats names {key!r}, which is not a layer of the model; layers: {', '.join(names)}")
        spec = {"fmt": val} if isinstance(val, str) else dict(val)
        fmt = spec.get("fmt", "auto")
        if fmt not in FORMATS and fmt != "auto":
            raise ValueError(f"formats[{key!r}]: unknown fmt {fmt!r}; valid: {', '.join(FORMATS)}, auto")
        unknown = set(spec) - {"fmt", "n", "m", "block"}
        if unknown:
            raise ValueError(f"formats[{key!r}]: unknown keys {sorted(unknown)}; valid: fmt, n, m, block")
        specs[layer] = spec
    return specs


def _calibrate(b: GraphReader, x: Any, y_torch: Any, calibration: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The float forward of the folded graph — a check of the folding, and the calibration
    ranges: max |value| of every (non-alias) tensor and every tensor's value for ``x``."""
    import torch

    vals = float_forward(b, x)
    y_fold = vals[b.output].reshape(y_torch.shape)
    tol = 1e-4 * max(1.0, float(y_torch.abs().max()))
    if float((y_fold - y_torch).abs().max()) > tol:
        raise RuntimeError(f"internal: the folded graph differs from the model by "
                           f"{float((y_fold - y_torch).abs().max()):g}; please report")
    calib = vals if calibration is None else float_forward(b, torch.as_tensor(calibration).float())
    rng = {t: float(v.abs().max()) for t, v in calib.items() if b.tensors[t].base is None}
    fv = {t: v[0].numpy().astype(np.float32) for t, v in vals.items()}
    return rng, fv


def _manifest(model_name: str, b: GraphReader, lw: Lowered, buf: BufferPlan, *, name: str, depthwise_kernel: str,
              vs_torch: dict[str, Any], calibration: Any) -> dict[str, Any]:
    import torch

    s8, dtype, shape_of, scale = lw.s8, lw.dtype, lw.shape_of, lw.scale
    eb = 1 if s8 else 4
    ops_m = []
    for op, info in zip(b.ops, lw.built):
        d = {k: v for k, v in info.items() if k not in ("geom", "packs", "params")}
        d["output_offset"] = None if b.base(op.output) == buf.out_direct else buf.offsets.get(op.output)
        d["output_bytes"] = int(np.prod(shape_of[op.output])) * eb
        if s8 and op.kind in ("add", "mean"):
            d["params"] = info["params"]
        ops_m.append(d)
    tensors = {t: {"shape": list(shape_of[t]), "bytes": int(np.prod(shape_of[t])) * eb,
                   "offset": buf.offsets.get(t), "live": list(buf.live[t]) if t in buf.live else None,
                   **({"scale": scale[t]} if s8 and t in scale else {})}
               for t in b.tensors if b.tensors[t].base is None}
    arena, max_scratch = buf.arena, buf.max_scratch
    return {
        "schema_version": 1, "kind": GRAPH_KIND, "dtype": dtype, "entry": f"{name}_run",
        "model": model_name, "ops": ops_m, "tensors": tensors,
        "input": {"tensor": b.input, "shape": list(shape_of[b.input]),
                  "bytes": int(np.prod(shape_of[b.input])) * eb, "layout": "channels-last"},
        "output": {"tensor": buf.out_t, "shape": list(shape_of[b.output]),
                   "bytes": int(np.prod(shape_of[b.output])) * eb, "written_in_place": buf.out_direct is not None},
        "arena_bytes": int(arena), "scratch_bytes": int(max_scratch),
        "peak_sram_bytes": int(arena + max_scratch),
        "peak_sram_note": "planned activation arena + kernel scratch; the caller's input and output buffers and "
                          "the stack are not included",
        "weight_bytes": int(sum(i.get("weight_bytes", 0) for i in lw.built)),
        "param_bytes": int(sum(i.get("param_bytes", 0) for i in lw.built)),
        "flash_note": "param_bytes = weights in their formats + biases + requantisation parameters (const data); "
                      "build() adds model_flash_bytes (code + const data of the model and kernels, linked)",
        "depthwise_kernel": depthwise_kernel,
        "vs_torch": vs_torch,
        "calibration": "example_input" if calibration is None else f"{int(torch.as_tensor(calibration).shape[0])} inputs",
        "sources": ["model.c", "weights.c", *[k for k in KERNEL_SRC[dtype] if k.endswith(".c")]],
        "layout": "channels-last activations; see targets/mcu/_graph.py",
        "versions": {"torch": torch.__version__, **{k: v for k, v in tc.tool_versions().items() if k == "python"}},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
