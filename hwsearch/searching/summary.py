"""``summary.json``: what a search did, versioned, read back by ``export`` and ``report``.

Written at the end of every search with ``pareto.csv`` and ``pareto.png``. Version 2 added
``deployment`` (the runtime plans were measured in, why, and the dense model per runtime);
version 1 files (no ``summary_schema_version``) still load, without it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from hwsearch.core.errors import SpecError, StoreError
from hwsearch.plots import pareto_plot
from hwsearch.searching.config import SearchConfig
from targets.spec import TargetSpec

__all__ = ["SearchSummary", "SUMMARY_SCHEMA_VERSION", "write_outputs"]

SUMMARY_SCHEMA_VERSION = 2
_READABLE = (1, 2)


@dataclass(frozen=True)
class SearchSummary:
    """The contents of ``summary.json``. ``config`` is the :class:`SearchConfig` as JSON."""

    config: dict[str, Any]                # required, with the target's identity: export rebuilds from them
    target: str
    model: str = ""
    data: str = ""
    study: str = ""
    storage: str = ""
    rounds: int = 0
    trials_per_round: int = 0
    measured_plans: int = 0
    failed_measurements: int = 0
    dense_latency_s: float | None = None
    deployment: dict[str, Any] | None = None
    patterns_not_offered: dict[str, Any] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    summary_schema_version: int = SUMMARY_SCHEMA_VERSION

    @property
    def runtime(self) -> str | None:
        """The runtime the search measured plans in (``None`` before version 2)."""
        return (self.deployment or {}).get("runtime")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, search_dir: Path) -> SearchSummary:
        """The summary of the search in ``search_dir``. :class:`StoreError` when there is none
        (not a search's output) or it is unreadable; :class:`SpecError` for a version this
        hwsearch cannot read."""
        path = Path(search_dir) / "summary.json"
        if not path.exists():
            raise StoreError(f"{path} not found: give the output directory of `hwsearch search`")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); rerun `hwsearch search` with the same "
                             "arguments to write it again") from None
        if not isinstance(d, dict):
            raise StoreError(f"{path} is not a search summary (a JSON object); rerun `hwsearch search`")
        version = d.get("summary_schema_version", 1)
        if version not in _READABLE:
            raise SpecError(f"{path} has summary_schema_version {version}; this hwsearch reads "
                            f"{', '.join(map(str, _READABLE))}: upgrade hwsearch or rerun the search")
        missing = [k for k in ("config", "target") if not d.get(k)]
        if missing or not isinstance(d["config"], dict):
            raise StoreError(f"{path} lacks {', '.join(missing) or 'a config object'}; rerun `hwsearch search` "
                             "to write it again")
        names = {f.name for f in dataclasses.fields(cls)} - {"summary_schema_version"}
        return cls(**{k: v for k, v in d.items() if k in names}, summary_schema_version=version)


def write_outputs(out: Path, study: optuna.Study, front: pd.DataFrame, recs: list[dict[str, Any]],
                  cfg: SearchConfig, target: TargetSpec,
                  not_offered: dict[str, dict[str, str]] | None = None) -> dict[str, Path]:
    """``pareto.csv``, ``pareto.png`` and ``summary.json`` in ``out``."""
    files = {}
    csv = front.drop(columns=["plan"]).copy()
    csv["plan"] = [json.dumps(p, sort_keys=True) for p in front["plan"]]
    csv.to_csv(out / "pareto.csv", index=False)
    files["pareto_csv"] = out / "pareto.csv"
    files["pareto_png"] = pareto_plot(study, front, out / "pareto.png",
                                      f"{cfg.model} on {target.identity} — last round ({study.study_name})")
    ok = [r for r in recs if not r.get("error") and r.get("latency_s")]
    summary = SearchSummary(
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        target=target.identity, model=cfg.model, data=cfg.data, study=study.study_name,
        storage=cfg.storage_url(), rounds=cfg.rounds, trials_per_round=cfg.trials,
        measured_plans=len(ok), failed_measurements=len(recs) - len(ok),
        dense_latency_s=front.attrs.get("dense_latency_s"),
        deployment=front.attrs.get("deployment"),  # the runtime plans were measured in, why, the dense baseline
        patterns_not_offered=not_offered or {},
        front=[{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
               for row in front.drop(columns=["plan"]).to_dict("records")])
    files["summary"] = summary.save(out / "summary.json")
    return files
