"""Hand a job to a fresh Python process (``python -m targets.tvm._worker <job_dir>``) and read
what it wrote: the one way :func:`targets.tvm.measure` and :func:`targets.tvm.tune_more` leave
the caller's process (timings drift in long-lived processes, and TVM's spinning thread pool would
slow whatever runs next there).

A job folder holds ``program.pt2`` (the ``torch.export`` program), ``job.pkl`` (``entry``: which
function the worker runs, the example inputs, torch reference outputs and its keyword
arguments) and, once the worker is done, ``result.json`` and ``worker.log``.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ._errors import one_line

__all__ = ["run_in_worker", "ENTRIES"]

logger = logging.getLogger(__name__)

#: What a worker can run: ``measure`` (``measure_exported``), ``curve`` (``tune_and_measure``).
ENTRIES = ("measure", "curve")


def run_in_worker(exported: Any, inputs: list[Any], reference: list[Any], kwargs: dict[str, Any],
                  timeout_s: float, *, entry: str, what: str) -> tuple[dict[str, Any] | None, str]:
    """Run ``entry`` on ``exported`` in a fresh process under ``kwargs["work_dir"]/jobs``.
    Returns ``(the worker's result.json, "")`` or ``(None, one line saying why not)`` — the job
    could not be written, the worker (``what``: "measurement", "tuning") timed out and was
    killed, crashed, or wrote nothing readable. The job folder is removed after a success."""
    import torch

    if entry not in ENTRIES:
        raise ValueError(f"entry={entry!r} is not one of {ENTRIES}")
    job = Path(kwargs["work_dir"]) / "jobs" / f"{entry}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    job.mkdir(parents=True)
    try:
        torch.export.save(exported, str(job / "program.pt2"))
        with open(job / "job.pkl", "wb") as fh:
            pickle.dump({"entry": entry, "inputs": inputs, "reference": reference, "kwargs": kwargs}, fh)
    except Exception as exc:  # noqa: BLE001
        return None, f"cannot hand the model to a worker process: {one_line(exc)} — use fresh_process=False"
    log_path = job / "worker.log"
    # The worker imports this package by name: make its root importable even when hwsearch is
    # not installed (e.g. run from a checkout).
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=root + (os.pathsep + path if path else ""))
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "targets.tvm._worker", str(job)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, (f"{what} worker timed out after {timeout_s:.0f} s and was killed — raise timeout_s or "
                          f"lower trials/samples; log: {log_path}")
        finally:
            kill_group(proc)  # MetaSchedule's builder/runner workers live in the worker's group
    result_path = job / "result.json"
    if rc == 0 and result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except Exception as exc:  # noqa: BLE001
            return None, f"unreadable worker result {result_path}: {one_line(exc)}"
        logger.debug("worker finished in %.1f s", time.monotonic() - start)
        shutil.rmtree(job, ignore_errors=True)
        return result, ""
    why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
    return None, f"{what} worker crashed ({why}): {last_line(log_path)} — full log: {log_path}"


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group this module started for ``proc`` (no-op once it is gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("worker %d did not exit after SIGKILL", proc.pid)


def last_line(path: Path) -> str:
    """The last informative line of a log file (or a placeholder)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")):
            return line[:300]
    return "(empty log)"
