"""A device's budgets — latency, flash, SRAM — and how far a plan's cost is from them.

One object holds the triple that a search, its local search, its front and its report all
check, so feasibility is computed in one place::

    b = Budgets(latency_s=80e-6, flash_bytes=None, sram_bytes=256 * 1024)
    b.names()                          # ["latency", "sram"]: the budgets given, in order
    b.violations(90e-6, 10_000, 1000)  # [0.125, -0.996...]: <= 0 is within budget
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hwsearch.core.errors import PlanError

__all__ = ["Budgets", "BUDGET_NAMES"]

BUDGET_NAMES = ("latency", "flash", "sram")
_UNITS = {"latency": (1e6, "µs"), "flash": (1 / 1024, "KiB"), "sram": (1 / 1024, "KiB")}


@dataclass(frozen=True)
class Budgets:
    """Budgets in seconds and bytes; ``None`` where the user gave none."""

    latency_s: float | None = None
    flash_bytes: int | None = None
    sram_bytes: int | None = None

    def __post_init__(self) -> None:
        for name, v in zip(BUDGET_NAMES, self._values()):
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise PlanError(f"{name} budget {v} must be a positive number")

    def _values(self) -> tuple[float | None, float | None, float | None]:
        return (self.latency_s, self.flash_bytes, self.sram_bytes)

    @property
    def given(self) -> bool:
        """Whether any budget is set (a search is then constrained)."""
        return any(v is not None for v in self._values())

    @property
    def memory(self) -> bool:
        """Whether a flash or SRAM budget is set."""
        return self.flash_bytes is not None or self.sram_bytes is not None

    def names(self) -> list[str]:
        """The names of :meth:`violations`' entries, in order."""
        return [n for n, v in zip(BUDGET_NAMES, self._values()) if v is not None]

    def violations(self, latency_s: float, flash_bytes: float, sram_bytes: float) -> list[float]:
        """One value per budget given, relative to it (``cost / budget - 1``): ≤ 0 is within
        budget. The constraint values Optuna's samplers read."""
        cost = (latency_s, flash_bytes, sram_bytes)
        return [c / b - 1.0 for c, b in zip(cost, self._values()) if b is not None]

    @staticmethod
    def feasible(violations: list[float] | tuple[float, ...]) -> bool:
        """Whether stored violations (as :meth:`violations` returned them) meet every budget."""
        return all(v <= 0 for v in violations)

    @staticmethod
    def total_violation(violations: list[float] | tuple[float, ...]) -> float:
        """How far outside the budgets, summed (0 when feasible): ranks infeasible plans."""
        return sum(max(0.0, v) for v in violations)

    def closest_text(self, best: dict[str, float]) -> str:
        """``best`` (the smallest cost reached per budget name) beside each budget, as one line."""
        parts = []
        for name, budget in zip(BUDGET_NAMES, self._values()):
            if budget is None or name not in best:
                continue
            scale, unit = _UNITS[name]
            label = "SRAM" if name == "sram" else name
            parts.append(f"{label}: best {best[name] * scale:.1f} {unit} vs budget {budget * scale:.1f} {unit}")
        return "; ".join(parts)
