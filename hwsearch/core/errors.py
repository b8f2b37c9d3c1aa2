"""Errors users can act on. Each message names the bad value and how to fix it; the CLI
prints it as one line and exits with status 2."""
from __future__ import annotations

__all__ = ["HwsearchError", "ModelError", "PlanError", "SpecError", "StoreError"]


class HwsearchError(Exception):
    """Base class: a problem with the user's input, reported as one line.

    ``details`` are optional further lines (e.g. the candidates to choose from) that the CLI
    prints indented under the one-line message; empty unless a subclass sets them."""

    details: tuple[str, ...] = ()


class ModelError(HwsearchError):
    """The model cannot be exported, analysed or loaded."""


class PlanError(HwsearchError, ValueError):
    """A plan names an unknown layer or pattern, a ratio out of range, or an invalid shape."""


class SpecError(HwsearchError, ValueError):
    """A target spec, study config or cost-model file is malformed or has the wrong version."""


class StoreError(HwsearchError):
    """A study storage, record file or output directory cannot be read or written."""
