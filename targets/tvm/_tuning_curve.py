"""Tuning curves: tune *all* of a model's kernels for N more trials, then compile and time it.

:func:`tune_more` is one step of a curve. Unlike ``measure(mode="tuned")``, which tunes only
the kernels its database lacks, every task of the model is tuned again for ``trials`` more
measured candidates (MetaSchedule's gradient task scheduler shares them out) in the
``work_dir``'s own database; MetaSchedule's evolutionary search starts each task from the best
records already there, so calling it again on the same ``work_dir`` continues the curve. Then
the model is compiled with the database and timed by :func:`~targets.tvm._measure.measure_exported`
(the same compile, torch check and ``time_evaluator`` timing as :func:`targets.tvm.measure`;
every kernel has a record by then, so nothing is sampled). A kernel the tuner left without a
valid record makes the step an error: TVM's default code is never reported as a latency.

The steps taken so far are kept in ``<work_dir>/tuning_curve.json`` (trials and tuning seconds
per step), so ``trials_total`` counts every step on that database. Each step runs in a fresh
process (:mod:`targets.tvm._worker`, started by :mod:`targets.tvm._jobs`) by default: timings drift in long
processes, and TVM's spinning thread pool would slow whatever runs next in the caller's.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._config import EvaluatorConfig
from ._errors import ImportFailure, TVMBackendError, one_line
from ._result import MeasureResult

if TYPE_CHECKING:
    import torch

__all__ = ["TuningStep", "tune_more", "tuning_curve_state"]

logger = logging.getLogger(__name__)

_STATE = "tuning_curve.json"


@dataclass(frozen=True)
class TuningStep:
    """One step of a tuning curve on one database.

    ``step``: 1 for the first call on a ``work_dir``; ``trials``: requested this step;
    ``trials_total``: requested over all steps so far (this one included); ``records``: tuning
    records (measured candidates) in the database afterwards; ``tasks``: the model's kernels
    (all tuned); ``cost_model``: the one MetaSchedule used; ``tuning_s`` / ``tuning_s_total``:
    tuning wall seconds this step / all steps; ``wall_s``: this whole call. ``latency_s`` and
    its spread (IQR, min, max; seconds) come from ``result``, the full :class:`MeasureResult`
    (None when the step failed before timing). ``error``: one line when the step failed."""

    step: int
    trials: int
    trials_total: int
    records: int
    tasks: int
    cost_model: str
    tuning_s: float
    tuning_s_total: float
    wall_s: float
    latency_s: float | None
    latency_iqr_s: float | None
    latency_min_s: float | None
    latency_max_s: float | None
    error: str | None
    result: MeasureResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``result`` as :meth:`MeasureResult.to_dict`)."""
        out = asdict(self)
        out["result"] = self.result.to_dict() if self.result is not None else None
        return out


def tuning_curve_state(work_dir: Path) -> list[dict[str, Any]]:
    """The steps recorded in ``<work_dir>/tuning_curve.json`` (empty before the first)."""
    path = Path(work_dir) / _STATE
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("steps", []))


def _save_state(work_dir: Path, steps: list[dict[str, Any]]) -> None:
    path = Path(work_dir) / _STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": steps}, indent=1))
    os.replace(tmp, path)


def tune_more(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    work_dir: Path,
    trials: int,
    cost_model: str = "auto",
    tvm_target: dict[str, Any] | None = None,
    evaluator: EvaluatorConfig = EvaluatorConfig(),
    per_layer: bool = False,
    seed: int = 0,
    fresh_process: bool = True,
    timeout_s: float | None = None,
) -> TuningStep:
    """Tune every kernel of ``model`` for ``trials`` more candidates in ``work_dir``'s tuning
    database with ``cost_model`` (``"xgb"``, ``"random"``, ``"auto"``), then compile with the
    database and time the model (``evaluator``; ``per_layer`` also times each kernel). A second
    call on the same ``work_dir`` continues from the records of the first; step *k* seeds the
    search with ``seed + k - 1``. ``tvm_target``: a Target JSON dict for this host (default
    :func:`targets.tvm.default_target`). ``fresh_process`` runs the step in a new process,
    killed after ``timeout_s`` (default 1800 + 20·trials s).

    Returns a :class:`TuningStep`; a model, target or tuning failure is its ``error``. Raises
    ``ValueError`` only for invalid arguments."""
    from ._env import default_target
    from ._import import as_input_tuple, export_model, run_reference
    from ._tune import COST_MODELS

    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r} must be an int >= 1")
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model={cost_model!r} is not one of {COST_MODELS}")
    start = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    steps = tuning_curve_state(work_dir)
    target = dict(tvm_target) if tvm_target is not None else default_target()
    example_inputs = as_input_tuple(example_inputs)
    kwargs = dict(work_dir=work_dir, tvm_target=target, trials=trials, cost_model=cost_model,
                  seed=seed + len(steps), evaluator=evaluator, per_layer=per_layer)
    try:
        exported = export_model(model, example_inputs)
        reference = run_reference(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - the model itself failed: a record, not a raise
        outcome: dict[str, Any] = {"error": str(exc) if isinstance(exc, ImportFailure)
                                   else f"running the model in torch failed: {one_line(exc)}"}
    else:
        inputs = [t.detach().cpu().numpy() for t in example_inputs]
        if fresh_process:
            limit = float(timeout_s) if timeout_s is not None else 1800.0 + 20.0 * trials
            outcome = _run_job(exported, inputs, reference, kwargs, limit)
        else:
            outcome = tune_and_measure(exported, inputs, reference, **kwargs)
    from ._database import record_count

    tuned = outcome.get("tuning_s") is not None  # the tuner ran (its trials count)
    steps.append({"trials": trials if tuned else 0, "tuning_s": outcome.get("tuning_s") or 0.0,
                  "cost_model": outcome.get("cost_model", ""), "seed": kwargs["seed"],
                  "error": outcome.get("error")})
    _save_state(work_dir, steps)
    result = (MeasureResult.from_dict(outcome["result"]) if outcome.get("result") else None)
    error = outcome.get("error") or (result.error if result is not None else None)
    ok = result is not None and error is None
    return TuningStep(
        step=len(steps), trials=trials, trials_total=sum(s["trials"] for s in steps),
        records=record_count(work_dir), tasks=int(outcome.get("tasks") or 0),
        cost_model=str(outcome.get("cost_model") or ""),
        tuning_s=float(outcome.get("tuning_s") or 0.0),
        tuning_s_total=float(sum(s["tuning_s"] for s in steps)),
        wall_s=time.perf_counter() - start,
        latency_s=result.latency_s if ok else None,
        latency_iqr_s=result.latency_iqr_s if ok else None,
        latency_min_s=result.latency_min_s if ok else None,
        latency_max_s=result.latency_max_s if ok else None,
        error=error, result=result)


def tune_and_measure(exported_program: Any, inputs: Sequence[np.ndarray],
                     reference: Sequence[np.ndarray] | None, *, work_dir: Path,
                     tvm_target: dict[str, Any], trials: int, cost_model: str, seed: int,
                     evaluator: EvaluatorConfig, per_layer: bool) -> dict[str, Any]:
    """In this process: tune all tasks of ``exported_program`` under the database lock, then
    :func:`measure_exported` it. Returns ``tasks``, ``cost_model``, ``tuning_s`` (None when
    tuning did not run), ``result`` (a ``MeasureResult.to_dict()``, None when the step failed
    before timing) and ``error``."""
    from ._compile import fuse, make_target, tuning_tasks
    from ._database import database_lock, has_record, open_database
    from ._import import import_exported
    from ._measure import _check_runnable_here, measure_exported
    from ._tune import tune_tasks

    out: dict[str, Any] = {"tasks": 0, "cost_model": "", "tuning_s": None, "result": None,
                           "error": None}
    try:
        target = make_target(tvm_target)
        _check_runnable_here(target)
        tasks = tuning_tasks(fuse(import_exported(exported_program).mod, target), target)
        out["tasks"] = len(tasks)
        with database_lock(work_dir):
            database = open_database(work_dir)
            report = tune_tasks(tasks, target, database, work_dir, trials=trials, seed=seed,
                                cost_model=cost_model)
            out.update(cost_model=report.cost_model, tuning_s=report.seconds)
            missing = [t.task_name for t in tasks
                       if not has_record(database, t.dispatched[0], target)]
    except TVMBackendError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:  # noqa: BLE001 - a failed step is a record
        logger.exception("tuning failed")
        out["error"] = f"tuning failed: {one_line(exc)}"
        return out
    if missing:
        starved = (f"; with fewer trials than kernels the task scheduler gives the first {trials} "
                   "kernels one trial each, at every step" if trials < len(tasks) else "")
        out["error"] = (f"{len(missing)} of {len(tasks)} kernel(s) have no valid schedule after "
                        f"{trials} more trials ({', '.join(missing)}) — give more trials{starved}; "
                        "default TVM code is not reported as a latency")
        return out
    # Every kernel has a record now: measure_exported compiles and times, schedules nothing.
    record = measure_exported(exported_program, inputs, reference, mode="tuned",
                              work_dir=work_dir, tvm_target=tvm_target, trials=trials, samples=1,
                              evaluator=evaluator, per_layer=per_layer, rpc=None, seed=seed,
                              cost_model=cost_model)
    out["result"] = record.to_dict()
    return out


def _run_job(exported: Any, inputs: list[np.ndarray], reference: list[np.ndarray],
             kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """:func:`tune_and_measure` in a fresh Python process (:func:`~targets.tvm._jobs.run_in_worker`);
    its outcome, or one with ``error`` when the process could not be started, crashed or timed
    out."""
    from ._jobs import run_in_worker

    outcome, error = run_in_worker(exported, inputs, reference, kwargs, timeout_s, entry="curve", what="tuning")
    return outcome if outcome is not None else {"error": error}
