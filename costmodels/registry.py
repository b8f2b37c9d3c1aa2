"""Cost models by name, and the default one for a target."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from costmodels.base import CostModel
from hwsearch.core.errors import SpecError

__all__ = ["register", "make", "names", "default_for"]

_FACTORIES: dict[str, Callable[[Any], CostModel]] = {}
_DEFAULT_BY_TARGET_KIND: dict[str, str] = {"cpu": "roofline", "gpu": "roofline"}


def register(kind: str, factory: Callable[[Any], CostModel], *, default_for_kinds: tuple[str, ...] = ()) -> None:
    """Register ``factory(target) -> CostModel`` under ``kind``."""
    _FACTORIES[kind] = factory
    for tk in default_for_kinds:
        _DEFAULT_BY_TARGET_KIND[tk] = kind


def make(kind: str, target: Any) -> CostModel:
    """A fresh cost model of ``kind`` for ``target``; :class:`SpecError` lists valid kinds."""
    _load_builtin()
    if kind not in _FACTORIES:
        raise SpecError(f"unknown cost model {kind!r}; valid: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[kind](target)


def names() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def default_for(target: Any) -> CostModel:
    """The default cost model for a target: ``[measure] costmodel`` in its spec if set, else by kind."""
    _load_builtin()
    kind = target.measure.get("costmodel") or _DEFAULT_BY_TARGET_KIND.get(target.kind)
    if kind is None:
        raise SpecError(f"no cost model for target kind {target.kind!r}; set [measure] costmodel in {target.path}")
    return make(kind, target)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from costmodels.analytical import RooflineModel

    register("roofline", RooflineModel)
    import costmodels.gpu24  # noqa: F401  (registers "gpu24": 2:4 speed-ups on NVIDIA GPUs)
    from costmodels.lut import LUTModel
    from costmodels.mcu_cost import McuPlanModel

    register("lut", LUTModel)
    register("mcu", McuPlanModel, default_for_kinds=("mcu",))
