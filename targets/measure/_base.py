"""The measuring-backend contract: :class:`MeasureBackend` and what it is given (:class:`GraphLike`)."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Protocol

from ._result import MeasureResult

__all__ = ["MeasureBackend", "GraphLike"]


class GraphLike(Protocol):
    """What a backend reads of a model's analysis (``hwsearch.graph.ModelGraph`` is one):
    ``table``, a pandas DataFrame with one row per prunable layer indexed by the layer's module
    name, and ``example_inputs``, the tuple of tensors the model runs on."""

    table: Any
    example_inputs: tuple[Any, ...]


class MeasureBackend(abc.ABC):
    """Measures one folded model (a plan, physically pruned) on a target, once per call.

    This is the *per-plan* kind of backend, chosen by a target spec's ``[measure] backend`` and
    found by name in :mod:`targets.measure`'s registry (``tvm-local``, ``tvm-rpc``,
    ``mcu-qemu``). The other kind, the interleaved sittings of :mod:`targets.runtimes` (ONNX
    Runtime, torch), times the dense model and a round's plans together in fresh processes so
    that speed-ups are paired ratios; it returns ``SittingResult`` and is not registered here.

    Contract, checked for every registered backend by ``tests/contracts/test_measure_backends.py``:

    * :attr:`name` is the registry name and the result's ``backend``; :attr:`runtime` names what
      runs the model (its version is recorded under ``versions[runtime]``).
    * :meth:`available` is cheap and never raises: ``None`` when the backend can measure on this
      machine, else one line saying what is missing *and the command that installs it*.
    * :meth:`measure` returns a :class:`MeasureResult` with ``latency_s`` in seconds per
      inference, or with ``error`` set and ``latency_s=None``: a missing toolchain, a model it
      cannot compile, a build, run or device failure, an unreachable device or a timeout is a
      result, never an exception. It raises only for arguments that are wrong whatever the
      machine (``ValueError``, e.g. an unknown ``mode``). Backends are stateless between calls
      and may be called from several threads on different ``work_dir``\\ s.
    """

    #: registry name, e.g. ``"tvm-local"``
    name: str = ""
    #: what runs the model, e.g. ``"tvm"``, ``"qemu"``
    runtime: str = ""

    @abc.abstractmethod
    def available(self) -> str | None:
        """``None`` when usable here, else the reason with the install command."""

    @abc.abstractmethod
    def measure(self, target: Any, graph: GraphLike, folded: Any, *, work_dir: Path, mode: str | None = None,
                resolved: Any = None, **opts: Any) -> MeasureResult:
        """Measure ``folded`` (an ``nn.Module``, the plan applied with channels removed) on
        ``target`` (a ``TargetSpec``: its ``measure`` dict, figures and name).

        ``graph``: the analysis of the model before pruning (its layer table names the layers
        ``layer_s`` is keyed by); ``work_dir``: where builds, tuning databases and logs go
        (created when missing); ``mode``: the backend's measuring mode (default: the spec's
        ``[measure] mode``); ``resolved``: the plan's resolved layer table
        (``hwsearch.core.resolve``), which backends that price storage formats need; ``opts``:
        backend settings (``tuning_trials``, ``samples``, ``repeats``, ``min_repeat_ms`` …) —
        a backend ignores those it has no use for."""
