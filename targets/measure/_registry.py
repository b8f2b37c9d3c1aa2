"""The registry of per-plan measuring backends, by the name a target spec's ``[measure] backend``
gives."""
from __future__ import annotations

from collections.abc import Callable

from hwsearch.core.errors import SpecError

from ._base import MeasureBackend
from ._mcu import McuQemu
from ._tvm import TvmLocal, TvmRpc

__all__ = ["register", "get", "names"]

_FACTORIES: dict[str, Callable[[], MeasureBackend]] = {}


def register(name: str, factory: Callable[[], MeasureBackend]) -> None:
    """Make ``factory()`` (a :class:`MeasureBackend`, usually its class) the backend called
    ``name``. Raises ``ValueError`` when ``name`` is already taken by another factory."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a measuring backend needs a non-empty name, got {name!r}")
    old = _FACTORIES.get(name)
    if old is not None and old is not factory:
        raise ValueError(f"measuring backend {name!r} is already registered ({old!r}); pick another name")
    _FACTORIES[name] = factory


def get(name: str) -> MeasureBackend:
    """A new instance of the backend called ``name``. Raises :class:`SpecError` listing the
    registered names when there is none."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise SpecError(f"unknown measuring backend {name!r}; valid: {', '.join(names())} "
                        "(or register one with targets.measure.register)") from None
    return factory()


def names() -> list[str]:
    """The registered backend names, in registration order."""
    return list(_FACTORIES)


for _factory in (TvmLocal, TvmRpc, McuQemu):
    register(_factory.name, _factory)
