"""Provenance stamped on every measurement: library versions and the UTC date."""
from __future__ import annotations

import datetime as _dt
import platform

__all__ = ["versions", "utc_now"]


def versions() -> dict[str, str]:
    """Library versions recorded with every measurement and export: python, torch, and tvm,
    optuna, torch_pruning where they import (a missing optional library is left out)."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("tvm", "optuna", "torch_pruning"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a missing optional library is simply not recorded
            pass
    return out


def utc_now() -> str:
    """The current time as ISO-8601 UTC with seconds, e.g. ``2026-11-21T13:05:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
