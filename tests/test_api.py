"""The package face: the vocabulary is importable from ``hwsearch`` without importing it all."""
from __future__ import annotations

import subprocess
import sys

import pytest

import hwsearch


def test_face_names_resolve_to_the_real_objects():
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.searching import SearchConfig
    from targets.spec import get_target

    assert hwsearch.analyze is analyze and hwsearch.Plan is Plan and hwsearch.LayerChoice is LayerChoice
    assert hwsearch.SearchConfig is SearchConfig and hwsearch.get_target is get_target
    assert set(hwsearch.__all__) <= set(dir(hwsearch))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hwsearch.nope  # noqa: B018


def test_the_four_jobs_are_functions_on_the_package_even_after_their_modules_load():
    """``hwsearch.search`` etc. are the functions the CLI calls, and stay so once the modules
    behind them are imported (a submodule of the same name would shadow them)."""
    import hwsearch.exporting
    import hwsearch.profiling
    import hwsearch.reporting
    import hwsearch.searching  # noqa: F401
    from hwsearch.exporting import from_search
    from hwsearch.profiling import profile_target
    from hwsearch.reporting import study_report
    from hwsearch.searching import search

    assert hwsearch.search is search and hwsearch.export is from_search
    assert hwsearch.profile is profile_target and hwsearch.report is study_report
    for verb in ("search", "profile", "export", "report"):
        assert callable(getattr(hwsearch, verb)), verb


def test_import_is_lazy():
    """``import hwsearch`` loads neither torch nor optuna (the CLI's --help stays fast)."""
    code = "import sys, hwsearch; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
