"""Optuna storages: open one by URL (SQLite, PostgreSQL, journal file) and tidy after a kill."""
from __future__ import annotations

import logging
import time

import optuna

from hwsearch.core.errors import StoreError

__all__ = ["open_storage", "fail_stale"]

log = logging.getLogger(__name__)


def open_storage(url: str, *, attempts: int = 5) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:///…``, ``postgresql://…``, or ``journal:<file>``
    for a journal file). Raises :class:`StoreError` with the fix when it cannot be opened.

    Workers started together race to create the schema of an empty database (one gets a
    unique-key violation): a failed open is retried a few times before it is reported."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            if url.startswith("journal:"):
                from optuna.storages.journal import JournalFileBackend, JournalStorage
                return JournalStorage(JournalFileBackend(url[len("journal:"):]))
            kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:
            last = exc
            text = str(exc).lower()
            if not any(k in text for k in ("unique", "duplicate", "already exists", "locked")):
                break  # not a creation race: report at once
            time.sleep(0.5 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise StoreError(f"cannot open study storage {url!r}: {first[:200]} — check the URL, that the "
                     "server is running and reachable, or that the file is an Optuna study") from None


def fail_stale(study: optuna.Study, mine: list[optuna.trial.FrozenTrial]) -> None:
    """Trials of this worker left RUNNING by a killed process are marked FAIL (and topped up)."""
    for t in mine:
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # public API: a running trial may be told
            log.info("marked stale running trial %d of worker %s as failed", t.number, t.user_attrs.get("worker"))
