"""Records and settings of the TVM backend: pure Python, no compilation (fast)."""
from __future__ import annotations

import json
import math

import pytest

from targets.tvm import EvaluatorConfig, LayerTiming, MeasureResult, RPCConfig
from targets.tvm._env import intrinsic_families
from targets.tvm._errors import one_line, user_frame
from targets.tvm._timing import summarize


def _record(**changes: object) -> MeasureResult:
    fields: dict[str, object] = dict(
        latency_s=1e-3, latency_iqr_s=1e-5, latency_min_s=9e-4, latency_max_s=1.2e-3,
        repeats=20, number=10, mode="quick", backend="tvm-local", device="cpu",
        tvm_target={"kind": "llvm", "num-cores": 2, "keys": ("cpu",)},
        layers=(LayerTiming("fused_conv1d_add_relu", 0, (8, 1, 5), 2e-4, 1e-6, "c1.weight"),
                LayerTiming("fused_matmul_add", 1, None, 1e-4)),
        tune_s=3.0, build_s=0.5, versions={"tvm": "0.27"}, date="2026-01-01T00:00:00+00:00",
        error=None, max_abs_err=1e-7, notes=("quick: sampled 2 kernel(s)",),
    )
    fields.update(changes)
    return MeasureResult(**fields)  # type: ignore[arg-type]


def test_measure_result_round_trips_through_json() -> None:
    record = _record()
    data = json.loads(json.dumps(record.to_dict()))
    assert data["schema_version"] == 1
    assert data["tvm_target"]["keys"] == ["cpu"]
    back = MeasureResult.from_dict(data)
    assert back.layers == record.layers
    assert back.notes == record.notes
    assert back.latency_s == record.latency_s and back.ok


def test_measure_result_rejects_other_schema_versions() -> None:
    data = _record().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version"):
        MeasureResult.from_dict(data)


def test_error_record_has_no_latency_and_non_finite_becomes_null() -> None:
    failed = _record().with_error("TVM compile failed: x")
    assert not failed.ok and failed.latency_s is None and failed.latency_max_s is None
    assert _record(max_abs_err=math.inf).to_dict()["max_abs_err"] is None


def test_evaluator_config_validates() -> None:
    assert EvaluatorConfig().to_dict() == {"number": 10, "repeat": 20, "min_repeat_ms": 50,
                                           "warmup": 1}
    with pytest.raises(ValueError, match="repeat"):
        EvaluatorConfig(repeat=0)
    with pytest.raises(ValueError, match="warmup"):
        EvaluatorConfig(warmup=-1)


def test_rpc_config_validates_and_reads_target_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="key"):
        RPCConfig("127.0.0.1", 9190, tracker=True)
    with pytest.raises(ValueError, match="port"):
        RPCConfig("127.0.0.1", 0)
    monkeypatch.setenv("TVM_TRACKER_HOST", "10.0.0.5")
    monkeypatch.setenv("TVM_TRACKER_PORT", "9999")
    cfg = RPCConfig.from_target({"backend": "tvm-rpc", "rpc_key": "a76", "num_threads": 1,
                                 "cross_compiler": "aarch64-linux-gnu-gcc"})
    assert (cfg.host, cfg.port, cfg.key, cfg.tracker) == ("10.0.0.5", 9999, "a76", True)
    assert cfg.num_threads == 1 and cfg.cross_compiler == "aarch64-linux-gnu-gcc"
    assert "tracker 10.0.0.5:9999 key=a76" in cfg.address


def test_summarize_median_iqr_min_max() -> None:
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats.median_s, stats.min_s, stats.max_s, stats.repeats) == (3.0, 1.0, 5.0, 5)
    assert stats.iqr_s == pytest.approx(2.0)


def test_one_line_keeps_the_informative_line() -> None:
    tvm_like = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
                            "  0: foo\nInternalError: Check failed: (a == b) is false: bad")
    assert one_line(tvm_like) == "InternalError: Check failed: (a == b) is false: bad"
    torch_like = ValueError("Could not guard on u0\n\nadvice...\n  File \"m.py\", line 7, in "
                            "forward\nThe error above occurred when calling export.")
    assert one_line(torch_like, first=True) == "ValueError: Could not guard on u0"
    assert user_frame(torch_like) == "m.py:7 in forward"
    assert len(one_line(ValueError("x" * 1000))) <= 300


def test_intrinsic_families_follow_the_triple() -> None:
    assert intrinsic_families({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == ("arm_cpu",)
    assert intrinsic_families({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}) == ("x86",)
    assert intrinsic_families({"kind": "cuda"}) is None
