"""Measuring the layers of a pruned plan in the emulator, one :class:`McuLayerMeasurement` each.

    from targets.mcu.plan import measure_plan_layers

    layers = [{"op": "conv1d", "weight": w, "bias": b, "x": x, "fmt": "csr", "stride": 1,
               "padding": 2, "groups": 1},
              {"op": "linear", "weight": w2, "x": x2, "fmt": "nm", "n": 2, "m": 4}]
    rows = measure_plan_layers(layers, cpu="cortex-m7")          # list, in the order given

Each layer is built and run on its own (``measure_layer``): the kernel objects are compiled once
per core and cached, so a layer costs one small compile and link plus one QEMU run (~0.2 s);
layers run on a few threads. Weights are the physically pruned layer (channels removed, zeros
where weights are pruned) in PyTorch layout; float weights and inputs are quantised to int8
symmetrically (see :func:`targets.mcu.measure_layer`).

Layouts the kernels expect from a pruned weight: N:M groups and blocks run along the kernels'
reduction order ``(kh, kw, in_channel)`` with input channels fastest — an N:M mask grouped along
input channels (NVIDIA ASP layout) fits it; one grouped along PyTorch's flattened
``[in_channel, kh, kw]`` does not for kernels wider than 1 and comes back as an error record.
A depthwise conv1d may be given as ``op="dwconv2d"`` with its ``[C, 1, k]`` weight and ``[C, L]``
input: it then runs on the depthwise kernel as a height-1 conv2d.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._measure import McuLayerMeasurement, measure_layer

__all__ = ["measure_plan_layers", "LAYER_KEYS"]

log = logging.getLogger(__name__)

#: keys a layer dict may carry (``op``, ``weight`` and ``x`` are required)
LAYER_KEYS = ("op", "weight", "bias", "fmt", "x", "stride", "padding", "groups", "n", "m", "block", "name")
_REQUIRED = ("op", "weight", "x")


def _first(v: Any) -> int:
    if isinstance(v, (tuple, list)):
        return int(v[-1])
    return int(v)


def _kwargs(layer: Mapping[str, Any], i: int) -> dict[str, Any]:
    missing = [k for k in _REQUIRED if k not in layer]
    if missing:
        raise ValueError(f"layer {i} ({layer.get('name', layer.get('op', '?'))}) lacks {missing}; "
                         f"each layer dict needs {', '.join(_REQUIRED)}")
    unknown = sorted(set(layer) - set(LAYER_KEYS))
    if unknown:
        raise ValueError(f"layer {i}: unknown keys {unknown}; valid: {', '.join(LAYER_KEYS)}")
    op = str(layer["op"])
    w = np.asarray(layer["weight"])
    x = np.asarray(layer["x"])
    stride, padding = layer.get("stride", 1), layer.get("padding", 0)
    groups = int(layer.get("groups", 1) or 1)
    if op == "conv1d":
        stride, padding = _first(stride), _first(padding)
    block = layer.get("block", (4, 4))
    kw: dict[str, Any] = {"op": op, "weight": w, "x": x, "fmt": str(layer.get("fmt", "dense")),
                          "stride": stride, "padding": padding, "n": int(layer.get("n", 2)),
                          "m": int(layer.get("m", 4)), "block": (int(block[0]), int(block[1]))}
    if op != "dwconv2d":
        kw["groups"] = groups
    bias = layer.get("bias")
    kw["bias"] = None if bias is None else np.asarray(bias)
    return kw


def measure_plan_layers(layers: Sequence[Mapping[str, Any]], *, cpu: str, dtype: str = "int8",
                        work_dir: str | Path | None = None, jobs: int | None = None,
                        timeout_s: float = 60.0) -> list[McuLayerMeasurement]:
    """Measure every layer of ``layers`` on ``cpu`` and return one record per layer, in order.

    Each dict holds ``op`` (``linear``, ``conv1d``, ``conv2d``, ``dwconv2d``), ``weight`` (the
    physically pruned weight, PyTorch layout, zeros for pruned weights), ``x`` (an input of the
    layer's shape, batch dimension optional), and optionally ``bias``, ``fmt`` (default
    ``dense``), ``stride``, ``padding``, ``groups``, ``n``/``m`` (N:M), ``block`` (bh, bw) and
    ``name`` (for messages). ``work_dir`` keeps each layer's build in ``work_dir/layerNN``
    (default: temporary directories); ``jobs`` threads (default: the CPU count, at most 4).

    Raises ``ValueError`` for a layer dict without ``op``/``weight``/``x``, with unknown keys, or
    with an unknown op, format, dtype or cpu (before anything is built); a layer that fails later
    (weights not fitting the format, a build or emulator error, a wrong output) is a record with
    ``error`` set, and the other layers are still measured.
    """
    from ._layers import DTYPES, OPS
    from ._formats import FORMATS
    from ._toolchain import cpu_config

    cpu_config(cpu)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    calls = [_kwargs(layer, i) for i, layer in enumerate(layers)]
    for i, kw in enumerate(calls):
        if kw["op"] not in OPS:
            raise ValueError(f"layer {i}: unknown op {kw['op']!r}; valid: {', '.join(OPS)}")
        if kw["fmt"] not in FORMATS:
            raise ValueError(f"layer {i}: unknown fmt {kw['fmt']!r}; valid: {', '.join(FORMATS)}")
    root = Path(work_dir) if work_dir is not None else None

    def one(i: int) -> McuLayerMeasurement:
        kw = dict(calls[i])
        wd = root / f"layer{i:02d}" if root is not None else None
        m = measure_layer(kw.pop("op"), kw.pop("weight"), kw.pop("x"), dtype=dtype, cpu=cpu, work_dir=wd,
                          timeout_s=timeout_s, **kw)
        if m.error:
            name = layers[i].get("name", f"layer {i}")
            log.info("%s (%s, %s) failed: %s", name, m.op, m.fmt, m.error)
        elif m.fmt == "block" and m.stats.get("stored", 0) > m.stats.get("nnz", 0) and m.op != "linear":
            log.debug("layer %d: %d stored block values for %d nonzeros (blocks not aligned with the "
                      "kernel's (kh, kw, in_channel) order?)", i, m.stats["stored"], m.stats["nnz"])
        return m

    n_jobs = max(1, min(jobs or min(os.cpu_count() or 1, 4), len(calls) or 1))
    if n_jobs == 1:
        return [one(i) for i in range(len(calls))]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        return list(pool.map(one, range(len(calls))))
