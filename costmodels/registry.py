"""Cost models by name, the default one for a target, and reading a saved model of any kind.

Built-in models are named here by ``"module:Class"`` and imported only when first made, so this
module imports :mod:`costmodels.base` and no implementation; an implementation never imports this
module (nor the package). ``register`` adds a kind: a ``"module:Class"`` string or a callable
``factory(target) -> CostModel``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from costmodels.base import CostModel, CostModelFileError, read_model_file

__all__ = ["register", "make", "names", "default_for", "load"]

Factory = Callable[[Any], CostModel]

_FACTORIES: dict[str, str | Factory] = {
    "roofline": "costmodels.analytical:RooflineModel",
    "gpu24": "costmodels.gpu24:Gpu24Model",      # 2:4 speed-ups on NVIDIA GPUs
    "lut": "costmodels.lut:LUTModel",
    "mcu": "costmodels.mcu_cost:McuPlanModel",
    "kernel": "costmodels.kernel_cost:KernelModel",   # a device's kernel predictor (hwsearch sweep)
}
_DEFAULT_BY_TARGET_KIND: dict[str, str] = {"cpu": "roofline", "gpu": "roofline", "mcu": "mcu"}


def register(kind: str, factory: str | Factory, *, default_for_kinds: tuple[str, ...] = ()) -> None:
    """Register ``factory`` under ``kind``: ``"module:Class"`` (imported when first made) or a
    callable ``factory(target) -> CostModel``; the default model of targets of ``default_for_kinds``."""
    _FACTORIES[kind] = factory
    for tk in default_for_kinds:
        _DEFAULT_BY_TARGET_KIND[tk] = kind


def _resolve(kind: str) -> Factory:
    factory = _FACTORIES[kind]
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        _FACTORIES[kind] = factory
    return factory


def make(kind: str, target: Any) -> CostModel:
    """A fresh cost model of ``kind`` for ``target``; :class:`CostModelFileError` lists valid kinds."""
    if kind not in _FACTORIES:
        raise CostModelFileError(f"unknown cost model {kind!r}; valid: {', '.join(sorted(_FACTORIES))}")
    return _resolve(kind)(target)


def names() -> list[str]:
    """Every registered kind, sorted (nothing is imported)."""
    return sorted(_FACTORIES)


def default_for(target: Any) -> CostModel:
    """The default cost model for a target: ``[measure] costmodel`` in its spec if set, else by kind."""
    kind = target.measure.get("costmodel") or _DEFAULT_BY_TARGET_KIND.get(target.kind)
    if kind is None:
        raise CostModelFileError(f"no cost model for target kind {target.kind!r}; set [measure] costmodel "
                                 f"in {target.path}")
    return make(kind, target)


def load(path: str | Path, target: Any) -> CostModel:
    """Read a file written by :meth:`CostModel.save` for ``target``, of any registered kind;
    :class:`CostModelFileError` says what is wrong (another target or runtime, another
    ``schema_version``, malformed content, an unknown kind)."""
    data = read_model_file(path, target)
    model = make(str(data.get("kind", "?")), target)
    model.restore(data)
    return model

