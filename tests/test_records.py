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
