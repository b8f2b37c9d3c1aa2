"""Cost models: predict latency, weight storage and peak activation memory of a per-layer plan.

``default_for(target).predict(graph, plan) -> Cost``; ``refit(samples)`` from measurements;
``save`` as versioned JSON and ``load(path, target)`` back. See :mod:`costmodels.base` for the
contract, :mod:`costmodels.registry` for the models by name.
"""
from __future__ import annotations

from costmodels.base import (BatchLatency, Cost, CostModel, CostModelError, CostModelFileError, CoverageError,
                             FitReport, PlanArrays, Sample, fidelity)
from costmodels.registry import default_for, load, make, names, register

__all__ = ["BatchLatency", "Cost", "CostModel", "CostModelError", "CostModelFileError", "CoverageError",
           "FitReport", "PlanArrays", "Sample", "fidelity", "default_for", "load", "make", "names", "register"]
