"""The persistent MetaSchedule tuning database under ``<work_dir>/tuning_db``.

One ``JSONDatabase`` per work_dir, shared by quick sampling, tuning, and every later compile,
across processes and models: a workload (a fused PrimFunc's structure, so a layer shape) is
scheduled once. Writers take an exclusive ``flock`` on ``tuning_db/.lock`` so two measurements
do not schedule the same workload at the same time; the database is (re)opened after the lock
is held so records written by other processes are seen.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import BuildFailure

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir import meta_schedule as ms

__all__ = ["database_dir", "database_lock", "has_record", "open_database", "workload_count",
           "record_count"]

logger = logging.getLogger(__name__)

_WORKLOADS = "database_workload.json"
_RECORDS = "database_tuning_record.json"


def database_dir(work_dir: Path) -> Path:
    """``<work_dir>/tuning_db`` (created)."""
    path = Path(work_dir) / "tuning_db"
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_database(work_dir: Path) -> ms.database.JSONDatabase:
    """Load (or create) ``JSONDatabase(work_dir=<work_dir>/tuning_db)``.

    Raises :class:`BuildFailure` naming the file when a stored line cannot be parsed (e.g. a
    database written by another TVM version): move the folder away to start afresh.
    """
    from tvm.s_tir import meta_schedule as ms

    path = database_dir(work_dir)
    try:
        return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(
            f"cannot load the tuning database {path}: {exc!s:.200} — move that folder away "
            "(it was probably written by another TVM version) and measure again"
        ) from exc


def has_record(database: ms.database.Database, workload: tvm.IRModule,
               target: tvm.target.Target) -> bool:
    """True when ``database`` holds a *usable* schedule for ``workload``.

    ``has_workload`` alone is not enough: MetaSchedule commits a workload before measuring it,
    so a tuning run whose candidates all failed leaves a workload with no valid record."""
    if not database.has_workload(workload):
        return False
    return database.query_tuning_record(workload, target, "main") is not None


def workload_count(work_dir: Path) -> int:
    """Number of workloads stored in ``<work_dir>/tuning_db`` (lines of the workload table)."""
    return _count_lines(Path(work_dir) / "tuning_db" / _WORKLOADS)


def record_count(work_dir: Path) -> int:
    """Number of tuning records stored in ``<work_dir>/tuning_db``."""
    return _count_lines(Path(work_dir) / "tuning_db" / _RECORDS)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


@contextlib.contextmanager
def database_lock(work_dir: Path, timeout_s: float = 3600.0) -> Iterator[None]:
    """Hold an exclusive lock on ``<work_dir>/tuning_db/.lock`` (waits up to ``timeout_s`` s).

    Raises :class:`BuildFailure` when another process holds it longer than ``timeout_s``."""
    path = database_dir(work_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    logger.info("waiting for the tuning-database lock %s", path)
                    waited = True
                if time.monotonic() > deadline:
                    raise BuildFailure(
                        f"tuning database {path.parent} stayed locked for {timeout_s:.0f} s by "
                        "another measurement — wait for it or use another work_dir"
                    ) from None
                time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
