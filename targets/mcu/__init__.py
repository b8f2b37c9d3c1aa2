"""MCU measuring backend: layers built with ``arm-none-eabi-gcc`` and run in ``qemu-system-arm``
(Cortex-M4 on ``mps2-an386``, Cortex-M7 on ``mps2-an500``) with exact executed-instruction counts.

QEMU has no timing model: the counts are instructions, not cycles. Convert to time only through a
stated CPI (``costmodels.mcu``). See ``kernels/hw_kernels.h`` for layouts and weight formats. A folded
plan is measured behind the backend contract by ``targets.measure`` (``mcu-qemu``).

Public API::

    measure_layer(op, weight, x, *, fmt="dense", dtype="int8", cpu="cortex-m4", ...)
        -> McuLayerMeasurement
    measure_plan_layers(layers: list[dict], *, cpu, dtype="int8", work_dir=None)
        -> list[McuLayerMeasurement]      # the folded layers of a plan (targets.mcu.plan)
    codegen.export_graph(model, example_input, out_dir, *, dtype="int8", formats=None)
        -> ExportResult                    # a whole model as C; codegen.build(dir, cpu, run=True)
    ops.mcu_op(row), ops.mcu_fmt(pattern, storage_fmt)  # a layer-table row in the kernels' terms
    available() -> str | None          # None when the toolchain and emulator are installed
    format_bytes(fmt, rows, cols, ...) # hand count of a format's weight bytes
    prune_to_format(op, weight, fmt, density, ...)  # magnitude pruning in the kernels' view
"""
from __future__ import annotations

from ._formats import FORMATS, PackedMatrix, format_bytes, pack, unpack
from ._layers import DTYPES, OPS, prune_to_format
from ._measure import IMPLS, McuLayerMeasurement, measure_layer
from ._toolchain import CPUS, INSTALL_HINT, missing_tools, tool_versions
from .plan import measure_plan_layers

__all__ = ["McuLayerMeasurement", "measure_layer", "available", "CPUS", "OPS", "FORMATS", "DTYPES",
           "IMPLS", "format_bytes", "pack", "unpack", "PackedMatrix", "tool_versions", "prune_to_format",
           "measure_plan_layers"]


def available() -> str | None:
    """``None`` when ``arm-none-eabi-gcc``/``-nm`` and ``qemu-system-arm`` are on PATH, else the
    reason with the install command."""
    missing = missing_tools()
    return None if not missing else f"{', '.join(missing)} not found: {INSTALL_HINT}"
