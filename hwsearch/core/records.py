"""Measurement records: append-only JSON lines, one per measured plan.

Each record carries its provenance: target, backend, mode, device, library versions, date,
repeats and spread, and the latency the cost model predicted before the measurement. A failed
build or run is a record too (``error`` set, ``latency_s`` null). A malformed line is reported
with file and line number; :func:`load` can skip it (``strict=False``) so nothing already
measured is lost.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hwsearch.core.errors import StoreError

__all__ = ["SCHEMA_VERSION", "append", "load", "fastest", "accuracy_of", "REQUIRED"]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "plan_key", "plan", "target", "backend", "mode", "latency_s",
            "predicted_latency_s", "versions", "date", "error")


def _stamped(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with this layout's ``schema_version``, validated. A record carrying another
    version is refused rather than relabelled (a backend result's own layout version belongs in
    ``result_schema_version``: see :func:`hwsearch.measure.plan_record`)."""
    if record.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ValueError(f"measurement record says schema_version {record['schema_version']!r}, records are "
                         f"version {SCHEMA_VERSION}: keep a result's own version as result_schema_version")
    record = {**record, "schema_version": SCHEMA_VERSION}
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"measurement record lacks {missing}")
    return record


def append(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record (validated) as a line; flushed and fsynced so a kill loses nothing."""
    record = _stamped(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load(path: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """All records of a file ([] when it does not exist). A bad line raises :class:`StoreError`
    naming ``file:line`` (or is skipped with a warning when ``strict=False``)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                if rec.get("schema_version") != SCHEMA_VERSION:
                    raise ValueError(f"schema_version {rec.get('schema_version')!r}, expected {SCHEMA_VERSION}")
                missing = [k for k in REQUIRED if k not in rec]
                if missing:
                    raise ValueError(f"missing {missing}")
            except ValueError as exc:  # JSONDecodeError is a ValueError
                msg = f"{path}:{no}: bad measurement record ({exc}); fix or delete that line"
                if strict:
                    raise StoreError(msg) from None
                log.warning(msg)
                continue
            out.append(rec)
    return out


class StudyRecords:
    """Measurement records kept in an Optuna storage (so many workers on many machines share
    them), mirrored to a local JSON-lines file.

    Records live as user attributes ``m:<n>:<worker>`` of the study ``<prefix>-measurements``;
    any Optuna storage works (SQLite, PostgreSQL, journal). ``append`` writes the storage first,
    then the mirror.
    """

    def __init__(self, storage, prefix: str, mirror: str | Path | None = None, worker: str = "main") -> None:
        import optuna

        self.mirror = Path(mirror) if mirror else None
        self.worker = worker
        self.study = optuna.create_study(study_name=f"{prefix}-measurements", storage=storage, load_if_exists=True)

    def load(self) -> list[dict[str, Any]]:
        attrs = self.study.user_attrs
        keys = sorted((k for k in attrs if k.startswith("m:")), key=lambda k: (int(k.split(":")[1]), k))
        return [attrs[k] for k in keys]

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = json.loads(json.dumps(_stamped(record), default=str))  # what the storage will hold
        n = len([k for k in self.study.user_attrs if k.startswith("m:")])
        self.study.set_user_attr(f"m:{n:06d}:{self.worker}", record)
        if self.mirror is not None:
            append(self.mirror, record)
        return record


def fastest(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of measured records: by the speed-up over the dense model measured in the same
    sitting (``speedup_vs_fastest``) when every record has one — latencies of different sittings
    are not comparable on a machine whose speed drifts —, else by ``latency_s`` brought to the
    dense baseline's speed (× ``drift_factor``)."""
    if all(r.get("speedup_vs_fastest") for r in recs):
        return max(recs, key=lambda r: float(r["speedup_vs_fastest"]))
    return min(recs, key=lambda r: float(r["latency_s"]) * float(r.get("drift_factor") or 1.0))


def accuracy_of(recs: list[dict[str, Any]], plan_key: str) -> float | None:
    """The accuracy recorded for ``plan_key`` (on its first record that has one, whether or not
    its measurement succeeded), None when none has."""
    return next((r["accuracy"] for r in recs if r.get("plan_key") == plan_key and r.get("accuracy") is not None),
                None)
