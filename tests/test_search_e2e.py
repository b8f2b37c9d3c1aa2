"""The whole loop on the host CPU with real TVM measurements: tiny model, tiny budgets."""
from __future__ import annotations

import json

import optuna
import pytest

from hwsearch import records
from hwsearch.search import SearchConfig, search

pytestmark = pytest.mark.slow


def _cfg(tmp_path, **kw):
    base = dict(out_dir=tmp_path / "out", model="hwsearch.zoo:mnist1d_cnn_small", rounds=2, trials=8,
                measure_top_k=1, samples=2, repeats=3, min_repeat_ms=5, max_accuracy_drop=1.0, seed=1)
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
