"""What one measuring backend returns for one plan: :class:`MeasureResult`."""
from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._provenance import utc_now, versions

__all__ = ["MeasureResult", "SPREAD_KEYS", "RECORD_KEYS", "error_result"]

#: Spread statistics of ``latency_s`` a backend may report, in seconds, by their record key.
SPREAD_KEYS = ("latency_iqr_s", "latency_min_s", "latency_max_s", "latency_p10_s", "latency_p90_s")
#: Keys every backend's :meth:`MeasureResult.to_dict` has, in this order (then the spread after
#: ``latency_s`` and the backend's own ``details`` at the end).
RECORD_KEYS = ("latency_s", "repeats", "mode", "backend", "device", "versions", "layers", "layer_s",
               "date", "error")


def _no_iqr() -> dict[str, float | None]:
    return {"latency_iqr_s": None}


@dataclass(frozen=True)
class MeasureResult:
    """One folded model (a plan) measured once by one backend, with its provenance.

    ``latency_s``: seconds per inference — the median over ``repeats`` timed samples for timed
    backends; for ``mcu-qemu`` executed instructions × the spec's assumed CPI / clock (exact
    counts, one run). ``None`` exactly when nothing was measured (then ``error`` says why).
    ``spread``: the backend's spread statistics of the latency in seconds, by their record key
    (:data:`SPREAD_KEYS`): ``latency_iqr_s`` always (``None`` where the backend has no repeats),
    ``latency_min_s``/``latency_max_s`` or ``latency_p10_s``/``latency_p90_s`` where the backend
    has them. ``repeats``: samples behind ``latency_s`` (0 when nothing was measured).
    ``mode``: how it was measured (TVM ``quick``/``tuned``, MCU ``icount``); ``backend``: the
    registry name; ``device``: the CPU model, RPC address or emulated board; ``versions``:
    library and tool versions; ``date``: ISO-8601 UTC. ``error``: one line, what failed and how
    to fix it — a failure is a result with ``error`` set, never an exception.
    ``layers``: per-kernel timings as the backend reports them (TVM: one dict per kernel call,
    execution order); ``layer_s``: seconds per layer of the model's layer table, by layer name
    (a layer the backend could not attribute is left out, never 0). ``details``: the backend's
    own record fields (TVM: ``schema_version``, ``number``, ``tvm_target``, ``tune_s``,
    ``build_s``, ``max_abs_err``, ``notes``; MCU: ``instructions``, ``layer_instructions``,
    ``latency_note``, ``mcu_rows``, ``run_s``). ``runtime``: what ran the model (``tvm``,
    ``qemu``); not part of the record (its version is, under ``versions[runtime]``).

    Immutable once returned: the mappings are the backend's and must not be changed.
    """

    latency_s: float | None
    mode: str
    backend: str
    device: str
    versions: Mapping[str, str]
    date: str
    error: str | None = None
    repeats: int = 0
    spread: Mapping[str, float | None] = field(default_factory=_no_iqr)
    layers: tuple[Mapping[str, Any], ...] = ()
    layer_s: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    runtime: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.spread) - set(SPREAD_KEYS)
        if unknown:
            raise ValueError(f"MeasureResult.spread has unknown keys {sorted(unknown)}; valid: "
                             f"{', '.join(SPREAD_KEYS)}")
        clash = set(self.details) & {*RECORD_KEYS, *SPREAD_KEYS}
        if clash:
            raise ValueError(f"MeasureResult.details repeats the record keys {sorted(clash)}; "
                             "pass them as fields")

    @property
    def ok(self) -> bool:
        """True when a latency was measured (``error`` is None)."""
        return self.error is None and self.latency_s is not None

    @property
    def latency_iqr_s(self) -> float | None:
        """Interquartile range of the samples in seconds (``None`` where there is none)."""
        return self.spread.get("latency_iqr_s")

    @property
    def runtime_version(self) -> str:
        """The version of :attr:`runtime` recorded in ``versions`` ("" when unknown)."""
        return str(self.versions.get(self.runtime, ""))

    def to_dict(self) -> dict[str, Any]:
        """The measurement record's fields (what :func:`hwsearch.measure.measure_model`
        returns): :data:`RECORD_KEYS` with the spread after ``latency_s``, then ``details``."""
        out: dict[str, Any] = {"latency_s": self.latency_s, **self.spread, "repeats": self.repeats,
                               "mode": self.mode, "backend": self.backend, "device": self.device,
                               "versions": dict(self.versions), "layers": [dict(t) for t in self.layers],
                               "layer_s": dict(self.layer_s), "date": self.date, "error": self.error}
        out.update(self.details)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, runtime: str = "") -> MeasureResult:
        """Inverse of :meth:`to_dict` (``runtime`` is not in the record: pass it when known).
        Keys that are neither record keys nor spread keys come back as ``details``."""
        return cls(
            latency_s=data.get("latency_s"), mode=str(data.get("mode", "")),
            backend=str(data.get("backend", "")), device=str(data.get("device", "")),
            versions=dict(data.get("versions") or {}), date=str(data.get("date", "")),
            error=data.get("error"), repeats=int(data.get("repeats") or 0),
            spread={k: data[k] for k in SPREAD_KEYS if k in data},
            layers=tuple(dict(t) for t in data.get("layers") or ()),
            layer_s=dict(data.get("layer_s") or {}),
            details={k: v for k, v in data.items() if k not in RECORD_KEYS and k not in SPREAD_KEYS},
            runtime=runtime)


def error_result(backend: str, mode: str, error: str | None, *, runtime: str = "") -> MeasureResult:
    """A result of ``backend`` that measured nothing: ``error`` set, this host as the device,
    :func:`~targets.measure.versions` as the versions."""
    return MeasureResult(latency_s=None, mode=mode, backend=backend, device=platform.node(),
                         versions=versions(), date=utc_now(), error=error, runtime=runtime)
