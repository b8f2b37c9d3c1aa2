"""hwsearch — hardware-aware per-layer sparsity search for PyTorch.

The vocabulary is on the package; the verbs are in the modules of the same names (a function
``hwsearch.search`` would be shadowed by the module ``hwsearch.search`` as soon as it is
imported, so the verbs are not re-exported here)::

    import hwsearch
    from hwsearch.search import search
    from hwsearch import export, profile, report

    g = hwsearch.analyze(model, example)                       # one row per prunable layer
    plan = hwsearch.Plan({"pw": hwsearch.LayerChoice("channel", 0.5)})
    res = search(hwsearch.SearchConfig(out_dir="runs/a", latency_budget_x=0.7))
    export.from_search("runs/a")                               # the deployment bundle
    report.study_report("runs/a")                              # plots and tables
    profile.profile(g, hwsearch.get_target("host-x86"), work_dir="prof")

Names are imported on first use (PEP 562), so ``import hwsearch`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analyze", "Plan", "LayerChoice", "SearchConfig", "SearchResult", "get_target"]

_LAZY = {
    "analyze": ("hwsearch.graph", "analyze"),
    "Plan": ("hwsearch.core.plan", "Plan"),
    "LayerChoice": ("hwsearch.core.plan", "LayerChoice"),
    "SearchConfig": ("hwsearch.search", "SearchConfig"),
    "SearchResult": ("hwsearch.search", "SearchResult"),
    "get_target": ("targets.spec", "get_target"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'hwsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
