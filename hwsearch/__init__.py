"""hwsearch — hardware-aware per-layer sparsity search for PyTorch.

The package is the API face: the vocabulary and the four jobs, each a function::

    import hwsearch

    g = hwsearch.analyze(model, example)                        # one row per prunable layer
    plan = hwsearch.Plan({"pw": hwsearch.LayerChoice("channel", 0.5)})
    res = hwsearch.search(hwsearch.SearchConfig(out_dir="runs/a", latency_budget_x=0.7))
    out, manifest = hwsearch.export("runs/a")                    # the deployment bundle
    hwsearch.report("runs/a")                                    # plots and tables
    df, files = hwsearch.profile("host-x86", out="prof")         # per-layer latency + a LUT model

The modules behind them are named for what they hold (``searching``, ``exporting``,
``profiling``, ``reporting``), so a verb is never shadowed by a submodule of the same name.
Names are imported on first use (PEP 562), so ``import hwsearch`` loads neither torch nor
Optuna.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analyze", "Plan", "LayerChoice", "SearchConfig", "SearchResult", "get_target",
           "search", "profile", "export", "report"]

_LAZY = {
    "analyze": ("hwsearch.graph", "analyze"),
    "Plan": ("hwsearch.core.plan", "Plan"),
    "LayerChoice": ("hwsearch.core.plan", "LayerChoice"),
    "SearchConfig": ("hwsearch.searching.config", "SearchConfig"),
    "SearchResult": ("hwsearch.searching.config", "SearchResult"),
    "get_target": ("targets.spec", "get_target"),
    "search": ("hwsearch.searching.loop", "search"),                # find per-layer sparsity for a device
    "profile": ("hwsearch.profiling", "profile_target"),            # profile a target
    "export": ("hwsearch.exporting", "from_search"),                # export a tuned deployment
    "report": ("hwsearch.reporting", "study_report"),               # plots and tables of a search
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'hwsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
