"""The kernel-level predictor (``hwsearch sweep`` → ``costmodels.kernel_predictor`` → the ``kernel``
cost model): features agree between the sweep and the search, the file round-trips and is
refused on another device, runtime, version or schema with the fix, the sweep runs on a tiny
grid, the model calibrates on one dense measurement, and round 1 of a search uses the device's
predictor when there is one. Latencies here are SYNTHETIC (a planted law) except in the tiny
sweep, which measures (its numbers are only checked for being positive and finite)."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import costmodels
from costmodels.base import Sample
from costmodels.batch import BatchPricer
from costmodels.errors import CostModelError, CostModelFileError
from costmodels.kernel_cost import KernelModel
from costmodels.kernel_features import FEATURES, resolved_features
from costmodels.kernel_predictor import (KernelPredictor, PredictorMismatchError, default_path, device_fingerprint,
                                         find_for_device)
from hwsearch import cli
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import analyze
from hwsearch.kernel_sweep import KernelSpec, SweepConfig, build_onnx, sample_specs, sweep
from hwsearch.searching import SearchConfig, fit_cost_model
from hwsearch.zoo import MNIST1DNet
from targets.spec import get_target


def _planted(n: int = 80, seed: int = 0, **fp_over) -> KernelPredictor:
    """A predictor on SYNTHETIC kernels: 1 µs + MACs at 1 GMAC/s (no measurement)."""
    specs = sample_specs(n, seed=seed)
    fp = device_fingerprint("onnxruntime") | fp_over
    return KernelPredictor(np.stack([s.features() for s in specs]), [1e-6 + s.macs() / 1e9 for s in specs],
                           overhead_s=4e-6, fingerprint=fp, meta={"synthetic": True})


@pytest.fixture(scope="module")
def planted() -> KernelPredictor:
    return _planted()


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return analyze(MNIST1DNet(8).eval(), torch.zeros(1, 1, 40))


# ---- features: the sweep's kernels are the search's layers ------------------------------------

class _Conv1dBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Conv1d(12, 24, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(24)

    def forward(self, x):
        return torch.relu(self.bn(self.c(x)))


class _Dw2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)

    def forward(self, x):
        return F.hardtanh(self.bn(self.c(x)), 0.0, 6.0)


class _TokenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 48)

    def forward(self, x):
        return F.gelu(self.fc(x))


@pytest.mark.parametrize("module, x, spec", [
    (_Conv1dBnRelu, (1, 12, 30), KernelSpec("conv1d", 12, 24, 5, 2, 30, "batch_norm+relu")),
    (_Dw2d, (1, 16, 9, 9), KernelSpec("dw2d", 16, 16, 3, 1, 9, "batch_norm+hardtanh")),
    (_TokenLinear, (1, 10, 32), KernelSpec("linear", 32, 48, 1, 1, 10, "gelu")),
])
def test_a_swept_kernel_has_the_features_of_the_same_layer_in_a_model(module, x, spec):
    g = analyze(module().eval(), torch.randn(*x))
    res = resolve(g.table, g.groups, Plan())
    assert resolved_features(res).shape == (1, len(FEATURES))
    np.testing.assert_allclose(resolved_features(res)[0], spec.features(), rtol=0, atol=1e-9)


def test_batch_features_equal_plan_by_plan(planted, graph):
    target = get_target("host-x86+onnxruntime")
    m = KernelModel(target, predictor=planted)
    bp = BatchPricer(graph, target, m)
    assert bp.vectorised
    codes, ratios = bp.random_arrays(40, seed=3)
    got = bp.price(codes, ratios)
    plans = bp.arrays_to_plans(codes, ratios)
    for i in np.flatnonzero(got["valid"])[:12]:
        assert got["latency_s"][i] == pytest.approx(m.predict(graph, plans[i]).latency_s, rel=1e-9)


def test_every_sampled_kernel_builds_a_graph_onnxruntime_runs():
    import onnxruntime as ort

    for spec in sample_specs(10, seed=5):
        sess = ort.InferenceSession(build_onnx(spec, 2), providers=["CPUExecutionProvider"])
        feed = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
        outs = sess.run(None, feed)
        assert len(outs) == (1 if spec.ndim == 2 else 2) and all(o.shape == spec.out_shape() for o in outs), spec


# ---- the file ------------------------------------------------------------------------------------

def test_save_then_load_predicts_the_same(planted, tmp_path):
    path = planted.save(tmp_path / "p.json")
    back = KernelPredictor.load(path)
    x = np.stack([s.features() for s in sample_specs(15, seed=9)])
    np.testing.assert_array_equal(back.predict(x), planted.predict(x))
    assert back.overhead_s == planted.overhead_s and back.fingerprint == planted.fingerprint
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["fingerprint"]["runtime"] == "onnxruntime"
    assert {"sklearn", "numpy", "python"} <= set(data["versions"]) and data["date"]


@pytest.mark.parametrize("field, value", [("cpu", "Some Other CPU @ 9.9GHz"), ("cores", 128),
                                          ("runtime_version", "0.0.1"), ("runtime", "torch")])
def test_a_file_from_another_device_or_runtime_is_refused_with_the_fix(tmp_path, field, value):
    data = _planted().to_dict()
    data["fingerprint"][field] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorMismatchError, match=rf"{field} .*re-run the sweep") as err:
        KernelPredictor.load(path, runtime="onnxruntime")
    assert "\n" not in str(err.value) and "hwsearch sweep" in str(err.value)


@pytest.mark.parametrize("key, value, match", [("schema_version", 99, "schema_version 99"),
                                                ("features", ["a", "b"], "other features"),
                                                ("kind", "something-else", "not a kernel predictor")])
def test_another_schema_or_file_is_refused_with_the_fix(tmp_path, key, value, match):
    data = _planted().to_dict()
    data[key] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CostModelFileError, match=match) as err:
        KernelPredictor.load(path)
    assert "\n" not in str(err.value) and "hwsearch sweep" in str(err.value)


def test_the_device_finds_its_predictor_in_the_cache_and_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path))
    pred, note = find_for_device("onnxruntime")
    assert pred is None and "hwsearch sweep --runtime onnxruntime" in note and "\n" not in note
    saved = _planted().save()
    assert saved == default_path(device_fingerprint("onnxruntime")) and saved.parent == tmp_path
    pred, note = find_for_device("onnxruntime")
    assert pred is not None and str(saved) in note


# ---- the sweep -----------------------------------------------------------------------------------

def test_a_tiny_sweep_measures_kernels_and_writes_a_loadable_predictor(tmp_path):
    res = sweep(SweepConfig.tiny_grid(), out=tmp_path / "pred.json")
    ok = res.table[res.table["error"] == ""]
    assert len(res.table) == 16 and len(ok) >= 12  # 12 initial + 4 adaptive
    assert (ok["latency_s"] > 0).all() and np.isfinite(ok["graph_s"]).all()
    assert res.wall_s < 60 and res.predictor.overhead_s > 0
    back = KernelPredictor.load(res.path)
    assert back.meta["kernels"] == len(ok) and back.meta["wall_s"] == pytest.approx(res.wall_s)
    assert np.all(back.predict(back.rows) > 0)


def test_adaptive_rounds_pick_where_the_trees_disagree(planted):
    from hwsearch.kernel_sweep import _most_uncertain

    cfg = SweepConfig(per_round=10, pool=300)
    picks = _most_uncertain(planted, cfg, 1)
    pool = sample_specs(cfg.pool, seed=cfg.seed + 1000 * 2, latin=False)
    spread = planted.ensemble_spread(np.stack([s.features() for s in pool]), seed=cfg.seed + 1)
    picked = planted.ensemble_spread(np.stack([s.features() for s in picks]), seed=cfg.seed + 1)
    assert len(picks) == 10 and np.median(picked) > np.median(spread)


@pytest.mark.parametrize("kw", [{"budget_minutes": 0}, {"initial": 2}, {"runtime": "tvm"}])
def test_bad_sweep_settings_are_one_line_errors(kw):
    with pytest.raises(CostModelError) as err:
        SweepConfig(**kw)
    assert "\n" not in str(err.value)


def test_cli_sweep_with_bad_settings_exits_2_with_one_line(capsys):
    assert cli.main(["sweep", "--budget-minutes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget_minutes" in err[0]


# ---- the cost model ------------------------------------------------------------------------------

def test_dense_calibration_gives_absolute_latency_and_keeps_speedups(planted, graph):
    target = get_target("host-x86+onnxruntime")
    m = KernelModel(target, predictor=planted)
    dense = resolve(graph.table, graph.groups, Plan())
    half = resolve(graph.table, graph.groups, Plan({"pw": LayerChoice("channel", 0.5)}))
    p_dense, p_half = m.total_latency(dense), m.total_latency(half)
    assert p_half < p_dense
    lat, _ = m.layer_latency(dense)  # per-layer times too: one sample still calibrates the scale only
    m.refit([Sample(dense, 3.0 * p_dense, {n: 5.0 * float(t) for n, t in zip(dense.index, lat)})])
    assert m.total_latency(dense) == pytest.approx(3.0 * p_dense)
    assert m.total_latency(dense) / m.total_latency(half) == pytest.approx(p_dense / p_half)


def test_per_layer_refit_corrects_the_measured_kernel(planted, graph):
    target = get_target("host-x86+onnxruntime")
    m = KernelModel(target, predictor=planted)
    dense = resolve(graph.table, graph.groups, Plan())
    half = resolve(graph.table, graph.groups, Plan({"pw": LayerChoice("channel", 0.5)}))
    samples = []
    for res in (dense, half):
        lat, _ = m.layer_latency(res)
        layer_s = {n: float(t) * (4.0 if n == "res1" else 1.0) for n, t in zip(res.index, lat)}
        samples.append(Sample(res, sum(layer_s.values()) + 10e-6, layer_s))
    m.refit(samples)
    after, _ = m.layer_latency(dense)
    assert after[list(dense.index).index("res1")] == pytest.approx(samples[0].layer_s["res1"])
    assert m.total_latency(dense) == pytest.approx(samples[0].latency_s)
    assert m.total_latency(half) == pytest.approx(samples[1].latency_s)


def test_a_predictor_of_another_runtime_is_refused():
    with pytest.raises(CostModelError, match="--runtime onnxruntime"):
        KernelModel(get_target("host-x86+torch"), predictor=_planted())


def test_without_a_predictor_pricing_says_how_to_make_one(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path))
    m = KernelModel(get_target("host-x86+onnxruntime"))
    assert m.predictor is None
    with pytest.raises(CostModelError, match="hwsearch sweep"):
        m.predict(graph, Plan())


# ---- round 1 of a search ---------------------------------------------------------------------------

def test_round_one_uses_the_device_predictor_when_there_is_one(graph, tmp_path, monkeypatch, caplog):
    import hwsearch.searching.refit as refit

    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(refit, "_SAID", set())
    monkeypatch.setattr(logging.getLogger(refit.__name__), "propagate", True)  # the CLI test may have routed it
    target = get_target("host-x86+onnxruntime")
    cfg = SearchConfig(target="host-x86", out_dir=tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="hwsearch.searching.refit"):
        cm, report = fit_cost_model(target, graph, [], cfg)
    assert cm.kind == "roofline" and report is None
    assert any("hwsearch sweep --runtime onnxruntime" in r.getMessage() for r in caplog.records)
    _planted().save()
    cm, _ = fit_cost_model(target, graph, [], cfg)
    assert cm.kind == "kernel" and cm.predictor is not None
    assert math.isfinite(cm.predict(graph, Plan()).latency_s)
    tvm_cm, _ = fit_cost_model(get_target("host-x86"), graph, [], cfg)  # TVM: no sweep for it
    assert tvm_cm.kind == "roofline"
