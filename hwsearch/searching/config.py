"""What a search is asked (:class:`SearchConfig`) and what it gives back (:class:`SearchResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from costmodels.base import FitReport
from hwsearch import zoo
from hwsearch.core import patterns
from hwsearch.core.budgets import Budgets
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan
from hwsearch.deploy import DenseBaseline
from targets.spec import RUNTIMES

__all__ = ["SearchConfig", "RoundResult", "SearchResult", "DENSE_PLAN"]

DENSE_PLAN = Plan()


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs. Times in seconds, memory in bytes, ratios as fractions."""

    out_dir: Path
    target: str = "host-x86"
    model: str = zoo.REFERENCE[0]
    data: str = zoo.REFERENCE[1]
    storage: str | None = None            # Optuna storage URL; default sqlite:///<out_dir>/study.db
    study_name: str = "hwsearch"
    rounds: int = 2
    trials: int = 60                      # per round
    measure_top_k: int = 3                # Pareto plans measured per round
    max_accuracy_drop: float = 0.05       # measure front plans within this (absolute) of dense accuracy
    repeats: int = 10                     # time_evaluator repeats (median and IQR over these)
    min_repeat_ms: int = 20               # each repeat runs at least this long
    mode: str | None = None               # TVM measuring mode; default from the target spec ("tuned" for --runtime tvm)
    runtime: str = "auto"                 # the runtime plans are measured in; auto: the fastest dense one
    baseline_runtimes: tuple[str, ...] | None = None  # runtimes the dense model is timed in first (None: all)
    passes: int = 3                       # fresh processes per sitting (ONNX Runtime / torch)
    sitting_rounds: int = 15              # interleaved rounds per pass
    tuning_trials: int = 64               # MetaSchedule trials per model in "tuned" mode
    samples: int = 8                      # schedules sampled per function in "quick" mode
    patterns: tuple[str, ...] = ("dense", "unstructured", "channel", "head", "qhead")
    criterion: str = "magnitude"
    max_ratio: float = 0.9
    min_density: float = 0.05
    channel_multiple: int = 8
    finetune_steps: int = 0
    bn_recalibration: int = 8             # training batches to re-estimate BatchNorm statistics per plan (0: off)
    sampler: str = "nsga2"
    polish_trials: int = 40               # per round, with budgets: local search around the best feasible plans
    greedy_seed: bool = True              # with a latency budget: round 1 also starts from a NetAdapt-style greedy plan
    edge_seeds: int = 64                  # with a latency budget: round 1 also starts from up to this many plans on its edge
    costmodel_path: Path | None = None    # start each fit from this saved model (e.g. a profile's LUT)
    tvm_dir: Path | None = None           # TVM tuning database to use; default <out_dir>/tvm-<target>
    seed: int = 0
    worker: str = "main"                  # trials are counted per worker: N workers add N x trials
    latency_budget_s: float | None = None
    latency_budget_x: float | None = None  # budget as a fraction of the fastest dense runtime's latency
    flash_budget_bytes: int | None = None
    sram_budget_bytes: int | None = None

    @property
    def budgets(self) -> Budgets:
        """The budgets in seconds and bytes (a budget given as ``latency_budget_x`` counts once the
        loop has turned it into seconds against the dense baseline)."""
        return Budgets(self.latency_budget_s, self.flash_budget_bytes, self.sram_budget_bytes)

    @property
    def memory_matters(self) -> bool:
        """Whether a flash or SRAM budget is set (else weight-level patterns that save no time are
        not searched: see :meth:`hwsearch.space.SearchSpace.build`)."""
        return self.budgets.memory

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve() / 'study.db'}"

    def validate(self) -> None:
        """Cheap checks before any model is loaded; :class:`PlanError` names the bad value."""

        if self.rounds < 1 or self.trials < 1 or self.measure_top_k < 0:
            raise PlanError(f"rounds ({self.rounds}) and trials ({self.trials}) must be >= 1 and "
                            f"measure_top_k ({self.measure_top_k}) >= 0")
        if not 0.0 < self.max_ratio < 1.0:
            raise PlanError(f"max_ratio {self.max_ratio} out of range: give 0 < max_ratio < 1")
        if not 0.0 <= self.min_density < 1.0:
            raise PlanError(f"min_density {self.min_density} out of range: give 0 <= min_density < 1")
        bad = sorted(set(self.patterns) - set(patterns.names()))
        if bad:
            raise PlanError(f"unknown patterns {bad}; valid: {', '.join(patterns.names())}")
        if self.latency_budget_x is not None and not 0 < self.latency_budget_x:
            raise PlanError(f"latency_budget_x {self.latency_budget_x} must be positive (e.g. 0.7: 70% of the "
                            "dense model's latency in the fastest runtime)")
        if self.latency_budget_x is not None and self.latency_budget_s is not None:
            raise PlanError("give a latency budget either in seconds or as a fraction of the dense latency, not both")
        for name in ("latency_budget_s", "flash_budget_bytes", "sram_budget_bytes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlanError(f"{name} {v} must be positive")
        if min(self.bn_recalibration, self.finetune_steps, self.polish_trials, self.edge_seeds) < 0:
            raise PlanError(f"bn_recalibration ({self.bn_recalibration}), finetune_steps ({self.finetune_steps}), "
                            f"polish_trials ({self.polish_trials}) and edge_seeds ({self.edge_seeds}) must be >= 0")
        if self.runtime != "auto" and self.runtime not in RUNTIMES:
            raise PlanError(f"runtime {self.runtime!r} unknown; valid: auto, {', '.join(RUNTIMES)}")
        bad_rt = sorted(set(self.baseline_runtimes or ()) - set(RUNTIMES))
        if bad_rt:
            raise PlanError(f"baseline runtimes {bad_rt} unknown; valid: {', '.join(RUNTIMES)}")
        if self.passes < 1 or self.sitting_rounds < 1:
            raise PlanError(f"passes ({self.passes}) and sitting_rounds ({self.sitting_rounds}) must be >= 1")
        if self.channel_multiple < 1:
            raise PlanError(f"channel_multiple {self.channel_multiple} must be >= 1")


@dataclass
class RoundResult:
    round: int
    study_name: str
    trials: int
    measured: list[dict[str, Any]]
    fit: FitReport | None
    heldout: dict[str, float]             # previous model's error on this round's new measurements
    dense: dict[str, Any] | None = None   # the dense model as measured in this round's sitting


@dataclass
class SearchResult:
    config: SearchConfig
    rounds: list[RoundResult] = field(default_factory=list)
    front: pd.DataFrame | None = None
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    baseline: DenseBaseline | None = None  # the dense model per runtime, timed when the search started
    runtime: str | None = None             # the runtime plans were measured in
    runtime_reason: str = ""
