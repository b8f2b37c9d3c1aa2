"""The whole loop on the host CPU with real TVM measurements: tiny model, tiny budgets."""
from __future__ import annotations

import json

import optuna
import pytest

from hwsearch.core import records
from hwsearch.searching import SearchConfig, search

pytestmark = pytest.mark.slow


def _cfg(tmp_path, **kw):
    # TVM's quick mode measures here: the loop's TVM path (the ONNX Runtime path is tested below)
    base = dict(out_dir=tmp_path / "out", model="hwsearch.zoo:mnist1d_cnn_small", rounds=2, trials=8,
                measure_top_k=1, samples=2, repeats=3, min_repeat_ms=5, max_accuracy_drop=1.0, seed=1,
                runtime="tvm", mode="quick", baseline_runtimes=("onnxruntime",), passes=1, sitting_rounds=3)
    base.update(kw)
    return SearchConfig(**base)


def test_loop_end_to_end(tmp_path):
    cfg = _cfg(tmp_path)
    res = search(cfg)
    out = cfg.out_dir
    # an Optuna study per round that optuna.load_study opens, with the trials asked for
    for r in (1, 2):
        st = optuna.load_study(study_name=f"hwsearch-round{r}", storage=cfg.storage_url())
        assert len([t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]) == cfg.trials
    recs = records.load(out / "measurements.jsonl")
    ok = [r for r in recs if not r["error"]]
    assert len(ok) >= 2, [r["error"] for r in recs]
    for r in ok:  # real TVM timings with their provenance
        assert r["latency_s"] > 0 and r["backend"] == "tvm-local" and r["mode"] == "quick"
        assert r["versions"]["tvm"].startswith("0.27") and r["repeats"] == 3
        assert r["predicted_latency_s"] > 0
    assert {r["round"] for r in recs} == {1, 2}
    cm = json.loads((out / "costmodel.json").read_text())
    assert cm["schema_version"] == 1 and cm["provenance"]["fitted_on"] == len(ok)
    fit = res.rounds[-1].fit
    assert fit is not None and fit.mape_after < fit.mape_before
    assert (out / "pareto.png").stat().st_size > 1000
    assert not res.front.empty and res.front.attrs["dense_latency_s"] > 0


def test_rerun_resumes_without_redoing(tmp_path):
    cfg = _cfg(tmp_path, rounds=1, trials=6)
    search(cfg)
    before = records.load(cfg.out_dir / "measurements.jsonl")
    search(cfg)  # same command again: nothing left to do
    after = records.load(cfg.out_dir / "measurements.jsonl")
    assert after == before
    st = optuna.load_study(study_name="hwsearch-round1", storage=cfg.storage_url())
    assert len(st.trials) == 6


def test_loop_in_the_fastest_runtime_with_honest_speedups(tmp_path):
    """The default: the dense model timed per runtime first, plans measured in the fastest one
    in interleaved sittings (the dense model once per sitting), speed-ups against it."""
    cfg = _cfg(tmp_path, runtime="auto", mode=None, baseline_runtimes=("onnxruntime", "torch"), measure_top_k=3,
               trials=12)
    res = search(cfg)
    out = cfg.out_dir
    base = res.baseline
    assert base is not None and set(base.latency_s) == {"onnxruntime", "torch"}
    assert res.runtime == base.fastest and res.runtime_reason.startswith("fastest")
    summary = json.loads((out / "summary.json").read_text())
    dep = summary["deployment"]
    assert dep["runtime"] == res.runtime and dep["dense_baseline"]["fastest"] == base.fastest
    assert dep["dense_baseline"]["latency_s"]["onnxruntime"] > 0
    recs = [r for r in records.load(out / "measurements.jsonl") if not r["error"]]
    assert recs and all(r["runtime"] == res.runtime and r["runtime_version"] and r["mode"] == "sitting"
                        and r["target"] == f"host-x86@1+{res.runtime}" for r in recs)
    dense = [r for r in recs if r["plan"] == {}]
    sittings = {r["sitting"] for r in recs}
    assert len(dense) == len(sittings)  # the dense model once per sitting
    for r in recs:
        if r.get("identical_to_dense"):
            assert "speedup_vs_fastest" not in r and "speedup_same_runtime" not in r
        elif r["plan"]:
            assert r["speedup_lo"] <= r["speedup_same_runtime"] <= r["speedup_hi"]
            assert r["speedup_vs_fastest"] > 0
    # no plan measured that runs the dense model's kernels
    assert not any(r.get("identical_to_dense") for r in recs)
    # the refit learned from the runtime's own per-layer profile
    assert any(r["layer_s"] for r in recs)
    assert (out / "dense_baseline.json").exists()
