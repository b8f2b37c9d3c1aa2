"""Tuned mode: MetaSchedule's evolutionary search over the tasks it is given.

Tasks come from the fused module. ``measure(mode="tuned")`` passes only those the persistent
database lacks (``tune_relax`` would re-tune shapes it already has); a tuning-curve step
(``_tuning_curve.tune_more``) passes all of them, and the search then starts each from the best
records already in the database. Builds run in ``LocalBuilder`` worker
processes with a 120 s timeout (the 30 s default is too short on 2 cores) and an initializer
that registers only the CPU tensor intrinsics (≈3 s instead of ≈20 s per worker).

The search is guided by a cost model (``cost_model``): ``"xgb"`` (MetaSchedule's XGBoost
model, needs the ``xgboost`` module — ``pip install xgboost-cpu``), ``"random"`` (random scores:
the evolutionary search without a learned guide), or ``"auto"`` (``xgb`` when xgboost imports,
else ``random``). :class:`TuneReport` says which one was used.

Cost on this machine (NOTES.md): 64 trials ≈ 5 min for a 3-conv net, and may leave the
largest conv without a good schedule; 256 trials ≈ 25 min reached torch-eager speed.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import RPCConfig
from ._env import intrinsic_families
from ._errors import BuildFailure, one_line

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir import meta_schedule as ms

__all__ = ["BUILDER_TIMEOUT_S", "COST_MODELS", "TuneReport", "builder_initializer",
           "resolve_cost_model", "tune_tasks"]

logger = logging.getLogger(__name__)

#: Seconds one LocalBuilder batch item may take before it is killed.
BUILDER_TIMEOUT_S = 120.0
#: Seconds one LocalRunner measurement may take before it is killed.
RUNNER_TIMEOUT_S = 60.0
#: Values of ``tune_tasks(cost_model=...)``: "auto" is "xgb" when xgboost imports, else "random".
COST_MODELS = ("auto", "xgb", "random")


def _xgboost_available() -> bool:
    return importlib.util.find_spec("xgboost") is not None


def resolve_cost_model(cost_model: str) -> str:
    """The MetaSchedule cost model ``cost_model`` stands for: ``"xgb"`` or ``"random"``.

    Raises :class:`BuildFailure` for a value not in :data:`COST_MODELS`, and for ``"xgb"`` when
    the ``xgboost`` module is not installed."""
    if cost_model not in COST_MODELS:
        raise BuildFailure(f"cost_model={cost_model!r} is not one of {', '.join(COST_MODELS)}")
    if cost_model == "auto":
        # xgboost is a dependency, but without it the search is guided by a random model.
        return "xgb" if _xgboost_available() else "random"
    if cost_model == "xgb" and not _xgboost_available():
        raise BuildFailure("cost_model='xgb' needs the xgboost module, which is not installed — "
                           "pip install xgboost-cpu (or use cost_model='random')")
    return cost_model


def _export_shared(cross_compiler: str, module: Any) -> str:
    """MetaSchedule ``f_export``: link ``module`` into a ``.so`` for the RPC device with
    ``cross_compiler``; returns the file's path (runs in a builder worker)."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="hwsearch-ms-"), "candidate.so")
    module.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    return path


def builder_initializer(families: tuple[str, ...] | None) -> None:
    """Runs first in every MetaSchedule builder/runner worker process: registers only the
    CPU tensor intrinsics ``families`` (from :func:`~targets.tvm._env.intrinsic_families`);
    ``None`` (not a CPU target) leaves TVM to register all of them."""
    from ._env import register_cpu_tensor_intrinsics

    if families:
        register_cpu_tensor_intrinsics(families)


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
    rpc: RPCConfig | None = None,
    cost_model: str = "auto",
) -> TuneReport:
    """Tune ``tasks`` for ``trials`` measured candidates in total (shared by the gradient task
    scheduler), committing records to ``database``. Candidates run on the local CPU, or with
    ``rpc`` (a tracker) on the device through MetaSchedule's ``RPCRunner`` — linked with
    ``rpc.cross_compiler`` when set. ``cost_model`` guides the search (:data:`COST_MODELS`;
    the report's ``cost_model`` says which was used). Tasks already in ``database`` are tuned
    again: the search starts from their best records. Raises :class:`BuildFailure` for an
    unknown ``cost_model`` or ``"xgb"`` without xgboost, when MetaSchedule itself fails or
    ``rpc`` is not a tracker; candidates that fail to build or run are only logged.
    """
    report = TuneReport(tuned=[t.task_name for t in tasks], trials=int(trials),
                        cost_model=resolve_cost_model(cost_model))
    if not tasks:
        return report
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise BuildFailure(f"trials={trials!r} must be >= 1 for mode='tuned'")
    if rpc is not None and not rpc.tracker:
        raise BuildFailure(
            f"mode='tuned' through RPC needs a tracker, got {rpc.address} — register the "
            "server with a tracker (rpc_server --tracker host:port --key K) and pass "
            "RPCConfig(tracker=True, key=K), or use mode='quick'"
        )
    start = time.perf_counter()
    cores = int(os.cpu_count() or 1)
    log_dir = Path(work_dir) / "tuning_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    target_dict = {"kind": target.kind.name,
                   "mtriple": str(target.attrs.get("mtriple", "") or "") or None}
    initializer = functools.partial(builder_initializer, intrinsic_families(target_dict))
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100,
                                          enable_cpu_cache_flush=False)
    builder = ms.builder.LocalBuilder(
        max_workers=cores, timeout_sec=BUILDER_TIMEOUT_S, initializer=initializer,
        f_export=functools.partial(_export_shared, rpc.cross_compiler)
        if rpc is not None and rpc.cross_compiler else None,
    )
    if rpc is None:
        runner: Any = ms.runner.LocalRunner(timeout_sec=RUNNER_TIMEOUT_S,
                                            evaluator_config=evaluator,
                                            initializer=initializer)
    else:
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                session_priority=rpc.priority,
                session_timeout_sec=int(max(rpc.timeout_s, RUNNER_TIMEOUT_S))),
            evaluator_config=evaluator, max_workers=1,
        )
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=list(tasks),
            work_dir=str(log_dir),
            space="post-order-apply",
            strategy="evolutionary",
            num_threads=cores,
            seed=seed,
        )
        if not contexts:  # every task was already scheduled by a library dispatch
            return report
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(log_dir),
            max_trials_global=int(trials),
            # Small enough that every task gets a first round: with 64 per iteration and a
            # 64-trial budget the first task would take everything.
            num_trials_per_iter=max(1, min(64, int(trials) // len(contexts))),
            builder=builder,
            runner=runner,
            database=database,
            cost_model=report.cost_model,
            task_scheduler="gradient",
        )
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(f"MetaSchedule tuning failed: {one_line(exc)}") from exc
    report.seconds = time.perf_counter() - start
    return report
