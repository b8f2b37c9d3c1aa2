"""A layer-table row in the MCU kernels' terms: which kernel op runs it and in which weight format,
and the kernel geometry and scratch buffer of a layer (numpy and pandas only).

    from targets.mcu.ops import mcu_op, mcu_fmt, geometry, scratch_bytes

    op = mcu_op(row)                               # "linear", "conv1d", "conv2d", "dwconv2d"
    fmt = mcu_fmt(row["pattern"], storage_fmt)     # "dense", "csr", "bitmask", "nm", "block"
    g = geometry(op, w_shape, x_shape, stride=1, padding=0, groups=1)
    scratch_bytes(g, "int8")                       # im2col rows / depthwise tap table, bytes
"""
from __future__ import annotations

from typing import Any, Mapping

from ._layers import LayerGeom, geometry, scratch_bytes

__all__ = ["mcu_op", "mcu_fmt", "geometry", "scratch_bytes", "LayerGeom"]


def mcu_op(row: Mapping[str, Any]) -> str:
    """The MCU kernel op of a layer-table row (``op``, ``kind``): a depthwise ``conv2d`` runs
    on the depthwise kernel (``dwconv2d``), every other layer on the kernel of its op."""
    if row["op"] == "linear":
        return "linear"
    if row["op"] == "conv2d" and row["kind"] == "depthwise":
        return "dwconv2d"
    return str(row["op"])


def mcu_fmt(pattern: str, storage_fmt: str) -> str:
    """The kernel weight format of a layer pruned with ``pattern`` whose storage (the pattern
    registry's ``StorageBytes.fmt``) is ``storage_fmt``: dense and channel-pruned layers run
    dense, N:M and block on their kernels, unstructured in ``csr`` or ``bitmask`` (whichever
    the storage chose; ``csr`` otherwise)."""
    return {"dense": "dense", "channel": "dense", "nm": "nm", "block": "block"}.get(
        pattern, storage_fmt if storage_fmt in ("csr", "bitmask") else "csr")
