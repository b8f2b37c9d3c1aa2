"""Per-plan measuring backends: one folded model measured on a target, returned as data.

    from targets import measure

    backend = measure.get(target.measure["backend"])     # "tvm-local", "tvm-rpc", "mcu-qemu"
    if backend.available() is None:
        res = backend.measure(target, graph, folded, work_dir=Path("work"), resolved=dec.resolved)
        res.latency_s, res.error, res.layer_s                # seconds; one line; seconds per layer
        record = res.to_dict()                               # a measurement record's fields

:class:`MeasureBackend` is the contract (its docstring says what one call measures, in which
unit, and what comes back when it fails); :func:`register` adds a backend, :func:`get` finds one
by name and lists the valid names when there is none. The other kind of backend — the
interleaved ONNX Runtime / torch sittings of :mod:`targets.runtimes`, which time a dense model
and a round's plans together — is not per plan and is not registered here.
"""
from __future__ import annotations

from ._base import GraphLike, MeasureBackend
from ._layer_timings import map_layer_timings, match_by_size
from ._provenance import utc_now, versions
from ._registry import get, names, register
from ._result import RECORD_KEYS, SPREAD_KEYS, MeasureResult, error_result

__all__ = ["MeasureBackend", "MeasureResult", "GraphLike", "register", "get", "names", "error_result",
           "versions", "utc_now", "map_layer_timings", "match_by_size", "SPREAD_KEYS", "RECORD_KEYS"]
