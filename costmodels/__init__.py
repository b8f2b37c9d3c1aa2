"""Cost models: predict latency, weight storage and peak activation memory of a per-layer plan.

``default_for(target).predict(graph, plan) -> Cost``; ``refit(samples)`` from measurements;
``save``/``load`` as versioned JSON. See :mod:`costmodels.base` for the contract.
"""
from __future__ import annotations

from costmodels.base import Cost, CostModel, CoverageError, FitReport, fidelity
from costmodels.registry import default_for, make, names, register

__all__ = ["Cost", "CostModel", "CoverageError", "FitReport", "fidelity", "default_for", "make", "names", "register"]
