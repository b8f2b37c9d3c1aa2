"""Tuned mode: MetaSchedule's evolutionary search over the tasks the database lacks.

Tasks come from the fused module and are filtered against the persistent database first
(``tune_relax`` would re-tune shapes it already has). Builds run in ``LocalBuilder`` worker
processes with a 120 s timeout (the 30 s default is too short on 2 cores) and an initializer
that registers only the CPU tensor intrinsics (≈3 s instead of ≈20 s per worker).

Cost on this machine (NOTES.md): 64 trials ≈ 5 min for a 3-conv net, and may leave the
largest conv without a good schedule; 256 trials ≈ 25 min reached torch-eager speed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import BuildFailure, one_line

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir import meta_schedule as ms

__all__ = ["BUILDER_TIMEOUT_S", "TuneReport", "builder_initializer", "tune_tasks"]

logger = logging.getLogger(__name__)

#: Seconds one LocalBuilder batch item may take before it is killed.
BUILDER_TIMEOUT_S = 120.0
#: Seconds one LocalRunner measurement may take before it is killed.
RUNNER_TIMEOUT_S = 60.0


def builder_initializer() -> None:
    """Runs first in every MetaSchedule builder/runner worker process: tuning runs on the host
    CPU, so only the host architecture's tensor intrinsics are registered."""
    from ._env import intrinsic_families, register_cpu_tensor_intrinsics

    register_cpu_tensor_intrinsics(intrinsic_families({"kind": "llvm"}) or ("x86", "arm_cpu"))


@dataclass
class TuneReport:
    """What :func:`tune_tasks` did: ``tuned`` task names, ``trials`` requested, ``cost_model``
    used, ``seconds`` of wall time."""

    tuned: list[str] = field(default_factory=list)
    trials: int = 0
    cost_model: str = ""
    seconds: float = 0.0


def tune_tasks(
    tasks: Sequence[ms.ExtractedTask],
    target: tvm.target.Target,
    database: ms.database.Database,
    work_dir: Path,
    *,
    trials: int,
    seed: int = 0,
) -> TuneReport:
    """Tune ``tasks`` for ``trials`` measured candidates in total (shared by the gradient task
    scheduler), committing records to ``database``. Raises :class:`BuildFailure` when
    MetaSchedule itself fails; candidates that fail to build or run are only logged by it.
    """
    from tvm.s_tir import meta_schedule as ms

    report = TuneReport(tuned=[t.task_name for t in tasks], trials=int(trials))
    if not tasks:
        return report
    if trials < 1:
        raise BuildFailure(f"trials={trials!r} must be >= 1 for mode='tuned'")
    start = time.perf_counter()
    cores = int(os.cpu_count() or 1)
    log_dir = Path(work_dir) / "tuning_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # xgboost is optional in this project; without it the search is guided by a random model.
    report.cost_model = "xgb" if importlib.util.find_spec("xgboost") is not None else "random"
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=list(tasks),
            work_dir=str(log_dir),
            space="post-order-apply",
            strategy="evolutionary",
            num_threads=cores,
            seed=seed,
        )
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(log_dir),
            max_trials_global=int(trials),
            num_trials_per_iter=min(64, int(trials)),
            builder=ms.builder.LocalBuilder(
                max_workers=cores, timeout_sec=BUILDER_TIMEOUT_S,
                initializer=builder_initializer,
            ),
            runner=ms.runner.LocalRunner(
                timeout_sec=RUNNER_TIMEOUT_S,
                evaluator_config=ms.runner.EvaluatorConfig(
                    number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False),
                initializer=builder_initializer,
            ),
            database=database,
            cost_model=report.cost_model,
            task_scheduler="gradient",
        )
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(f"MetaSchedule tuning failed: {one_line(exc)}") from exc
    report.seconds = time.perf_counter() - start
    return report
