"""Quick mode: best of a few schedules sampled from MetaSchedule's design space, per kernel.

For every task without a record, MetaSchedule's ``post-order-apply`` space generator builds
the design space (the CPU schedule rules: multi-level tiling, parallel/vectorise/unroll …) and
the ``replay-trace`` strategy replays it with fresh random decisions to give ``samples``
candidates. Each candidate is compiled and timed in this process on the measuring device; the
fastest is committed to the tuning database exactly as the tuner would commit it, so model
compilation (and later measurements, in any process) pick it up.

On this 2-core machine, best of 8 gave 0.61 ms for a small CNN whose fully tuned latency is
0.41 ms and whose untuned latency is 3.3 ms (NOTES.md): good enough for ranking and tests,
but labelled ``mode="quick"`` in every record.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._config import EvaluatorConfig
from ._database import has_record
from ._errors import one_line
from ._timing import Device, random_args, time_function

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir import meta_schedule as ms

__all__ = ["SAMPLING_EVALUATOR", "SampleReport", "sample_schedules"]

logger = logging.getLogger(__name__)

#: Timing of one sampled candidate: 1 untimed call, 1 warm-up repeat, 5 repeats of ≥ 10 ms.
SAMPLING_EVALUATOR = EvaluatorConfig(number=1, repeat=5, min_repeat_ms=10, warmup=1)


@dataclass
class SampleReport:
    """What :func:`sample_schedules` did: ``sampled`` task names with the best median seconds,
    ``skipped`` (already in the database), ``failed`` task name → one-line reason, ``seconds``
    of wall time."""

    sampled: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def sample_schedules(
    tasks: Sequence[ms.ExtractedTask],
    target: tvm.target.Target,
    database: ms.database.Database,
    device: Device,
    *,
    samples: int,
    seed: int = 0,
    evaluator: EvaluatorConfig = SAMPLING_EVALUATOR,
) -> SampleReport:
    """Sample ``samples`` schedules for each task lacking a record, commit the fastest.

    A task whose design space has no random decisions (e.g. an elementwise kernel) is sampled
    once, since every replay would give the same schedule. Failures of single candidates are
    skipped; a task all of whose candidates fail is reported in ``failed``. Never raises for a
    task; the caller checks coverage afterwards.
    """
    report = SampleReport()
    start = time.perf_counter()
    for task in tasks:
        workload = task.dispatched[0]
        if has_record(database, workload, target):
            report.skipped.append(task.task_name)
            continue
        try:
            best = _sample_task(task, target, device, samples=samples,
                                rand_state=_rand_state(seed, workload), evaluator=evaluator)
        except Exception as exc:  # noqa: BLE001 - one task's failure is data
            report.failed[task.task_name] = one_line(exc)
            logger.warning("quick sampling of %s failed: %s", task.task_name, one_line(exc))
            continue
        if best is None:
            report.failed[task.task_name] = "every sampled schedule failed to build or run"
            continue
        candidate, run_secs = best
        _commit(database, workload, candidate, run_secs, target)
        report.sampled[task.task_name] = float(run_secs[0])
        logger.info("quick: %s best of %d = %.1f us", task.task_name, samples,
                    report.sampled[task.task_name] * 1e6)
    report.seconds = time.perf_counter() - start
    return report


def _rand_state(seed: int, workload: tvm.IRModule) -> int:
    """A TuneContext random state in [1, 2^31 - 1] derived from ``seed`` and the kernel itself
    (its structural hash), not from its position in a model: the same kernel is offered the same
    candidate schedules in every model, process and tuning database. (Derived from the task's
    index, a plan measured by a search and again by a study with another database differed by
    up to 9 %: a lottery of schedules, not a property of the plan.)"""
    import tvm_ffi

    return 1 + (int(seed) * 1_000_003 + int(tvm_ffi.structural_hash(workload)) % 1_000_000_007) % (2**31 - 2)


def _sample_task(task: ms.ExtractedTask, target: tvm.target.Target, device: Device, *,
                 samples: int, rand_state: int,
                 evaluator: EvaluatorConfig) -> tuple[Any, list[float]] | None:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    ctx = ms.TuneContext(
        mod=task.dispatched[0],
        target=target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.ReplayTrace(),
        task_name=task.task_name,
        rand_state=rand_state,
        num_threads=int(os.cpu_count() or 1),
    )
    spaces = ctx.generate_design_space()
    has_choices = any(len(space.trace.decisions) > 0 for space in spaces)
    n = samples if has_choices or len(spaces) > 1 else 1
    ctx.pre_tuning(max_trials=n, num_trials_per_iter=n, design_spaces=spaces)
    candidates = list(ctx.generate_measure_candidates() or [])
    ctx.post_tuning()
    best: tuple[Any, list[float]] | None = None
    best_median = float("inf")
    for j, candidate in enumerate(candidates):
        try:
            executable = tvm.compile(candidate.sch.mod, target=target)
            module = device.load(executable, f"{task.task_name}_{j}")
            shapes = [(tuple(int(d) for d in info.shape), str(info.dtype))
                      for info in candidate.args_info]
            args = random_args(shapes, device, seed=j)
            stats = time_function(module, "main", device, args, evaluator)
        except Exception as exc:  # noqa: BLE001 - a bad candidate is skipped
            logger.debug("candidate %d of %s failed: %s", j, task.task_name, one_line(exc))
            continue
        if stats.median_s < best_median:
            best_median = stats.median_s
            best = (candidate, [stats.median_s])  # the database ranks by mean run_secs
    return best


def _commit(database: ms.database.Database, workload: tvm.IRModule, candidate: Any,
            run_secs: list[float], target: tvm.target.Target) -> None:
    """Store ``candidate`` as a tuning record, as MetaSchedule's ``AddToDatabase`` callback does."""
    from tvm.s_tir import meta_schedule as ms

    record = ms.database.TuningRecord(
        trace=candidate.sch.trace,
        workload=database.commit_workload(workload),
        run_secs=[float(s) for s in run_secs],
        target=target,
        args_info=list(candidate.args_info),
    )
    database.commit_tuning_record(record)
