"""Measurement records that leave the TVM backend: :class:`LayerTiming` and :class:`MeasureResult`.

Both are frozen and JSON round-trippable (``to_dict`` / ``from_dict``); every latency is in
seconds. A failed import, build or run is a :class:`MeasureResult` with ``error`` set and
``latency_s=None`` — never an exception.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["LayerTiming", "MeasureResult", "SCHEMA_VERSION", "MODES", "BACKENDS"]

#: Version of the dict layout written by :meth:`MeasureResult.to_dict`.
SCHEMA_VERSION = 1
#: Valid ``MeasureResult.mode`` values.
MODES = ("quick", "tuned")
#: Valid ``MeasureResult.backend`` values.
BACKENDS = ("tvm-local", "tvm-rpc")


@dataclass(frozen=True)
class LayerTiming:
    """One fused TVM PrimFunc timed alone.

    ``name``: fused PrimFunc name, e.g. ``"fused_conv1d_add_relu"``; ``call_index``: position
    (0-based) among the kernel calls of the compiled Relax ``main``, in execution order;
    ``weight_shape``: shape of the conv/matmul weight it consumes as the torch parameter has it
    (e.g. ``(10, 640)`` for ``nn.Linear(640, 10)``), ``None`` when it consumes none;
    ``median_s``: median seconds per call; ``iqr_s``: interquartile range of the repeats in
    seconds; ``weight_name``: the torch parameter name (``"fc.weight"``) when known.
    """

    name: str
    call_index: int
    weight_shape: tuple[int, ...] | None
    median_s: float
    iqr_s: float | None = None
    weight_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``weight_shape`` as a list)."""
        return {
            "name": self.name,
            "call_index": self.call_index,
            "weight_shape": list(self.weight_shape) if self.weight_shape is not None else None,
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "weight_name": self.weight_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerTiming:
        """Inverse of :meth:`to_dict`."""
        shape = data.get("weight_shape")
        return cls(
            name=str(data["name"]),
            call_index=int(data["call_index"]),
            weight_shape=tuple(int(d) for d in shape) if shape is not None else None,
            median_s=float(data["median_s"]),
            iqr_s=None if data.get("iqr_s") is None else float(data["iqr_s"]),
            weight_name=data.get("weight_name"),
        )


@dataclass(frozen=True)
class MeasureResult:
    """One end-to-end latency measurement of a compiled model, with its provenance.

    Latencies are seconds per inference over ``repeats`` samples, each the mean of at least
    ``number`` runs (TVM raises the run count to meet ``min_repeat_ms``; see
    :class:`~targets.tvm.EvaluatorConfig`): ``latency_s`` is the median, ``latency_iqr_s`` the
    interquartile range, ``latency_min_s``/``latency_max_s`` the extremes; all ``None`` when
    ``error`` is set. ``mode`` is ``"quick"`` (best of a few sampled schedules per function) or
    ``"tuned"`` (MetaSchedule search); ``backend`` ``"tvm-local"`` or ``"tvm-rpc"``; ``device``
    the CPU model string or the RPC address; ``tvm_target`` the Target JSON dict used.
    ``tune_s`` / ``build_s`` are wall seconds spent tuning or sampling schedules and compiling.
    ``max_abs_err`` is the largest absolute difference between TVM's and torch's outputs on the
    example inputs. ``notes`` are one-line provenance remarks (e.g. functions that the tuner did
    not reach and that were filled by sampling). ``error`` is one line: what failed and how to
    fix it.
    """

    latency_s: float | None
    latency_iqr_s: float | None
    latency_min_s: float | None
    latency_max_s: float | None
    repeats: int
    number: int
    mode: str
    backend: str
    device: str
    tvm_target: dict[str, Any]
    layers: tuple[LayerTiming, ...]
    tune_s: float
    build_s: float
    versions: dict[str, str]
    date: str
    error: str | None
    max_abs_err: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when a latency was measured (``error`` is None)."""
        return self.error is None and self.latency_s is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version``; non-finite floats become ``None``."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "layers":
                value = [layer.to_dict() for layer in value]
            elif f.name == "notes":
                value = list(value)
            elif f.name in ("tvm_target", "versions"):
                value = _jsonable(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureResult:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` for another ``schema_version``."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"MeasureResult schema_version={version!r}, expected {SCHEMA_VERSION}; "
                "re-measure with this version of hwsearch"
            )
        kwargs = {f.name: data.get(f.name) for f in fields(cls)}
        kwargs["layers"] = tuple(LayerTiming.from_dict(d) for d in data.get("layers") or ())
        kwargs["notes"] = tuple(data.get("notes") or ())
        kwargs["tvm_target"] = dict(data.get("tvm_target") or {})
        kwargs["versions"] = dict(data.get("versions") or {})
        return cls(**kwargs)

    def with_error(self, error: str) -> MeasureResult:
        """A copy that reports ``error`` and no latency."""
        return replace(self, latency_s=None, latency_iqr_s=None, latency_min_s=None,
                       latency_max_s=None, error=error)


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so a Target dict serialises to plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
