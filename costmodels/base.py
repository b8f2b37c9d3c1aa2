"""The cost-model contract.

A :class:`CostModel` prices a plan on one target: ``predict(graph, plan) -> Cost`` with latency
in seconds, weight storage and peak activation memory in bytes, and an uncertainty. It must
cover every layer of the table or say which it does not (``coverage_gaps`` — a gap is never a
silent zero: :meth:`CostModel.predict` raises :class:`CoverageError` unless
``allow_gaps=True``). ``refit(samples)`` fits corrections from measured plans (:class:`Sample`)
and returns a :class:`FitReport`; ``save`` writes a versioned JSON file with provenance that
``costmodels.load`` reads back. ``price_batch`` is an optional vectorised path for many plans
at once (:class:`PlanArrays` in, :class:`BatchLatency` out; ``None``: the model has none).

Everything a cost model raises for its user is a :class:`CostModelError` (one line: what is
wrong and how to fix it; :mod:`costmodels.errors`). Of :mod:`costmodels` this module imports only
the leaves :mod:`costmodels.errors` and :mod:`costmodels.memory` (exact storage and peak-activation
bytes), never the package, the registry or a model.
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

from costmodels.errors import CostModelError, CostModelFileError, CoverageError
from costmodels.memory import DTYPE_BYTES, layer_storage, peak_sram_bytes
from costmodels.ops import head_fraction, kept_fraction, op_gaps, op_table
from hwsearch.core.resolve import resolve

__all__ = ["Cost", "CostModel", "CostModelError", "CoverageError", "CostModelFileError", "FitReport", "Sample",
           "PlanArrays", "BatchLatency", "fidelity", "read_model_file", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One measured plan for a refit: its resolved table (:func:`hwsearch.core.resolve.resolve`),
    the measured whole-model latency in seconds (already brought to the dense baseline's scale
    when the machine drifted) and, when the backend timed layers alone, ``layer_s``
    {layer: seconds}; ``extra``: backend-specific evidence, e.g. ``{"mcu_rows": [...]}`` per-layer
    instruction counts; ``ops``: the measured model's op rows (``ModelGraph.ops``), so a refit
    can correct the price of its attention, matmul, embedding, norm and softmax ops (``None``: the
    measured total holds no op the model prices)."""

    resolved: pd.DataFrame
    latency_s: float
    layer_s: dict[str, float] | None = None
    extra: dict | None = None
    ops: pd.DataFrame | None = None


@dataclass(frozen=True)
class PlanArrays:
    """``P`` plans on one model's ``L`` layers, resolved array-wise: the input of
    :meth:`CostModel.price_batch`. Every ``P × L`` array holds what
    :func:`hwsearch.core.resolve.resolve` gives per plan in the column of the same name; entries
    of plans that ``resolve`` would refuse hold arbitrary finite numbers (the caller masks them).

    Per layer (length ``L``): ``layers`` (names), ``kind`` (conv, depthwise, grouped, linear),
    ``static`` (:func:`costmodels.kernels.static_signature`), ``example_bytes`` (bytes per element
    of the analysed example's dtype). ``patterns``: the pattern name of each code in ``codes``.
    ``P × L``: ``codes`` (int64), ``kept_in``, ``kept_out``, ``rows2d`` / ``cols2d`` (the kept
    weight's 2-D view), ``dense_weights``, ``dense_macs``, ``nnz`` (int64), ``density`` (float, weight density; 1 for dense and channel),
    ``weight_level`` (bool: a weight-level pattern), ``act_in_bytes_kept`` /
    ``act_out_bytes_kept`` (float, bytes in the example's dtype). Ops (``ModelGraph.ops``, ``O``
    rows; ``None`` / empty: the graph has none): ``ops`` and ``op_frac`` (``P × O``, the kept
    fraction of each op, :func:`costmodels.ops.kept_fraction` per plan)."""

    layers: tuple[str, ...]
    kind: np.ndarray
    static: tuple[str, ...]
    example_bytes: np.ndarray
    patterns: tuple[str, ...]
    codes: np.ndarray
    kept_in: np.ndarray
    kept_out: np.ndarray
    rows2d: np.ndarray
    cols2d: np.ndarray
    dense_weights: np.ndarray
    dense_macs: np.ndarray
    nnz: np.ndarray
    density: np.ndarray
    weight_level: np.ndarray
    act_in_bytes_kept: np.ndarray
    act_out_bytes_kept: np.ndarray
    ops: pd.DataFrame | None = None
    op_frac: np.ndarray | None = None


@dataclass(frozen=True)
class BatchLatency:
    """What :meth:`CostModel.price_batch` returns: ``layer_latency_s`` (``P × L`` seconds, NaN for
    a layer not covered), ``latency_s`` (``P`` seconds per plan, as :meth:`CostModel.predict`'s
    ``latency_s``: priced ops included), ``coverage_gaps`` (names of the layers not covered, and
    ``"<node (kind)>"`` of the ops not priced) and ``op_latency_s`` (``P × O`` seconds of the ops,
    NaN for one not priced; ``None`` when the graph has no op)."""

    layer_latency_s: np.ndarray
    latency_s: np.ndarray
    coverage_gaps: tuple[str, ...]
    op_latency_s: np.ndarray | None = None


@dataclass(frozen=True)
class Cost:
    """Predicted cost of one plan. ``latency_s`` ± ``latency_std_s`` (1σ, relative error of the
    model on its fit data times the prediction), ``flash_bytes`` (weights as stored),
    ``sram_bytes`` (peak live activations), ``layers`` (per-layer ``latency_s`` and storage),
    ``coverage_gaps`` (layers priced as unknown, and ``"<node (kind)>"`` of compute ops without a
    layer row the model does not price), ``model`` (name@version of the cost model), ``ops`` (per
    op row of ``ModelGraph.ops``: ``kind`` and ``latency_s``, NaN for a gap; ``latency_s``
    includes the priced ones)."""

    latency_s: float
    latency_std_s: float
    flash_bytes: int
    sram_bytes: int
    layers: pd.DataFrame
    coverage_gaps: tuple[str, ...]
    model: str
    instructions: int | None = None
    ops: pd.DataFrame | None = None


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

    @classmethod
    def of(cls, before: np.ndarray, after: np.ndarray, measured: np.ndarray, *, layer_rows: int = 0,
           params: dict[str, Any] | None = None) -> FitReport:
        """The report of a refit from its predictions ``before`` and ``after`` it and the
        ``measured`` latencies of the same plans (seconds)."""
        fb, fa = fidelity(before, measured), fidelity(after, measured)
        return cls(n=len(measured), mape_before=fb["mape"], mape_after=fa["mape"], within10_before=fb["within10"],
                   within10_after=fa["within10"], within5_after=fa["within5"], kendall_tau_after=fa["kendall_tau"],
                   layer_rows=layer_rows, params=dict(params or {}))


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
    """Base class of every cost model, and its contract.

    A subclass sets ``kind`` (the registry key stored in its file) and implements
    :meth:`layer_latency`, :meth:`model_overhead_s`, :meth:`params` / :meth:`set_params` and
    :meth:`refit`; it may override :meth:`glue_s`, :meth:`scratch_bytes`, :meth:`relative_std`
    and :meth:`price_batch`. A model that prices compute ops without a layer row
    (``ModelGraph.ops``: attention, matmul, embedding, norm, softmax) names their kinds in
    ``priced_op_kinds`` and implements :meth:`op_latency`; every op row of another kind is a
    coverage gap ``"<node (kind)>"``. Guarantees every model keeps
    (``tests/contracts/test_cost_models.py`` checks them on every registered model):

    * :meth:`predict` gives a finite, positive ``latency_s`` (seconds) and non-negative bytes for a
      plan it covers, and raises :class:`CoverageError` for one it does not (never a silent zero):
      a layer without a figure, an op of ``ModelGraph.uncovered``, an op row of a kind not in
      ``priced_op_kinds``;
    * weights as stored never grow when a plan gets sparser (same layers, higher ratios);
    * :meth:`refit` moves predictions toward the measured samples and reports by how much;
    * ``save`` then ``costmodels.load`` gives a model that predicts the same; a file is refused
      (:class:`CostModelFileError`) for another target or runtime.

    A model is not thread-safe while it refits; :meth:`predict` and :meth:`price_batch` only read it.
    """

    kind = "base"
    version = 1
    #: The kinds of ``ModelGraph.ops`` rows (:data:`costmodels.ops.OP_KINDS`) :meth:`op_latency`
    #: prices; rows of any other kind are coverage gaps. Empty: the model prices no op.
    priced_op_kinds: frozenset[str] = frozenset()
    #: Whether the model prices ``ModelGraph.glue`` rows (kind ``glue``) as ops of their own: they
    #: are then in the op table it gets (:func:`costmodels.ops.op_table` with ``glue=True``); the
    #: other models absorb glue in their overhead and glue terms.
    prices_glue: bool = False
    #: How :meth:`load` called on this base class builds the model a file names. Set by
    #: :mod:`costmodels.registry` when it is imported (this module imports nothing of costmodels).

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
        """Restore parameters saved by :meth:`params`; raise :class:`CostModelFileError` on bad content."""

    @abstractmethod
    def refit(self, samples: list[Sample]) -> FitReport:
        """Fit corrections from measured plans (:class:`Sample`: a resolved plan, its measured
        latency in seconds, per-layer seconds where the runtime's profiler gave them, backend
        extras). Returns the fit's report (errors before and after on ``samples``); raises
        :class:`CostModelError` for an empty list or samples it cannot use. A subclass may add
        keyword-only options."""

    def _require_samples(self, samples: list[Sample]) -> None:
        """Raise :class:`CostModelError` for an empty refit."""
        if not samples:
            raise CostModelError(f"refit of the {self.kind} cost model needs at least one measured plan; "
                                 "measure some plans (hwsearch search measures each round's winners) and refit")

    def price_batch(self, arrays: PlanArrays) -> BatchLatency | None:
        """Latency of many plans at once (:class:`PlanArrays` in, :class:`BatchLatency` out), equal
        to :meth:`predict`'s per plan up to floating-point rounding; ``None`` (this default): the
        model has no vectorised path and the caller prices plan by plan. Whether it returns
        ``None`` depends on the model only, never on ``arrays`` (a caller may ask with an empty
        batch). Parameters are read at each call, so a refit is seen."""
        return None

    def op_latency(self, ops: pd.DataFrame, kept: np.ndarray, example_bytes: float) -> np.ndarray:
        """Seconds of every op row of ``ops`` (``ModelGraph.ops``) when a plan keeps ``kept`` of it
        (:func:`costmodels.ops.kept_fraction`; shape ``(O,)``, or ``(P, O)`` for ``P`` plans: the
        result has its shape); ``example_bytes``: bytes per element of the analysed example (the
        op table's byte counts are in that dtype). NaN for a row of a kind not in
        ``priced_op_kinds`` — this default: NaN everywhere, the model prices no op."""
        return np.full(np.shape(kept), math.nan)

    def plan_op_latency(self, ops: pd.DataFrame, resolved: pd.DataFrame) -> np.ndarray:
        """:meth:`op_latency` of the op rows ``ops`` under a resolved plan (its ``out_frac`` per
        ``out_group`` shrinks the ops fed by a pruned group); NaN where a kind is not priced."""
        if len(ops) == 0:
            return np.zeros(0)
        lat = np.asarray(self.op_latency(ops, kept_fraction(ops, _leader_frac(resolved), head_fraction(resolved)),
                                         float(resolved["dtype_bytes"].iloc[0])), dtype=float)
        return np.where([k in self.priced_op_kinds for k in ops["kind"]], lat, math.nan)

    def relative_std(self) -> float:
        return float(self.provenance.get("relative_std", 0.3))

    def scratch_bytes(self, resolved: pd.DataFrame) -> int:
        """Kernel scratch memory added to the peak activations (0 unless a target knows it)."""
        return 0

    def predict(self, graph: Any, plan: Any, *, dtype: str | None = None, channel_multiple: int = 8,
                min_density: float = 0.0, allow_gaps: bool = False, resolved: pd.DataFrame | None = None) -> Cost:
        """Price ``plan`` on ``graph`` (a :class:`hwsearch.graph.ModelGraph`); ``dtype`` defaults
        to the model's deployment dtype (``self.dtype``). Raises :class:`CoverageError` naming the
        layers (and ``"<ops>"`` without a layer row) it has no figure for, unless ``allow_gaps``;
        the ops it prices (``ModelGraph.ops`` rows of ``priced_op_kinds``) are in ``latency_s``."""
        dtype = dtype or getattr(self, "dtype", "fp32")
        res = resolved if resolved is not None else resolve(graph.table, graph.groups, plan,
                                                             channel_multiple=channel_multiple,
                                                             min_density=min_density)
        lat, gaps = self.layer_latency(res)
        ops = op_table(graph, glue=self.prices_glue)
        op_lat = self.plan_op_latency(ops, res)
        gaps = list(gaps) + [f"<{u}>" for u in getattr(graph, "uncovered", ())] + op_gaps(ops, self.priced_op_kinds,
                                                                                           op_lat)
        if gaps and not allow_gaps:
            raise CoverageError(f"cost model {self.kind} has no latency figure for layers {gaps} "
                                f"(kinds {sorted(set(res.loc[[g for g in gaps if g in res.index], 'kind']))}; "
                                "<ops> are compute ops without a layer row); refit it with measurements "
                                "of those layers, price them with a model that does, or use allow_gaps=True "
                                "to report them")
        storage = layer_storage(res, dtype)
        layers = pd.DataFrame({"latency_s": lat, "flash_bytes": storage["flash_bytes"], "fmt": storage["fmt"]},
                              index=res.index)
        total = float(np.nansum(lat)) + self.model_overhead_s() + self.glue_s(res)
        if len(ops):
            total += float(np.nansum(op_lat))
        group_frac = _group_frac(res)
        example_bytes = int(res["dtype_bytes"].iloc[0])
        sram = peak_sram_bytes(graph.activations, group_frac, dtype_scale=DTYPE_BYTES[dtype] / example_bytes,
                               scratch_bytes=self.scratch_bytes(res))
        return Cost(latency_s=total, latency_std_s=total * self.relative_std(),
                    flash_bytes=int(storage["flash_bytes"].sum()), sram_bytes=sram, layers=layers,
                    coverage_gaps=tuple(gaps), model=self.identity,
                    ops=pd.DataFrame({"kind": ops["kind"].to_numpy(), "latency_s": op_lat}, index=ops.index))

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

    def restore(self, data: dict[str, Any]) -> None:
        """Take the parameters and provenance of a file's content (:func:`read_model_file`)."""
        self.set_params(data.get("params", {}))
        self.provenance = data.get("provenance", {})

    @classmethod
    def load(cls, path: str | Path, target: Any) -> CostModel:
        """Read a file written by :meth:`save` for ``target`` into a model of this class
        (``RooflineModel.load``); :class:`CostModelFileError` says what is wrong, including a file
        of another kind. ``costmodels.load(path, target)`` reads a file of any registered kind."""
        data = read_model_file(path, target)
        kind = data.get("kind", "?")
        if cls is CostModel:
            raise CostModelFileError(f"cost-model file {path}: CostModel is the contract, not a model; read a "
                                     f"{kind!r} model with costmodels.load(path, target)")
        if kind != cls.kind:
            raise CostModelFileError(f"cost-model file {path} holds a {kind!r} model, not {cls.kind!r}; "
                                     "read it with costmodels.load(path, target)")
        model = cls(target)
        model.restore(data)
        return model


def _channel_rows(resolved: pd.DataFrame) -> pd.DataFrame:
    """Rows whose width is set by channel groups (not by pruned attention heads, which shrink
    the ops through :func:`costmodels.ops.head_fraction` and leave activations at full width)."""
    if "head_pruned" not in resolved.columns:
        return resolved
    return resolved[~resolved["head_pruned"].astype(bool)]


def _group_frac(resolved: pd.DataFrame) -> dict[int, float]:
    """Kept fraction (``out_frac``) of every channel group a resolved plan's layers produce."""
    r = _channel_rows(resolved)
    return {int(g): float(f) for g, f in zip(r["out_group"], r["out_frac"]) if int(g) >= 0}


def _leader_frac(resolved: pd.DataFrame) -> dict[int, float]:
    """Kept fraction of every channel group: its leader's ``out_frac`` (the group's width is the
    leader's; a member of another width, as analysis can give, does not override it)."""
    if "group_leader" not in resolved.columns:
        return _group_frac(resolved)
    r = _channel_rows(resolved)
    lead = r[r["group_leader"].astype(bool)]
    return {int(g): float(f) for g, f in zip(lead["out_group"], lead["out_frac"]) if int(g) >= 0}


def read_model_file(path: str | Path, target: Any) -> dict[str, Any]:
    """The content of a cost-model file written by :meth:`CostModel.save`, checked: it exists,
    is JSON, has this ``schema_version`` and was fitted for ``target`` (same name, version and
    runtime). Raises :class:`CostModelFileError` saying what is wrong and how to fix it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CostModelFileError(f"cost-model file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise CostModelFileError(f"cost-model file {path} is not valid JSON ({exc}); delete it to start "
                                 "from the analytical model, or restore it") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise CostModelFileError(f"cost-model file {path} has schema_version {data.get('schema_version')!r}; "
                                 f"this hwsearch reads {SCHEMA_VERSION}: refit it with this version")
    tid = getattr(target, "identity", str(target))
    fitted = str(data.get("target", ""))
    if fitted.split("+")[0] == tid.split("+")[0] and fitted != tid:
        got, want = data.get("runtime") or "its backend", getattr(target, "runtime", None) or "its backend"
        raise CostModelFileError(f"cost-model file {path} was fitted on runtime {got!r} ({fitted}), not {want!r}: "
                                 f"latencies of one runtime do not price another — search with --runtime {got}, "
                                 "or drop --costmodel to start from the analytical model")
    if fitted != tid:
        raise CostModelFileError(f"cost-model file {path} was fitted for {data.get('target')!r}, not {tid!r}")
    return data


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
