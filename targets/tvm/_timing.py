"""Timing with ``time_evaluator``: whole models through the Relax VM, kernels one by one.

Everything that runs code goes through a :class:`Device` (local CPU here, an RPC session in
``_rpc``), so the same timing code serves both backends.
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ._config import EvaluatorConfig
from ._errors import BuildFailure, MeasureFailure, one_line
from ._result import LayerTiming

if TYPE_CHECKING:
    import tvm

    from ._compile import KernelCall

__all__ = ["Device", "LocalDevice", "TimingStats", "random_args", "summarize", "time_function",
           "time_kernels", "time_model"]

logger = logging.getLogger(__name__)


class Device(Protocol):
    """Where compiled code runs. ``dev`` is the TVM device handle; ``description`` names it in
    records; ``load`` turns a ``tvm.compile`` executable into a runnable module there
    (uploading it for a remote device); ``tensor`` copies a numpy array onto it."""

    dev: Any
    description: str
    backend: str

    def load(self, executable: Any, tag: str) -> Any: ...

    def tensor(self, array: np.ndarray) -> Any: ...


class LocalDevice:
    """The host CPU (``tvm.cpu(0)``)."""

    backend = "tvm-local"

    def __init__(self, description: str) -> None:
        import tvm

        self.dev = tvm.cpu(0)
        self.description = description

    def load(self, executable: Any, tag: str) -> Any:  # noqa: ARG002 - tag names uploads only
        """The runnable module of ``executable`` (JIT-linked when it needs it)."""
        return executable.jit()

    def tensor(self, array: np.ndarray) -> Any:
        """``array`` as a TVM tensor on the host CPU."""
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(array), device=self.dev)


@dataclass(frozen=True)
class TimingStats:
    """Seconds per run: ``median_s``, ``iqr_s`` (75th − 25th percentile), ``min_s``, ``max_s``
    over ``repeats`` samples (each the mean of one repeat's runs)."""

    median_s: float
    iqr_s: float
    min_s: float
    max_s: float
    repeats: int


def summarize(samples_s: Sequence[float]) -> TimingStats:
    """Median, IQR, min and max of ``samples_s`` (seconds). Raises ``MeasureFailure`` when empty
    or non-finite."""
    values = [float(v) for v in samples_s]
    if not values or not all(np.isfinite(values)):
        raise MeasureFailure(f"time_evaluator returned unusable samples {values!r:.200}")
    q1, q3 = np.percentile(values, [25, 75])
    return TimingStats(
        median_s=float(statistics.median(values)),
        iqr_s=float(q3 - q1),
        min_s=float(min(values)),
        max_s=float(max(values)),
        repeats=len(values),
    )


def time_function(module: Any, name: str, device: Device, args: Sequence[Any],
                  evaluator: EvaluatorConfig) -> TimingStats:
    """Time ``module[name](*args)`` as :class:`EvaluatorConfig` describes (warm-up repeats
    dropped)."""
    try:
        ftimer = module.time_evaluator(
            name, device.dev, number=evaluator.number,
            repeat=evaluator.warmup + evaluator.repeat, min_repeat_ms=evaluator.min_repeat_ms,
        )
        result = ftimer(*args)
    except Exception as exc:  # noqa: BLE001
        raise MeasureFailure(f"timing {name} failed: {one_line(exc)}") from exc
    return summarize(list(result.results)[evaluator.warmup:])


def random_args(shapes_dtypes: Sequence[tuple[tuple[int, ...], str]], device: Device,
                seed: int = 0) -> list[Any]:
    """Tensors of the given shapes/dtypes on ``device``: uniform in [-1, 1) for floats, zeros
    for integers and booleans (safe as indices)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in shapes_dtypes:
        if np.dtype(dtype).kind == "f":
            arr = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        else:
            arr = np.zeros(shape, dtype=dtype)
        out.append(device.tensor(arr))
    return out


def time_model(executable: Any, device: Device, inputs: Sequence[np.ndarray],
               evaluator: EvaluatorConfig) -> tuple[TimingStats, list[np.ndarray]]:
    """Run the compiled model once for its outputs, then time ``main`` with the stateful VM API
    (``set_input`` / ``invoke_stateful`` — works over RPC, where tuple outputs cannot be
    indexed). Returns the stats and the outputs as flat numpy arrays."""
    from tvm import relax

    from ._import import flatten_outputs

    module = device.load(executable, "model")
    try:
        vm = relax.VirtualMachine(module, device.dev)
        args = [device.tensor(np.asarray(x)) for x in inputs]
        vm.set_input("main", *args)
        vm.invoke_stateful("main")
        outputs = flatten_outputs(vm.get_outputs("main"))
    except Exception as exc:  # noqa: BLE001
        raise MeasureFailure(f"running the compiled model failed: {one_line(exc)}") from exc
    try:
        ftimer = vm.time_evaluator(
            "invoke_stateful", device.dev, number=evaluator.number,
            repeat=evaluator.warmup + evaluator.repeat, min_repeat_ms=evaluator.min_repeat_ms,
        )
        result = ftimer("main")
    except Exception as exc:  # noqa: BLE001
        raise MeasureFailure(f"timing the compiled model failed: {one_line(exc)}") from exc
    return summarize(list(result.results)[evaluator.warmup:]), outputs


def _kernel_signature(func: Any) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every buffer parameter of a PrimFunc."""
    sig = []
    for param in func.params:
        shape = tuple(int(d) for d in param.shape)
        sig.append((shape, str(param.dtype)))
    return sig


def time_kernels(calls: Sequence[KernelCall], target: tvm.target.Target, device: Device,
                 evaluator: EvaluatorConfig) -> tuple[LayerTiming, ...]:
    """Time each distinct scheduled kernel alone on random inputs of its buffer shapes.

    All kernels are compiled into one library (one upload for RPC); a kernel called several
    times is timed once and reported at each call index."""
    import tvm

    unique: dict[str, Any] = {}
    for call in calls:
        unique.setdefault(call.name, call.scheduled)
    if not unique:
        return ()
    symbols = {name: f"hwsearch_kernel_{i}" for i, name in enumerate(unique)}
    mod = tvm.IRModule({
        symbols[name]: func.with_attr("global_symbol", symbols[name])
        for name, func in unique.items()
    })
    try:
        executable = tvm.compile(mod, target=target)
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(f"compiling kernels for per-layer timing failed: {one_line(exc)}") \
            from exc
    module = device.load(executable, "kernels")
    stats: dict[str, TimingStats] = {}
    for i, (name, func) in enumerate(unique.items()):
        args = random_args(_kernel_signature(func), device, seed=i)
        stats[name] = time_function(module, symbols[name], device, args, evaluator)
    return tuple(
        LayerTiming(
            name=call.name,
            call_index=call.index,
            weight_shape=call.weight_shape,
            median_s=stats[call.name].median_s,
            iqr_s=stats[call.name].iqr_s,
            weight_name=call.weight_name,
        )
        for call in calls
    )
