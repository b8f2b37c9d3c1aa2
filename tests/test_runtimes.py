"""Deployment runtimes: real ONNX Runtime and torch sittings (not mocked), the dense model once
per sitting, no speed-up for a configuration identical to dense, and the search measuring in
the fastest runtime with every speed-up against it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hwsearch import deploy, prune
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from targets.runtimes import SittingConfig, SittingResult, measure_sitting
from targets.spec import get_target

FAST = SittingConfig(passes=2, rounds=4, min_sample_ms=2.0, profile_runs=5)


def _folded(graph, plan, multiple=4):
    return prune.apply(graph, prune.decide(graph, plan, channel_multiple=multiple), mode="fold")


def test_onnxruntime_and_torch_sitting_is_real(resdw, tmp_path):
    model, x = resdw
    g = analyze(model, x)
    half = _folded(g, Plan({"c1": LayerChoice("channel", 0.5), "pw": LayerChoice("channel", 0.5)}))
    res = measure_sitting({"dense": model, "half": half}, (x,), work_dir=tmp_path, runtimes=("onnxruntime", "torch"),
                          reference="dense", config=FAST)
    assert set(res) == {(k, rt) for k in ("dense", "half") for rt in ("onnxruntime", "torch")}
    for (key, rt), r in res.items():
        assert r.error is None, r.error
        assert r.latency_s is not None and 0 < r.latency_s < 1.0
        assert r.samples == FAST.passes * FAST.rounds and r.passes == FAST.passes
        assert r.max_abs_err is not None and r.max_abs_err < 1e-3
        assert r.versions[rt] and r.device and r.date
        assert r.speedup is not None and r.speedup_lo <= r.speedup <= r.speedup_hi
    # the reference divided by itself, round by round
    assert res[("dense", "onnxruntime")].speedup == 1.0
    # ONNX Runtime's profiler gives per-layer times, scaled to the measured total
    layers = res[("half", "onnxruntime")].layer_s
    assert set(layers) == set(g.table.index)
    assert 0 < sum(layers.values()) <= res[("half", "onnxruntime")].latency_s * 1.0001
    assert res[("half", "torch")].layer_s == {}  # no profiler: no per-layer times, never zeros
    # round trip of the record
    r = res[("half", "onnxruntime")]
    assert SittingResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_a_failing_configuration_is_a_record_and_the_sitting_goes_on(resdw, tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model, x = resdw
    res = measure_sitting({"dense": model, "bad": Broken()}, (x,), work_dir=tmp_path, runtimes=("onnxruntime",),
                          reference="dense", config=SittingConfig(passes=1, rounds=2, min_sample_ms=1.0))
    assert res[("bad", "onnxruntime")].latency_s is None
    assert "does not run" in res[("bad", "onnxruntime")].error and "boom" in res[("bad", "onnxruntime")].error
    assert res[("dense", "onnxruntime")].error is None and res[("dense", "onnxruntime")].latency_s > 0


def test_bad_sitting_config_is_refused():
    with pytest.raises(ValueError, match="passes"):
        SittingConfig(passes=0)
    with pytest.raises(ValueError, match="unknown runtimes"):
        measure_sitting({}, (), work_dir=Path("."), runtimes=("tflite",))


def test_round_measures_dense_once_and_gives_identical_configurations_no_speedup(resdw, tmp_path, monkeypatch):
    """measure_round: one sitting holds the dense model once and each distinct configuration once;
    a pick identical to dense has no speed-up; picks that fold alike share a measurement."""
    model, x = resdw
    g = analyze(model, x)
    target = get_target("host-x86+onnxruntime")
    half_plan = Plan({"c1": LayerChoice("channel", 0.5)})
    half = _folded(g, half_plan)
    seen: list[dict] = []
    import targets.runtimes as rt_mod

    real = rt_mod.measure_sitting

    def spy(models, *a, **kw):  # a spy around the real sitting: records what is measured
        seen.append(dict(models))
        return real(models, *a, **kw)

    monkeypatch.setattr(rt_mod, "measure_sitting", spy)  # deploy imports it at call time
    picks = [("same-as-dense", model, ("D",)), ("half-a", half, ("H",)), ("half-b", half, ("H",))]
    dense, by_key = deploy.measure_round(target, g, picks, ("D",), work_dir=tmp_path, baseline=None, passes=1,
                                         rounds=3, sitting_id="t")
    assert len(seen) == 1 and sorted(seen[0]) == ["c1", "dense"]  # dense once, the shared config once
    assert dense["latency_s"] > 0 and dense["runtime"] == "onnxruntime" and dense["sitting"] == "t"
    same = by_key["same-as-dense"]
    assert same["identical_to_dense"] and "speedup_same_runtime" not in same and "speedup_vs_fastest" not in same
    assert deploy.speedup_text(same) == "= dense"
    assert by_key["half-b"]["same_configuration_as"] == "half-a"
    assert by_key["half-a"]["latency_s"] == by_key["half-b"]["latency_s"]
    assert by_key["half-a"]["speedup_lo"] <= by_key["half-a"]["speedup_same_runtime"] <= by_key["half-a"]["speedup_hi"]


def test_speedup_text_says_no_measurable_change_when_the_spread_includes_one():
    assert deploy.speedup_text({"identical_to_dense": True, "speedup_vs_fastest": 1.3}) == "= dense"
    assert deploy.speedup_text({"speedup_vs_fastest": 1.02, "speedup_vs_fastest_lo": 0.97,
                                "speedup_vs_fastest_hi": 1.08, "no_measurable_change": True}) == "no measurable change"
    assert deploy.speedup_text({"speedup_vs_fastest": 1.42, "speedup_vs_fastest_lo": 1.35,
                                "speedup_vs_fastest_hi": 1.5}) == "1.42× (1.35–1.50)"
    assert deploy.speedup_text({}) == "—"


def test_baseline_chooses_the_fastest_deployment_runtime_never_tvm_quick():
    base = deploy.DenseBaseline(latency_s={"onnxruntime": 50e-6, "torch": 400e-6, "tvm": 20e-6},
                                iqr_s={}, eligible={"onnxruntime": True, "torch": True, "tvm": False},
                                notes={}, versions={}, fastest="onnxruntime")
    assert deploy.choose_runtime("auto", base, get_target("host-x86")) == ("onnxruntime",
                                                                          "fastest dense model when the search started")
    assert deploy.choose_runtime("torch", base, get_target("host-x86"))[0] == "torch"
    assert base.ratio_to_fastest("torch") == pytest.approx(8.0)
    assert any("exploration proxy" in line for line in base.lines())
    assert deploy.DenseBaseline.from_dict(json.loads(json.dumps(base.to_dict()))) == base


def test_dense_baseline_times_each_runtime(resdw, tmp_path):
    model, x = resdw
    g = analyze(model, x)
    base = deploy.dense_baseline(get_target("host-x86"), g, work_dir=tmp_path, runtimes=("onnxruntime", "torch"),
                                 passes=1, rounds=3)
    assert set(base.latency_s) == {"onnxruntime", "torch"}
    assert all(v is not None and v > 0 for v in base.latency_s.values())
    assert base.fastest == min(base.latency_s, key=base.latency_s.__getitem__)
    assert base.versions["onnxruntime"] and base.versions["torch"]


def test_median_ci_is_a_confidence_interval_of_the_median():
    from targets.runtimes import median_ci

    v = np.arange(1, 101, dtype=float)
    lo, hi = median_ci(v)
    assert lo < 50.5 < hi
    assert hi - lo < np.percentile(v, 90) - np.percentile(v, 10)  # narrower than the spread
    assert median_ci(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)      # few values: the extremes
