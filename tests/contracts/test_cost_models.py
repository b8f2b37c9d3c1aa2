"""Contract suite for cost models, in the style of ``optuna/testing/pytest_storages.py``: every
registered cost model (:func:`costmodels.names`) runs the same checks through a parametrised
fixture, on a target of its kind, so a model is tested the moment it is registered (a kind
missing from ``CASES`` fails the first test: add how to build it there).

The contract (:class:`costmodels.base.CostModel`): a covered plan gets a finite positive latency
and non-negative bytes; a sparser plan never stores more weights; what a model cannot price
raises :class:`CoverageError` (never a silent zero) — a layer without a figure, an op of
``ModelGraph.uncovered``, an op row (attention, matmul, embedding, norm, softmax) of a kind the model
does not declare in ``priced_op_kinds``; ``refit(samples)`` returns a
:class:`FitReport` and moves predictions toward the samples; ``save`` then ``costmodels.load``
predicts the same, and a file is refused for another target or runtime. Measurements here are
SYNTHETIC (the model's own predictions times a planted factor): the suite checks the contract,
not a model's accuracy (``studies/fidelity``, ``studies/mcu_fidelity`` do that).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import costmodels
from costmodels import CostModel, CostModelError, CostModelFileError, CoverageError, FitReport, Sample
from costmodels.analytical import KINDS
from costmodels.batch import BatchPricer
from costmodels.kernel_cost import KernelModel
from costmodels.kernel_features import KIND_CODES
from costmodels.kernel_predictor import KernelPredictor, device_fingerprint
from costmodels.lut import LUTModel
from costmodels.mcu_cost import McuPlanModel, layer_shape, mcu_fmt, mcu_op
from costmodels.memory import layer_storage
from costmodels.ops import OP_KINDS
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import ModelGraph, analyze
from hwsearch.kernel_sweep import sample_specs
from hwsearch.zoo import MNIST1DNet
from targets.spec import get_target

PLANTED = 2.0  # synthetic "device": every layer PLANTED x slower than the model predicts


def _lut_profile(graph: ModelGraph, skip: str | None = None) -> pd.DataFrame:
    """A SYNTHETIC profile (a planted law) on a 3x3 grid of kept fractions per layer, and an
    unstructured factor of 1, for every layer of ``graph`` but ``skip``."""
    rows = []
    for layer in graph.table.index:
        if layer == skip:
            continue
        for fi in (0.25, 0.5, 1.0):
            for fo in (0.25, 0.5, 1.0):
                rows.append({"layer": layer, "pattern": "dense" if fi == fo == 1.0 else "channel", "ratio": 0.0,
                             "in_frac": fi, "out_frac": fo, "latency_s": 1e-6 * (1 + 4 * fi * fo)})
        for ratio in (0.5, 0.9):
            rows.append({"layer": layer, "pattern": "unstructured", "ratio": ratio, "in_frac": 1.0, "out_frac": 1.0,
                         "latency_s": 5e-6})
    df = pd.DataFrame(rows)
    df.attrs["overhead_s"] = 3e-6
    return df


@dataclass(frozen=True)
class Case:
    """How the suite builds one kind: ``target`` (``get_target`` name), ``build(target, graph)``
    a usable model for ``graph``, ``gap(target, graph)`` a model of this kind that lacks a
    figure for some layer of ``graph`` (``None``: the kind covers every layer row analyze gives,
    ``no_gap_reason`` says why and ``covers_all(model)`` checks it), ``other_target`` one whose
    files it must refuse."""

    target: str
    build: Callable[[Any, ModelGraph], CostModel]
    gap: Callable[[Any, ModelGraph], CostModel] | None
    other_target: str
    no_gap_reason: str = ""
    covers_all: Callable[[CostModel], bool] | None = None


CASES: dict[str, Case] = {
    "roofline": Case(
        "host-x86", lambda t, g: costmodels.make("roofline", t), None, "host-x86+onnxruntime",
        no_gap_reason="every layer kind analyze produces (costmodels.analytical.KINDS) has a figure from the spec "
                      "(efficiency_<kind>, else efficiency_conv) and it prices every op kind: its gaps are the ops of "
                      "ModelGraph.uncovered",
        covers_all=lambda m: set(KINDS) <= set(m.scale)),
    "gpu24": Case(
        "nvidia-h100", lambda t, g: costmodels.make("gpu24", t), None, "nvidia-h200",
        no_gap_reason="it prices every layer with the dense roofline (2:4 only divides by a speed-up): its gaps "
                      "are the roofline's, the ops of ModelGraph.uncovered",
        covers_all=lambda m: set(KINDS) <= set(m.roofline.scale)),
    "lut": Case(
        "host-x86", lambda t, g: LUTModel.from_profile(t, _lut_profile(g)),
        lambda t, g: LUTModel.from_profile(t, _lut_profile(g, skip="dw")), "host-x86+onnxruntime"),
    "mcu": Case(
        "cortex-m4", lambda t, g: costmodels.make("mcu", t),
        lambda t, g: McuPlanModel(t, dtype="fp16"),  # the shipped instruction model has no fp16 kernels
        "cortex-m7"),
    "kernel": Case(
        "host-x86+onnxruntime", lambda t, g: KernelModel(t, predictor=_planted_predictor()), None, "host-x86+torch",
        no_gap_reason="its predictor's features cover every layer kind analyze produces (conv, depthwise, grouped, "
                      "linear) and it prices every op kind through the roofline: its gaps are the ops of "
                      "ModelGraph.uncovered",
        covers_all=lambda m: m.predictor is not None and set(KINDS) <= set(KIND_CODES)),
}


def _planted_predictor() -> KernelPredictor:
    """A kernel predictor fitted on SYNTHETIC kernels (a planted law: 1 µs + MACs at 1 GMAC/s)
    over random shapes of every family, with this machine's fingerprint (no measurement)."""
    specs = sample_specs(60, seed=0)
    return KernelPredictor(np.stack([s.features() for s in specs]), [1e-6 + s.macs() / 1e9 for s in specs],
                           overhead_s=3e-6, fingerprint=device_fingerprint("onnxruntime"))


@pytest.fixture(scope="module")
def graph() -> ModelGraph:
    """The small reference CNN (width 8): conv stem, residual pair, depthwise, pointwise, linear head."""
    torch.manual_seed(0)
    return analyze(MNIST1DNet(8).eval(), torch.zeros(1, 1, 40))


@pytest.fixture(params=costmodels.names())
def kind(request) -> str:
    return request.param


@pytest.fixture
def case(kind: str) -> Case:
    if kind not in CASES:
        pytest.fail(f"cost model {kind!r} is registered but has no Case in tests/contracts/test_cost_models.py")
    return CASES[kind]


@pytest.fixture
def target(case: Case):
    return get_target(case.target)


@pytest.fixture
def model(case: Case, target, graph: ModelGraph) -> CostModel:
    m = case.build(target, graph)
    assert isinstance(m, CostModel)
    return m


def _plans(graph: ModelGraph) -> list[Plan]:
    layers = list(graph.table.index)
    return [Plan(), Plan({n: LayerChoice("unstructured", 0.5) for n in layers}),
            Plan({n: LayerChoice("unstructured", 0.8) for n in layers}), Plan({"pw": LayerChoice("channel", 0.5)}),
            Plan({"stem": LayerChoice("channel", 0.5), "pw": LayerChoice("channel", 0.5)})]


# ---- predict -----------------------------------------------------------------------------------

def test_every_registered_kind_has_a_case_and_makes_its_own_kind(kind, case, target, model):
    assert model.kind == kind and costmodels.make(kind, target).kind == kind


def test_dense_plan_has_finite_positive_latency_and_non_negative_bytes(model, graph):
    cost = model.predict(graph, Plan())
    assert math.isfinite(cost.latency_s) and cost.latency_s > 0
    assert math.isfinite(cost.latency_std_s) and cost.latency_std_s >= 0
    assert cost.flash_bytes > 0 and cost.sram_bytes > 0 and not cost.coverage_gaps
    assert list(cost.layers.index) == list(graph.table.index)
    assert (cost.layers["latency_s"] > 0).all() and (cost.layers["flash_bytes"] >= 0).all()


def test_a_sparser_plan_never_stores_more_weights(model, graph):
    layers = list(graph.table.index)
    dense, u50, u80, pw, both = (model.predict(graph, p) for p in _plans(graph))
    assert u80.flash_bytes <= u50.flash_bytes < dense.flash_bytes
    assert both.flash_bytes <= pw.flash_bytes < dense.flash_bytes
    for layer in layers:  # layer by layer too
        assert u80.layers.at[layer, "flash_bytes"] <= u50.layers.at[layer, "flash_bytes"]
        assert u50.layers.at[layer, "flash_bytes"] <= dense.layers.at[layer, "flash_bytes"]


def test_a_layer_the_model_cannot_price_is_a_coverage_error(case, model, target, graph):
    if case.gap is None:
        # this kind covers every layer row; the claim is checked, and its one gap (an op without a
        # layer row) is the next test
        assert case.no_gap_reason and case.covers_all is not None and case.covers_all(model), case.no_gap_reason
        return
    m = case.gap(target, graph)
    with pytest.raises(CoverageError, match="no latency figure") as err:
        m.predict(graph, Plan())
    assert "\n" not in str(err.value)
    cost = m.predict(graph, Plan(), allow_gaps=True)
    assert cost.coverage_gaps
    assert cost.layers.loc[list(cost.coverage_gaps), "latency_s"].isna().all()  # NaN, never 0


class _TransposedConvNet(nn.Module):
    """A conv, a transposed conv (a compute op hwsearch neither prunes nor prices), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 4, 3, padding=1)
        self.t = nn.ConvTranspose1d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.t(torch.relu(self.c(x)))).flatten(1))


def test_an_op_without_a_layer_row_is_a_coverage_error_for_every_model(case, target):
    g = analyze(_TransposedConvNet().eval(), torch.randn(1, 1, 8))
    assert any("conv_transpose" in u for u in g.uncovered)
    m = case.build(target, g)
    with pytest.raises(CoverageError, match="<conv_transpose"):
        m.predict(g, Plan())
    assert any(gap.startswith("<conv_transpose") for gap in m.predict(g, Plan(), allow_gaps=True).coverage_gaps)


_B, _L, _E, _H = 2, 8, 16, 2


class _TinyEncoder(nn.Module):
    """Every op kind of ``ModelGraph.ops``: embedding, q/k/v → SDPA → o on a residual,
    LayerNorm, attention pooling (softmax over tokens, a matmul), classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, _E)
        self.q, self.k, self.v, self.o = (nn.Linear(_E, _E) for _ in range(4))
        self.ln = nn.LayerNorm(_E)
        self.score, self.head = nn.Linear(_E, 1), nn.Linear(_E, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q, k, v = (p(h).view(_B, _L, _H, _E // _H).transpose(1, 2) for p in (self.q, self.k, self.v))
        h = self.ln(h + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(_B, _L, _E)))
        w = torch.softmax(self.score(h), dim=1)
        return self.head((w.transpose(1, 2) @ h).squeeze(1))


def test_every_op_kind_is_priced_or_a_coverage_gap(case, target):
    """Each op row is either priced (its kind in ``priced_op_kinds``: finite, positive seconds in
    ``Cost.ops`` and in ``latency_s``) or a gap ``"<node (kind)>"`` with NaN — in ``predict`` and in
    the batch pricer alike."""
    torch.manual_seed(0)
    g = analyze(_TinyEncoder().eval(), torch.randint(0, 32, (_B, _L)))
    assert set(g.ops["kind"]) == set(OP_KINDS)
    m = case.build(target, g)
    assert m.priced_op_kinds <= set(OP_KINDS)
    cost = m.predict(g, Plan(), allow_gaps=True)
    for node, kind in zip(g.ops.index, g.ops["kind"]):
        t, gap = cost.ops.at[node, "latency_s"], f"<{node} ({kind})>" in cost.coverage_gaps
        if kind in m.priced_op_kinds:
            assert math.isfinite(t) and t > 0 and not gap, (node, kind)
        else:
            assert math.isnan(t) and gap, (node, kind)
    bp = BatchPricer(g, target, m, dtype=getattr(m, "dtype", "fp32"))
    if cost.coverage_gaps:
        with pytest.raises(CoverageError, match="no latency figure"):
            m.predict(g, Plan())
        with pytest.raises(CoverageError, match="no latency figure"):
            bp.price_plans([Plan()])
    else:
        assert bp.price_plans([Plan()])["latency_s"][0] == pytest.approx(cost.latency_s, rel=1e-9)


def test_batch_pricing_equals_predict(model, target, graph):
    """:class:`BatchPricer` asks the model for its vectorised path (``price_batch``) and loops
    over ``predict`` when it has none: the prices are the same either way."""
    plans = _plans(graph)
    bp = BatchPricer(graph, target, model, dtype=getattr(model, "dtype", "fp32"))
    got = bp.price_plans(plans)
    for i, p in enumerate(plans):
        want = model.predict(graph, p)
        assert got["valid"][i]
        assert got["latency_s"][i] == pytest.approx(want.latency_s, rel=1e-9)
        assert (got["flash_bytes"][i], got["sram_bytes"][i]) == (want.flash_bytes, want.sram_bytes)


# ---- refit -------------------------------------------------------------------------------------

def _mcu_rows(model: McuPlanModel, res: pd.DataFrame, factor: float) -> list[dict[str, Any]]:
    """Per-layer instruction 'measurements' (SYNTHETIC: the model's prediction x ``factor``) in
    the row format ``targets.mcu`` measures."""
    insn, _ = model.layer_instructions(res)
    storage = layer_storage(res, model.dtype)
    return [{"cpu": model.cpu, "op": mcu_op(r), "fmt": mcu_fmt(str(r["pattern"]), str(storage.at[layer, "fmt"])),
             "dtype": model.dtype, "shape": layer_shape(r, int(r["kept_in"]), int(r["kept_out"])),
             "density": float(r["weight_density"]), "instructions": float(n) * factor, "error": ""}
            for (layer, r), n in zip(res.iterrows(), insn)]


def _synthetic_samples(model: CostModel, graph: ModelGraph) -> list[Sample]:
    plans = [Plan(), Plan({"pw": LayerChoice("channel", 0.25)}), Plan({"stem": LayerChoice("channel", 0.25)}),
             Plan({"stem": LayerChoice("channel", 0.25), "pw": LayerChoice("channel", 0.25)})]
    out = []
    for p in plans:
        res = resolve(graph.table, graph.groups, p, channel_multiple=1)
        lat, _ = model.layer_latency(res)
        layer_s = {n: float(t) * PLANTED for n, t in zip(res.index, lat)}
        total = model.predict(graph, p, resolved=res).latency_s * PLANTED
        extra = {"mcu_rows": _mcu_rows(model, res, PLANTED) * 20} if isinstance(model, McuPlanModel) else None
        out.append(Sample(res, total, layer_s, extra))
    return out


def test_refit_returns_a_report_and_moves_predictions_toward_the_samples(model, graph):
    samples = _synthetic_samples(model, graph)
    meas = np.array([s.latency_s for s in samples])

    def predicted() -> np.ndarray:
        return np.array([model.predict(graph, None, resolved=s.resolved).latency_s for s in samples])

    before = predicted()
    report = model.refit(samples)
    after = predicted()
    assert isinstance(report, FitReport) and report.n == len(samples)
    assert np.abs(after - meas).sum() < np.abs(before - meas).sum()
    assert report.mape_after < report.mape_before
    assert model.provenance["fitted_on"] == len(samples)


def test_refit_of_nothing_is_an_error_with_the_fix(model):
    with pytest.raises(CostModelError, match="at least one measured plan") as err:
        model.refit([])
    assert "\n" not in str(err.value)


# ---- files -------------------------------------------------------------------------------------

def test_save_then_load_predicts_the_same(model, target, graph, tmp_path):
    if model.kind != "mcu":  # a refit model round-trips its fitted state too
        model.refit(_synthetic_samples(model, graph))
    path = model.save(tmp_path / "costmodel.json")
    back = costmodels.load(path, target)
    assert type(back) is type(model) and back.kind == model.kind
    assert back.params() == model.params()
    for p in _plans(graph):
        a, b = model.predict(graph, p), back.predict(graph, p)
        assert (b.latency_s, b.flash_bytes, b.sram_bytes) == (a.latency_s, a.flash_bytes, a.sram_bytes)
    assert type(model).load(path, target).predict(graph, Plan()).latency_s == model.predict(graph, Plan()).latency_s


def test_a_file_for_another_target_or_runtime_is_refused(model, case, tmp_path):
    path = model.save(tmp_path / "costmodel.json")
    other = get_target(case.other_target)
    with pytest.raises(CostModelFileError, match="fitted (on runtime|for)") as err:
        costmodels.load(path, other)
    assert "\n" not in str(err.value)


def test_a_file_of_another_kind_is_refused_by_a_model_class(model, target, tmp_path):
    path = model.save(tmp_path / "costmodel.json")
    other = LUTModel if model.kind != "lut" else McuPlanModel
    with pytest.raises(CostModelFileError, match=f"holds a '{model.kind}' model.*costmodels.load"):
        other.load(path, target)
