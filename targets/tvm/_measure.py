"""``measure``: schedule (quick or tuned), compile, check and time a model; in a fresh process.

Steps, each of which turns its failure into ``MeasureResult.error``:

1. parent: ``torch.export`` and a torch-eager reference run on the example inputs;
2. (worker process when ``fresh_process``) Relax import, fusion, task extraction;
3. under the tuning-database lock: tasks without a record are sampled (quick) or tuned
   (tuned; what the tuner leaves without a record is then sampled, and a note says so);
4. compile the raw module with the database; any kernel still without a schedule makes the
   record an error — TVM's default schedule is never reported as a latency;
5. run once and compare with torch, then time ``main`` and (``per_layer``) each kernel.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._config import EvaluatorConfig, RPCConfig
from ._errors import ImportFailure, TVMBackendError, one_line
from ._result import MODES, LayerTiming, MeasureResult

if TYPE_CHECKING:
    import torch

__all__ = ["measure", "measure_exported"]

logger = logging.getLogger(__name__)

#: Outputs may differ from torch by this much times max(1, max |reference|) (float32 reordering).
OUTPUT_TOLERANCE = 1e-3


def _base(mode: str, backend: str, device: str, target: dict[str, Any],
          evaluator: EvaluatorConfig) -> dict[str, Any]:
    from ._env import utc_now, versions

    return dict(
        latency_s=None, latency_iqr_s=None, latency_min_s=None, latency_max_s=None,
        repeats=evaluator.repeat, number=evaluator.number, mode=mode, backend=backend,
        device=device, tvm_target=dict(target), layers=(), tune_s=0.0, build_s=0.0,
        versions=versions(), date=utc_now(), error=None,
    )


def _error_record(error: str, *, mode: str, rpc: RPCConfig | None, target: dict[str, Any],
                  evaluator: EvaluatorConfig, tune_s: float = 0.0, build_s: float = 0.0,
                  notes: Sequence[str] = ()) -> MeasureResult:
    from ._env import cpu_model

    fields = _base(mode, "tvm-rpc" if rpc else "tvm-local",
                   rpc.address if rpc else cpu_model(), target, evaluator)
    fields.update(error=error, tune_s=tune_s, build_s=build_s)
    return MeasureResult(**fields, notes=tuple(notes))


def _check_runnable_here(target: Any) -> None:
    """Raise when code for ``target`` cannot run on this host's CPU."""
    from ._env import host_arch
    from ._errors import BuildFailure

    kind = target.kind.name
    if kind != "llvm":
        raise BuildFailure(
            f"target kind {kind!r} cannot be timed on the local CPU — measure it through "
            "rpc=RPCConfig(...) on the device, or export it with build_library"
        )
    triple = str(target.attrs.get("mtriple", "") or "") if hasattr(target, "attrs") else ""
    arch = host_arch()
    aliases = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
    if triple and not triple.lower().startswith(aliases.get(arch, (arch,))):
        raise BuildFailure(
            f"target mtriple {triple!r} does not run on this {arch} host — measure it through "
            "rpc=RPCConfig(...) on such a device, or export it with build_library"
        )


def measure_exported(
    exported_program: Any,
    inputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray] | None,
    *,
    mode: str,
    work_dir: Path,
    tvm_target: dict[str, Any],
    trials: int,
    samples: int,
    evaluator: EvaluatorConfig,
    per_layer: bool,
    rpc: RPCConfig | None,
    seed: int = 0,
    cost_model: str = "auto",
) -> MeasureResult:
    """Measure an already exported program in this process (steps 2–5 of the module doc).

    ``inputs`` are the example inputs as arrays, ``reference`` torch's outputs on them (flat).
    Never raises for a model, target or device problem: those become ``error``."""
    work_dir = Path(work_dir)
    upload_dir = work_dir / "rpc_uploads" / uuid.uuid4().hex[:12]
    try:
        return _measure_exported(
            exported_program, inputs, reference, mode=mode, work_dir=work_dir,
            tvm_target=tvm_target, trials=trials, samples=samples, evaluator=evaluator,
            per_layer=per_layer, rpc=rpc, seed=seed, upload_dir=upload_dir, cost_model=cost_model)
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)


class _Progress:
    """The running state of one measurement: the stage (logged with its duration), the seconds
    spent scheduling and compiling, the notes, and how a failure becomes a record."""

    def __init__(self, mode: str, rpc: RPCConfig | None, tvm_target: dict[str, Any],
                 evaluator: EvaluatorConfig) -> None:
        self.mode, self.rpc, self.tvm_target, self.evaluator = mode, rpc, tvm_target, evaluator
        self.tune_s = 0.0
        self.build_s = 0.0
        self.notes: list[str] = []
        self.stage = "setup"
        self._clock = time.perf_counter()

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        logger.info("measure: %s done in %.2f s; %s", self.stage, now - self._clock, name)
        self._clock = now
        self.stage = name

    def fail(self, error: str) -> MeasureResult:
        return _error_record(error, mode=self.mode, rpc=self.rpc, target=self.tvm_target,
                             evaluator=self.evaluator, tune_s=self.tune_s, build_s=self.build_s,
                             notes=self.notes)


def _measure_exported(
    exported_program: Any,
    inputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray] | None,
    *,
    mode: str,
    work_dir: Path,
    tvm_target: dict[str, Any],
    trials: int,
    samples: int,
    evaluator: EvaluatorConfig,
    per_layer: bool,
    rpc: RPCConfig | None,
    seed: int,
    upload_dir: Path,
    cost_model: str = "auto",
) -> MeasureResult:
    """:func:`measure_exported`, with RPC uploads going to ``upload_dir``."""
    from ._compile import compile_model, fuse, make_target, tuning_tasks
    from ._import import import_exported
    from ._timing import time_kernels, time_model

    run = _Progress(mode, rpc, tvm_target, evaluator)
    try:
        run.enter("target")
        target = make_target(tvm_target)
        if rpc is None:
            _check_runnable_here(target)
        run.enter("relax import")
        imported = import_exported(exported_program)
        run.enter("task extraction")
        tasks = tuning_tasks(fuse(imported.mod, target), target)
        opener = _DeviceOpener(rpc, upload_dir)
        run.enter("scheduling")
        database, device = _schedule(run, tasks, target, work_dir, trials=trials, samples=samples, seed=seed,
                                     opener=opener, cost_model=cost_model)
        run.enter("compile")
        compiled = compile_model(imported, target, database)
        run.build_s = compiled.build_s
        if compiled.unscheduled:
            return run.fail(
                f"{len(compiled.unscheduled)} kernel(s) have no schedule in the tuning database "
                f"({', '.join(compiled.unscheduled)}); default TVM code is not reported as a "
                "latency — the notes say why scheduling them failed"
            )
        run.enter("device")
        if device is None:
            device = opener()
        run.enter("run")
        stats, outputs = time_model(compiled.executable, device, inputs, evaluator)
        max_abs_err = _compare(outputs, reference)
        mismatch = _mismatch(max_abs_err, reference)
        if mismatch:
            return _replace(run.fail(mismatch), max_abs_err=max_abs_err)
        layers: tuple[LayerTiming, ...] = ()
        if per_layer:
            run.enter("per-layer timing")
            layers = time_kernels(compiled.calls, target, device, evaluator)
    except TVMBackendError as exc:
        return run.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a measurement failure is a record
        logger.exception("measure failed during %s", run.stage)
        return run.fail(f"{run.stage} failed: {one_line(exc)}")

    run.enter("record")
    fields = _base(mode, device.backend, device.description, tvm_target, evaluator)
    fields.update(
        latency_s=stats.median_s, latency_iqr_s=stats.iqr_s, latency_min_s=stats.min_s,
        latency_max_s=stats.max_s, repeats=stats.repeats, layers=layers, tune_s=run.tune_s,
        build_s=run.build_s,
    )
    return MeasureResult(**fields, max_abs_err=max_abs_err, notes=tuple(run.notes))


class _DeviceOpener:
    """Opens the device to time on: this CPU, or an RPC session (uploads in ``upload_dir``).

    Opened lazily: MetaSchedule's RPC runner needs the tracker's server for itself while
    tuning, and a session held here would starve it."""

    def __init__(self, rpc: RPCConfig | None, upload_dir: Path) -> None:
        self.rpc, self.upload_dir = rpc, upload_dir

    def __call__(self) -> Any:
        if self.rpc is None:
            from ._env import cpu_model
            from ._timing import LocalDevice

            return LocalDevice(cpu_model())
        from ._rpc import connect

        return connect(self.rpc, self.upload_dir)


def _schedule(run: _Progress, tasks: Sequence[Any], target: Any, work_dir: Path, *, trials: int, samples: int,
              seed: int, opener: _DeviceOpener, cost_model: str = "auto") -> tuple[Any, Any]:
    """Under the tuning-database lock, give every task without a record a schedule: tuned
    (``run.mode == "tuned"``; what the tuner leaves is then sampled) or sampled. Adds notes and
    ``run.tune_s``; returns the database and the device when sampling opened one (else None)."""
    from ._database import database_lock, has_record, open_database
    from ._quick import sample_schedules
    from ._tune import tune_tasks

    device = None
    notes = run.notes
    with database_lock(work_dir):
        database = open_database(work_dir)
        missing = [t for t in tasks if not has_record(database, t.dispatched[0], target)]
        reused = len(tasks) - len(missing)
        t0 = time.perf_counter()
        if run.mode == "tuned" and missing:
            report = tune_tasks(missing, target, database, work_dir, trials=trials, seed=seed,
                                rpc=run.rpc, cost_model=cost_model)
            notes.append(f"tuned {len(missing)} kernel(s) with {trials} trials "
                         f"(cost model {report.cost_model}) in {report.seconds:.0f} s")
            missing = [t for t in missing if not has_record(database, t.dispatched[0], target)]
            if missing:
                notes.append(
                    "tuner left without a valid schedule, filled by quick sampling "
                    f"(best of {samples}): " + ", ".join(t.task_name for t in missing))
        if missing:
            device = opener()
            sampled = sample_schedules(missing, target, database, device, samples=samples,
                                       seed=seed)
            if run.mode == "quick":
                notes.append(f"quick: sampled {len(sampled.sampled)} kernel(s), best of "
                             f"{samples}, in {sampled.seconds:.0f} s")
            for name, reason in sampled.failed.items():
                notes.append(f"sampling {name} failed: {reason}")
        if reused:
            notes.append(f"{reused} of {len(tasks)} kernel(s) reused from the tuning database")
        run.tune_s = time.perf_counter() - t0
    return database, device


def _mismatch(max_abs_err: float | None, reference: Sequence[np.ndarray] | None) -> str | None:
    """The error when TVM's outputs differ from torch's beyond :data:`OUTPUT_TOLERANCE`."""
    if max_abs_err is None or not reference:
        return None
    scale = max(1.0, max(float(np.max(np.abs(r))) if r.size else 0.0 for r in reference))
    if not np.isfinite(max_abs_err) or max_abs_err > OUTPUT_TOLERANCE * scale:
        return (f"TVM outputs differ from torch by {max_abs_err:.3g} (tolerance "
                f"{OUTPUT_TOLERANCE * scale:.3g}) — a miscompilation; report the model")
    return None


def _replace(record: MeasureResult, **changes: Any) -> MeasureResult:
    from dataclasses import replace

    return replace(record, **changes)


def _compare(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None) -> float | None:
    """Largest |TVM − torch| over all outputs; ``inf`` when counts or shapes disagree."""
    if reference is None:
        return None
    if len(outputs) != len(reference):
        return float("inf")
    err = 0.0
    for out, ref in zip(outputs, reference):
        if tuple(out.shape) != tuple(ref.shape):
            return float("inf")
        if out.size:
            err = max(err, float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))))
    return err


def _default_timeout_s(mode: str, trials: int, samples: int) -> float:
    """Worker time limit: generous, since a 2-core machine tunes ~5 min per 64 trials."""
    if mode == "tuned":
        return 1800.0 + 20.0 * trials
    return 1200.0 + 60.0 * samples


def measure(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    mode: str = "quick",
    work_dir: Path,
    tvm_target: dict[str, Any] | None = None,
    trials: int = 64,
    samples: int = 8,
    evaluator: EvaluatorConfig = EvaluatorConfig(),
    fresh_process: bool = True,
    per_layer: bool = True,
    rpc: RPCConfig | None = None,
    seed: int = 0,
    timeout_s: float | None = None,
    cost_model: str = "auto",
) -> MeasureResult:
    """Compile ``model`` with TVM and measure its latency on the host CPU or an RPC device.

    ``mode="quick"``: per kernel, the fastest of ``samples`` schedules sampled from
    MetaSchedule's design space (seconds to a minute for a small CNN). ``mode="tuned"``:
    MetaSchedule search with ``trials`` measured candidates in total (minutes). Both keep
    their schedules in ``<work_dir>/tuning_db``, so a kernel shape is scheduled once per
    work_dir, across processes and models. ``tvm_target`` is a Target JSON dict (default:
    this host, see :func:`targets.tvm.default_target`). ``evaluator`` says how the model and
    each kernel are timed. ``fresh_process=True`` runs everything after ``torch.export`` in a
    new Python process (timings drift in long-lived ones), killed after ``timeout_s`` seconds
    (default: 1200 + 60·samples for quick, 1800 + 20·trials for tuned). ``per_layer`` adds
    one :class:`LayerTiming` per kernel call. ``rpc`` measures on a remote device.
    ``seed`` makes schedule sampling repeatable. ``cost_model`` guides tuned mode's search:
    ``"xgb"``, ``"random"`` or ``"auto"`` (xgb when xgboost is installed).

    Returns a :class:`MeasureResult`; a model that cannot be exported or imported, an invalid
    target, an unreachable device, a crash or a timeout give a record with ``error`` set.
    Raises ``ValueError`` only for invalid arguments (unknown ``mode``, ``samples < 1`` …).
    """
    from ._tune import COST_MODELS

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model={cost_model!r} is not one of {COST_MODELS}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be an int >= 1")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r} must be an int >= 1")
    if not isinstance(evaluator, EvaluatorConfig):
        raise ValueError(f"evaluator={evaluator!r} must be an EvaluatorConfig")
    from ._env import default_target
    from ._import import as_input_tuple, export_model, run_reference

    target = dict(tvm_target) if isinstance(tvm_target, dict) else (
        default_target() if tvm_target is None else tvm_target)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    common = dict(mode=mode, rpc=rpc, evaluator=evaluator)
    if not isinstance(target, dict):
        return _error_record(f"tvm_target={tvm_target!r} is not a dict — pass a Target JSON dict "
                             "such as {'kind': 'llvm', 'num-cores': 2}", target={}, **common)
    try:  # cheap checks first, so a bad target does not cost a worker start
        from ._compile import make_target

        parsed = make_target(target)
        if rpc is None:
            _check_runnable_here(parsed)
        else:
            from ._rpc import check_reachable

            check_reachable(rpc)
    except TVMBackendError as exc:
        return _error_record(str(exc), target=target, **common)
    example_inputs = as_input_tuple(example_inputs)
    try:
        exported = export_model(model, example_inputs)
        reference = run_reference(model, example_inputs)
    except ImportFailure as exc:
        return _error_record(str(exc), target=target, **common)
    except Exception as exc:  # noqa: BLE001 - the model's own forward failed
        return _error_record(f"running the model in torch failed: {one_line(exc)}",
                             target=target, **common)
    inputs = [t.detach().cpu().numpy() for t in example_inputs]
    kwargs = dict(mode=mode, work_dir=work_dir, tvm_target=target, trials=trials,
                  samples=samples, evaluator=evaluator, per_layer=per_layer, rpc=rpc, seed=seed,
                  cost_model=cost_model)
    if not fresh_process:
        return measure_exported(exported, inputs, reference, **kwargs)
    limit = float(timeout_s) if timeout_s is not None else _default_timeout_s(mode, trials,
                                                                                samples)
    return _run_worker(exported, inputs, reference, kwargs, limit)


def _run_worker(exported: Any, inputs: list[np.ndarray], reference: list[np.ndarray],
                kwargs: dict[str, Any], timeout_s: float) -> MeasureResult:
    """Run :func:`measure_exported` in ``python -m targets.tvm._worker`` and read its record."""
    import torch

    work_dir: Path = kwargs["work_dir"]
    job = work_dir / "jobs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    job.mkdir(parents=True)
    common = dict(mode=kwargs["mode"], rpc=kwargs["rpc"], target=kwargs["tvm_target"],
                  evaluator=kwargs["evaluator"])
    try:
        torch.export.save(exported, str(job / "program.pt2"))
        with open(job / "job.pkl", "wb") as fh:
            pickle.dump({"inputs": inputs, "reference": reference, "kwargs": kwargs}, fh)
    except Exception as exc:  # noqa: BLE001
        return _error_record(f"cannot hand the model to a worker process: {one_line(exc)} — "
                             "use fresh_process=False", **common)
    log_path = job / "worker.log"
    cmd = [sys.executable, "-m", "targets.tvm._worker", str(job)]
    # The worker imports this package by name: make its root importable even when hwsearch
    # is not installed (e.g. run from a checkout).
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=root + (os.pathsep + path if path else ""))
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return _error_record(
                f"measurement worker timed out after {timeout_s:.0f} s and was killed — raise "
                f"timeout_s or lower trials/samples; log: {log_path}", **common)
        finally:
            # MetaSchedule's builder/runner workers live in the worker's process group.
            _kill_group(proc)
    result_path = job / "result.json"
    if rc == 0 and result_path.exists():
        import json

        try:
            record = MeasureResult.from_dict(json.loads(result_path.read_text()))
        except Exception as exc:  # noqa: BLE001
            return _error_record(f"unreadable worker result {result_path}: {one_line(exc)}",
                                 **common)
        logger.debug("worker finished in %.1f s", time.monotonic() - start)
        shutil.rmtree(job, ignore_errors=True)
        return record
    why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
    return _error_record(
        f"measurement worker crashed ({why}): {_last_line(log_path)} — full log: {log_path}",
        **common)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group this module started for ``proc`` (no-op once it is gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("worker %d did not exit after SIGKILL", proc.pid)


def _last_line(path: Path) -> str:
    """The last informative line of a log file (or a placeholder)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")):
            return line[:300]
    return "(empty log)"
