"""Measurement records: round trip, provenance fields required, bad lines named by file:line."""
from __future__ import annotations

import pytest

from hwsearch.core import records
from hwsearch.core.errors import StoreError


def _rec(**kw):
    base = {"plan_key": "abc", "plan": {}, "target": "host-x86@1", "backend": "tvm-local", "mode": "quick",
            "latency_s": 1e-4, "predicted_latency_s": 2e-4, "versions": {"tvm": "0.27"}, "date": "2026-11-21",
            "error": None}
    base.update(kw)
    return base


def test_round_trip(tmp_path):
    p = tmp_path / "m.jsonl"
    records.append(p, _rec())
    records.append(p, _rec(plan_key="def", latency_s=None, error="build failed: x"))
    got = records.load(p)
    assert [r["plan_key"] for r in got] == ["abc", "def"]
    assert got[1]["error"] == "build failed: x" and got[0]["schema_version"] == records.SCHEMA_VERSION


def test_missing_provenance_refused(tmp_path):
    rec = _rec()
    del rec["versions"]
    with pytest.raises(ValueError, match="versions"):
        records.append(tmp_path / "m.jsonl", rec)


def test_bad_line_named_and_skippable(tmp_path):
    p = tmp_path / "m.jsonl"
    records.append(p, _rec())
    with open(p, "a") as fh:
        fh.write('{"truncated": \n')
    records.append(p, _rec(plan_key="ok2"))
    with pytest.raises(StoreError, match=r"m\.jsonl:2"):
        records.load(p)
    assert [r["plan_key"] for r in records.load(p, strict=False)] == ["abc", "ok2"]


def test_fastest_compares_speedups_measured_in_each_sitting_not_raw_latencies():
    from hwsearch.core.records import fastest

    # plan a was measured in a slow sitting (dense 300 µs), plan b in a fast one (dense 200 µs):
    # b's raw latency is lower, but a is the faster plan relative to dense
    a = {"plan_key": "a", "latency_s": 200e-6, "speedup_vs_fastest": 1.50, "drift_factor": 0.67}
    b = {"plan_key": "b", "latency_s": 160e-6, "speedup_vs_fastest": 1.25, "drift_factor": 1.0}
    assert fastest([b, a])["plan_key"] == "a"
    # without paired speed-ups: latencies brought to the baseline's speed
    a2, b2 = dict(a, speedup_vs_fastest=None), dict(b, speedup_vs_fastest=None)
    assert fastest([a2, b2])["plan_key"] == "a"       # 134 µs vs 160 µs at the baseline's speed
