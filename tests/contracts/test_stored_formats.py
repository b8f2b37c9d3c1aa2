"""Every stored format this project writes reads back to what was written, and a file of a
version this hwsearch cannot read is refused with the fix (cost-model files have their own
suite in ``test_cost_models.py``; target specs in ``tests/test_specs.py``)."""
from __future__ import annotations

import json

import pytest

from hwsearch.core import records
from hwsearch.core.errors import SpecError, StoreError
from hwsearch.deploy import DenseBaseline
from hwsearch.searching.summary import SUMMARY_SCHEMA_VERSION, SearchSummary
from targets.runtimes import SittingResult


def _summary() -> SearchSummary:
    return SearchSummary(config={"study_name": "s", "target": "host-x86", "rounds": 2}, target="host-x86@1+onnxruntime",
                         model="hwsearch.zoo:mnist1d_cnn", data="hwsearch.zoo:mnist1d_data", study="s-round2",
                         storage="sqlite:///x.db", rounds=2, trials_per_round=10, measured_plans=3,
                         failed_measurements=1, dense_latency_s=3e-5,
                         deployment={"runtime": "onnxruntime", "runtime_reason": "fastest", "dense_baseline": None},
                         patterns_not_offered={"nm": {"down": "not divisible"}},
                         front=[{"plan_key": "abc", "accuracy": 0.9, "measured_latency_s": None}])


def test_search_summary_round_trips(tmp_path):
    s = _summary()
    s.save(tmp_path / "summary.json")
    back = SearchSummary.load(tmp_path)
    assert back == s and back.runtime == "onnxruntime"
    assert json.loads((tmp_path / "summary.json").read_text())["summary_schema_version"] == SUMMARY_SCHEMA_VERSION


def test_a_version_1_summary_still_loads_and_a_future_one_is_refused(tmp_path):
    d = _summary().to_dict()
    d.pop("summary_schema_version")
    d.pop("deployment")
    (tmp_path / "summary.json").write_text(json.dumps(d))
    old = SearchSummary.load(tmp_path)
    assert old.summary_schema_version == 1 and old.runtime is None
    d["summary_schema_version"] = 99
    (tmp_path / "summary.json").write_text(json.dumps(d))
    with pytest.raises(SpecError, match="summary_schema_version 99.*upgrade hwsearch"):
        SearchSummary.load(tmp_path)


@pytest.mark.parametrize("text,match", [(None, "not found"), ("{not json", "unreadable"), ("[1, 2]", "not a search summary"),
                                        ('{"target": "host-x86"}', "lacks config")])
def test_a_missing_or_broken_summary_is_one_line_with_the_fix(tmp_path, text, match):
    if text is not None:
        (tmp_path / "summary.json").write_text(text)
    with pytest.raises(StoreError, match=match) as e:
        SearchSummary.load(tmp_path)
    assert "\n" not in str(e.value) and "hwsearch search" in str(e.value)


def test_measurement_records_round_trip_and_keep_their_own_version(tmp_path):
    rec = {"plan_key": "k", "plan": {}, "target": "host-x86@1+onnxruntime", "backend": "onnxruntime",
           "mode": "sitting", "latency_s": 1e-5, "predicted_latency_s": 2e-5, "versions": {"onnxruntime": "1"},
           "date": "2026-12-02", "error": None, "layer_s": {"a": 1e-6}}
    records.append(tmp_path / "m.jsonl", rec)
    back = records.load(tmp_path / "m.jsonl")
    assert len(back) == 1 and back[0]["schema_version"] == records.SCHEMA_VERSION
    assert {k: back[0][k] for k in rec} == rec
    (tmp_path / "m.jsonl").open("a").write("{broken\n")
    with pytest.raises(StoreError, match="m.jsonl:2"):
        records.load(tmp_path / "m.jsonl")
    assert len(records.load(tmp_path / "m.jsonl", strict=False)) == 1  # nothing measured is lost


def test_dense_baseline_round_trips():
    b = DenseBaseline(latency_s={"onnxruntime": 3e-5, "torch": 2.6e-4}, iqr_s={"onnxruntime": 1e-6, "torch": 1e-5},
                      eligible={"onnxruntime": True, "torch": True}, notes={"onnxruntime": "sitting"},
                      versions={"onnxruntime": "1.23"}, device="cpu", date="2026-12-02", fastest="onnxruntime",
                      layer_s={"onnxruntime": {"conv": 1e-5}})
    assert DenseBaseline.from_dict(json.loads(json.dumps(b.to_dict()))) == b


def test_sitting_result_round_trips_and_refuses_another_version():
    r = SittingResult(key="p", runtime="onnxruntime", latency_s=2e-5, latency_iqr_s=1e-6, samples=45, speedup=1.4,
                      speedup_lo=1.35, speedup_hi=1.45, layer_s={"conv": 1e-5}, passes=3, rounds=15)
    d = json.loads(json.dumps(r.to_dict()))
    assert SittingResult.from_dict(d) == r
    d["sitting_schema_version"] = 99
    with pytest.raises(SpecError, match="re-measure"):
        SittingResult.from_dict(d)


def test_a_record_of_another_layout_version_is_refused_not_relabelled(tmp_path):
    rec = {"plan_key": "k", "plan": {}, "target": "t", "backend": "tvm-local", "mode": "quick", "latency_s": 1e-5,
           "predicted_latency_s": 1e-5, "versions": {}, "date": "2026-12-02", "error": None, "schema_version": 7}
    with pytest.raises(ValueError, match="result_schema_version"):
        records.append(tmp_path / "m.jsonl", rec)
    assert not (tmp_path / "m.jsonl").exists()
