"""Errors a cost model raises for its user: one line saying what is wrong and how to fix it.

A leaf module (it imports only :mod:`hwsearch.core.errors`), so every module of
:mod:`costmodels` can raise them; :mod:`costmodels.base` re-exports them with the contract.
"""
from __future__ import annotations

from hwsearch.core.errors import HwsearchError, SpecError

__all__ = ["CostModelError", "CoverageError", "CostModelFileError"]


class CostModelError(HwsearchError, ValueError):
    """A cost model cannot do what was asked (the base of every error a cost model raises for
    its user). A ``ValueError`` too, as bad arguments were before it existed."""


class CoverageError(CostModelError):
    """A layer kind the cost model has no figure for (never priced as a silent zero)."""


class CostModelFileError(CostModelError, SpecError):
    """A cost-model file or table (or a spec's cost-model setting) is malformed, of another
    version, or for another target or runtime. Also a :class:`SpecError`, as files are."""
