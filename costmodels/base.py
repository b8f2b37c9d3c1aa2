"""The cost-model contract.

A :class:`CostModel` prices a plan on one target: ``predict(graph, plan) -> Cost`` with latency
in seconds, weight storage and peak activation memory in bytes, and an uncertainty. It must
cover every layer of the table or say which it does not (``coverage_gaps`` — a gap is never a
silent zero: :meth:`CostModel.predict` raises :class:`CoverageError` unless
``allow_gaps=True``). ``refit(records)`` fits corrections from measurement records and returns
a :class:`FitReport`; ``save``/``load`` write a versioned JSON file with provenance.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hwsearch.core.errors import HwsearchError, SpecError

__all__ = ["Cost", "CostModel", "CoverageError", "FitReport", "fidelity", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


class CoverageError(HwsearchError):
    """A layer kind the cost model has no figure for."""


@dataclass(frozen=True)
class Cost:
    """Predicted cost of one plan. ``latency_s`` ± ``latency_std_s`` (1σ, relative error of the
    model on its fit data times the prediction), ``flash_bytes`` (weights as stored),
    ``sram_bytes`` (peak live activations), ``layers`` (per-layer ``latency_s`` and storage),
    ``coverage_gaps`` (layers priced as unknown), ``model`` (name@version of the cost model)."""

    latency_s: float
    latency_std_s: float
    flash_bytes: int
    sram_bytes: int
    layers: pd.DataFrame
    coverage_gaps: tuple[str, ...]
    model: str
    instructions: int | None = None


@dataclass(frozen=True)
class FitReport:
    """How well a cost model predicts measured latencies, before and after a refit.

    Errors are relative: |pred − meas| / meas. ``within10`` / ``within5`` are the shares of
    plans within ±10 % / ±5 % (nn-Meter's fidelity measure); ``kendall_tau`` the rank
    correlation. ``n`` is the number of measured plans used."""

    n: int
    mape_before: float
    mape_after: float
    within10_before: float
    within10_after: float
    within5_after: float
    kendall_tau_after: float
    layer_rows: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fidelity(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """MAPE, shares within ±10 % and ±5 %, and Kendall's τ of predictions against measurements."""
    from scipy.stats import kendalltau

    pred = np.asarray(pred, dtype=float)
    meas = np.asarray(meas, dtype=float)
    if len(meas) == 0:
        return {"mape": math.nan, "within10": math.nan, "within5": math.nan, "kendall_tau": math.nan}
    rel = np.abs(pred - meas) / meas
    tau = float(kendalltau(pred, meas).statistic) if len(meas) > 1 else math.nan
    return {"mape": float(rel.mean()), "within10": float((rel <= 0.10).mean()),
            "within5": float((rel <= 0.05).mean()), "kendall_tau": tau}


class CostModel(ABC):
    """Base class of every cost model. Subclasses set ``kind`` (the registry key stored in the
    file) and implement :meth:`layer_latency`, :meth:`params` / :meth:`set_params`, :meth:`refit`."""

    kind = "base"
    version = 1

    def __init__(self, target: Any) -> None:
        self.target = target
        self.provenance: dict[str, Any] = {"fitted_on": 0, "history": []}

    @property
    def identity(self) -> str:
        return f"{self.kind}@{self.version}+{len(self.provenance.get('history', []))}fits"

    @abstractmethod
    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Seconds per layer of a resolved plan, and the layers not covered (their entry is NaN)."""

    @abstractmethod
    def model_overhead_s(self) -> float:
        """Seconds per inference outside the prunable layers (VM call, glue ops)."""

    def glue_s(self, resolved: pd.DataFrame) -> float:
        """Seconds of the glue ops (adds, activations, pooling) that scale with the plan's kept
        activations, on top of :meth:`model_overhead_s` (0 unless a model fits it)."""
        return 0.0

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (what :meth:`save` stores)."""

    @abstractmethod
    def set_params(self, params: dict[str, Any]) -> None:
        """Restore parameters saved by :meth:`params`; raise :class:`SpecError` on bad content."""

    @abstractmethod
    def refit(self, samples: list[Any], graphs: Any = None) -> FitReport:
        """Fit corrections from measured plans: each sample (``costmodels.analytical.Sample``)
        holds a resolved plan, its measured latency in seconds (already brought to the dense
        baseline's scale when the machine drifted), per-layer seconds where the runtime's
        profiler gave them, and backend extras. Returns the fit's report (errors before and
        after on ``samples``); raises ``ValueError`` for an empty list."""

    def relative_std(self) -> float:
        return float(self.provenance.get("relative_std", 0.3))

    def scratch_bytes(self, resolved: pd.DataFrame) -> int:
        """Kernel scratch memory added to the peak activations (0 unless a target knows it)."""
        return 0

    def predict(self, graph: Any, plan: Any, *, dtype: str | None = None, channel_multiple: int = 8,
                min_density: float = 0.0, allow_gaps: bool = False, resolved: pd.DataFrame | None = None) -> Cost:
        """Price ``plan`` on ``graph`` (a :class:`hwsearch.graph.ModelGraph`); ``dtype`` defaults
        to the model's deployment dtype (``self.dtype``)."""
        from costmodels.memory import DTYPE_BYTES, layer_storage, peak_sram_bytes

        from hwsearch.core.resolve import resolve

        dtype = dtype or getattr(self, "dtype", "fp32")

        res = resolved if resolved is not None else resolve(graph.table, graph.groups, plan,
                                                             channel_multiple=channel_multiple,
                                                             min_density=min_density)
        lat, gaps = self.layer_latency(res)
        gaps = list(gaps) + [f"<{u}>" for u in getattr(graph, "uncovered", ())]
        if gaps and not allow_gaps:
            raise CoverageError(f"cost model {self.kind} has no latency figure for layers {gaps} "
                                f"(kinds {sorted(set(res.loc[[g for g in gaps if g in res.index], 'kind']))}, "
                                "<ops> have no layer row); refit it with measurements "
                                "of those layers or use allow_gaps=True to report them")
        storage = layer_storage(res, dtype)
        layers = pd.DataFrame({"latency_s": lat, "flash_bytes": storage["flash_bytes"], "fmt": storage["fmt"]},
                              index=res.index)
        total = float(np.nansum(lat)) + self.model_overhead_s() + self.glue_s(res)
        group_frac = {int(g): float(f) for g, f in zip(res["out_group"], res["out_frac"]) if int(g) >= 0}
        example_bytes = int(res["dtype_bytes"].iloc[0])
        sram = peak_sram_bytes(graph.activations, group_frac, dtype_scale=DTYPE_BYTES[dtype] / example_bytes,
                               scratch_bytes=self.scratch_bytes(res))
        return Cost(latency_s=total, latency_std_s=total * self.relative_std(),
                    flash_bytes=int(storage["flash_bytes"].sum()), sram_bytes=sram, layers=layers,
                    coverage_gaps=tuple(gaps), model=self.identity)

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "version": self.version,
                "target": getattr(self.target, "identity", str(self.target)),
                "runtime": getattr(self.target, "runtime", None),
                "params": self.params(), "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, target: Any) -> CostModel:
        """Read a file written by :meth:`save` for ``target``; :class:`SpecError` says what is wrong."""
        from costmodels import registry

        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"cost-model file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"cost-model file {path} is not valid JSON ({exc}); delete it to start "
                            "from the analytical model, or restore it") from None
        if data.get("schema_version") != SCHEMA_VERSION:
            raise SpecError(f"cost-model file {path} has schema_version {data.get('schema_version')!r}; "
                            f"this hwsearch reads {SCHEMA_VERSION}: refit it with this version")
        tid = getattr(target, "identity", str(target))
        fitted = str(data.get("target", ""))
        if fitted.split("+")[0] == tid.split("+")[0] and fitted != tid:
            got, want = data.get("runtime") or "its backend", getattr(target, "runtime", None) or "its backend"
            raise SpecError(f"cost-model file {path} was fitted on runtime {got!r} ({fitted}), not {want!r}: "
                            f"latencies of one runtime do not price another — search with --runtime {got}, or "
                            "drop --costmodel to start from the analytical model")
        if fitted != tid:
            raise SpecError(f"cost-model file {path} was fitted for {data.get('target')!r}, not {tid!r}")
        model = registry.make(data.get("kind", "?"), target)
        model.set_params(data.get("params", {}))
        model.provenance = data.get("provenance", {})
        return model


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
