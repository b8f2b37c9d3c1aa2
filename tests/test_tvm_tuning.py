"""MetaSchedule's cost model in tuned mode (targets.tvm._tune) and tuning-curve steps
(targets.tvm.tune_more).

The argument checks need no compile. The real tuning (marked ``slow``) tunes a one-conv net for
2 trials with the random cost model, then 2 more with XGBoost on the same database, each step in
a fresh process (≈ 40 s on 2 cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import targets.tvm._tune as tune_module
from targets.tvm import (
    COST_MODELS,
    BuildFailure,
    EvaluatorConfig,
    measure,
    record_count,
    tune_more,
    workload_count,
)
from targets.tvm._tune import resolve_cost_model, tune_tasks

FAST = EvaluatorConfig(number=5, repeat=5, min_repeat_ms=10, warmup=1)


class OneConv(torch.nn.Module):
    """conv1d 1→4 (k3) + ReLU on a (1, 1, 16) signal: one kernel to tune."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _inputs() -> tuple[torch.Tensor]:
    return (torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("bad", ["xgboost", "XGB", "", None])
def test_an_unknown_cost_model_is_a_build_failure_naming_the_allowed_values(bad, tmp_path: Path) -> None:
    with pytest.raises(BuildFailure) as info:
        tune_tasks([], None, None, tmp_path, trials=4, cost_model=bad)
    message = str(info.value)
    assert repr(bad) in message and "\n" not in message
    assert all(value in message for value in COST_MODELS)


def test_xgb_without_xgboost_says_how_to_install_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tune_module, "_xgboost_available", lambda: False)
    with pytest.raises(BuildFailure, match="pip install xgboost-cpu") as info:
        tune_tasks([], None, None, tmp_path, trials=4, cost_model="xgb")
    assert "\n" not in str(info.value)
    assert resolve_cost_model("auto") == "random"  # auto falls back quietly
    assert tune_tasks([], None, None, tmp_path, trials=4, cost_model="random").cost_model == "random"


def test_auto_means_xgb_when_xgboost_imports(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tune_module, "_xgboost_available", lambda: True)
    assert tune_tasks([], None, None, tmp_path, trials=4).cost_model == "xgb"
    assert tune_tasks([], None, None, tmp_path, trials=4, cost_model="random").cost_model == "random"


def test_measure_and_tune_more_reject_an_unknown_cost_model_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cost_model='bogus'"):
        measure(OneConv(), _inputs(), mode="tuned", work_dir=tmp_path, cost_model="bogus")
    with pytest.raises(ValueError, match="cost_model='bogus'"):
        tune_more(OneConv(), _inputs(), work_dir=tmp_path, trials=2, cost_model="bogus")
    assert not (tmp_path / "tuning_db").exists()


@pytest.mark.slow
def test_random_then_xgb_tuning_lands_in_one_database_and_says_which_model(tmp_path: Path) -> None:
    pytest.importorskip("xgboost", reason="pip install xgboost-cpu (MetaSchedule's XGBoost cost model)")
    torch.manual_seed(0)
    model = OneConv().eval()
    first = tune_more(model, _inputs(), work_dir=tmp_path, trials=2, cost_model="random", evaluator=FAST)
    assert first.error is None, first.error
    assert first.cost_model == "random" and first.step == 1 and first.tasks == 1
    assert first.trials_total == 2 and first.tuning_s > 0
    assert workload_count(tmp_path) >= 1 and first.records == record_count(tmp_path) >= 1
    assert first.latency_s is not None and first.latency_s > 0 and first.latency_iqr_s is not None
    assert first.result is not None and first.result.max_abs_err < 1e-4

    second = tune_more(model, _inputs(), work_dir=tmp_path, trials=2, cost_model="xgb", evaluator=FAST)
    assert second.error is None, second.error
    assert second.cost_model == "xgb" and second.step == 2
    assert second.trials_total == 4
    assert second.records > first.records  # the xgb-guided candidates joined the same database
    assert second.tuning_s_total == pytest.approx(first.tuning_s + second.tuning_s)
    state = json.loads((tmp_path / "tuning_curve.json").read_text())["steps"]
    assert [(s["trials"], s["cost_model"], s["seed"]) for s in state] == [(2, "random", 0), (2, "xgb", 1)]
