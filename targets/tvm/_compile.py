"""Fusion, task extraction and compilation with the tuning database applied.

The fused module (``fuse``) is what tasks are extracted from; the *raw* imported module is what
is compiled (``compile_model``), with ``MetaScheduleApplyDatabase`` run inside the pipeline
right after the same fusion passes — given an already fused module the database lookup
silently finds nothing (NOTES.md). The pipeline mirrors
``tvm.s_tir.meta_schedule.relax_integration.compile_relax`` and additionally keeps the
scheduled module, so that the kernels that really run can be listed and timed one by one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import BuildFailure, one_line

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ._import import ImportedModel

__all__ = ["Compiled", "KernelCall", "compile_model", "fuse", "kernel_calls", "make_target",
           "tuning_tasks", "weight_origins"]

logger = logging.getLogger(__name__)

_SCHEDULED = "tirx.is_scheduled"
_WEIGHT_OPS = ("conv", "matmul", "dense", "einsum")


def make_target(tvm_target: dict[str, Any]) -> tvm.target.Target:
    """``tvm.target.Target(tvm_target)``; raises :class:`BuildFailure` with a remedy."""
    import tvm

    if not isinstance(tvm_target, dict):
        raise BuildFailure(
            f"tvm_target={tvm_target!r} is not a dict — pass a Target JSON dict such as "
            "{'kind': 'llvm', 'num-cores': 2}"
        )
    try:
        return tvm.target.Target(dict(tvm_target))
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(
            f"invalid tvm_target {tvm_target!r}: {one_line(exc)} — pass a Target JSON dict "
            "such as {'kind': 'llvm', 'num-cores': 2} (kinds: llvm, c, cuda, …)"
        ) from exc


def _fusion_passes(target: tvm.target.Target) -> list[Any]:
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    # The "zero" pipeline's passes, preceded by the target's library dispatch exactly as
    # compile_relax does, so that extracted workloads and compiled functions hash the same.
    return [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalise and fuse ``mod`` (``relax.get_pipeline("zero")`` without the database step)."""
    import tvm

    with target:
        return tvm.transform.Sequential(_fusion_passes(target))(mod)


def kernel_calls(fused: tvm.IRModule, *, keep_bindings: bool = False) -> list[tuple[str, Any]]:
    """``(PrimFunc name, call arguments)`` of every kernel ``main`` runs, in execution order;
    with ``keep_bindings`` the second item is ``(bound var name, call arguments)``.

    Reshapes that the VM turns into views (``RewriteDataflowReshape``) are not kernels and are
    left out."""
    from tvm import relax

    mod = relax.transform.RewriteDataflowReshape()(fused)
    calls: list[tuple[str, Any]] = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            op = getattr(value, "op", None)
            if getattr(op, "name", None) == "relax.call_tir":
                name = str(value.args[0].name_hint)
                args = list(value.args[1].fields)
                calls.append((name, (binding.var.name, args) if keep_bindings else args))
    return calls


def tuning_tasks(fused: tvm.IRModule, target: tvm.target.Target) -> list[ms.ExtractedTask]:
    """MetaSchedule tasks of the fused module, restricted to kernels ``main`` really runs."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    called = {name for name, _ in kernel_calls(fused)}
    called_hashes = {
        tvm_ffi.structural_hash(fused[name].with_attr("global_symbol", "main")) for name in called
    }
    tasks = ms.relax_integration.extract_tasks(fused, target)
    return [
        t for t in tasks
        if t.task_name in called
        or tvm_ffi.structural_hash(t.dispatched[0]["main"]) in called_hashes
    ]


def weight_origins(imported: ImportedModel,
                   target: tvm.target.Target) -> list[tuple[str, str | None]]:
    """``(kernel name, Relax name of the weight it consumes or None)`` for every kernel call
    of the compiled ``main``, in execution order.

    Traced on the *unbound* module, where weights are still inputs of ``main``: a weight flows
    into a conv/matmul kernel directly or through weight-only kernels (a transpose, a bias
    reshape). Those weight-only kernels are folded away once weights are constants, so they
    are dropped here; what remains matches the bound module's calls one to one (legalisation
    names functions before constants are folded, so the names agree too)."""
    weights = set(imported.weight_shapes)
    fused = fuse(imported.unbound, target)
    origin: dict[str, str] = {}  # Relax var name -> the weight it is a pure function of
    calls: list[tuple[str, str | None]] = []
    for name, args in kernel_calls(fused, keep_bindings=True):
        binding_var, args = args
        arg_origins = [origin.get(a.name) or (a.name if a.name in weights else None)
                       for a in args if hasattr(a, "name")]
        data_args = [a for a in args if hasattr(a, "name") and
                     not (origin.get(a.name) or a.name in weights)]
        if not data_args and len(set(filter(None, arg_origins))) == 1:
            origin[binding_var] = next(filter(None, arg_origins))
            continue  # weight-only: constant-folded in the compiled model
        weight = None
        if any(op_name in name for op_name in _WEIGHT_OPS):
            candidates = [o for o in arg_origins if o and len(imported.weight_shapes[o]) >= 2]
            weight = candidates[0] if candidates else None
        calls.append((name, weight))
    return calls


def _lead_op(kernel_name: str) -> str:
    """The first operator of a kernel name: ``fused_conv2d1_add_relu`` → ``conv2d``."""
    parts = kernel_name.removeprefix("fused_").split("_")
    return parts[0].rstrip("0123456789") if parts else kernel_name


@dataclass(frozen=True)
class KernelCall:
    """One kernel call of the compiled ``main``: ``index`` in execution order, PrimFunc
    ``name``, the ``scheduled`` PrimFunc, and the torch weight it consumes (if any)."""

    index: int
    name: str
    scheduled: Any
    weight_name: str | None
    weight_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Compiled:
    """A compiled model: the VM ``executable``, its kernel ``calls`` in execution order, and
    ``unscheduled`` — names of called kernels that no database record covered (compiled with
    TVM's naive default schedule)."""

    executable: Any
    calls: tuple[KernelCall, ...]
    unscheduled: tuple[str, ...]
    build_s: float = 0.0


def compile_model(
    imported: ImportedModel,
    target: tvm.target.Target,
    database: ms.database.Database | None,
) -> Compiled:
    """Compile the raw imported module for ``target`` with ``database`` applied.

    Kernels without a record keep TVM's default (naive, single-threaded) code and are listed
    in ``Compiled.unscheduled``; callers decide whether that is acceptable. Raises
    :class:`BuildFailure` when compilation fails.
    """
    import time

    import tvm
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline
    from tvm.relax.transform import MetaScheduleApplyDatabase

    start = time.perf_counter()
    captured: dict[str, tvm.IRModule] = {}
    try:
        lower = list(relax_pipeline.dataflow_lower_passes(target))
        finalize = list(relax_pipeline.finalize_passes(target))
    except (ValueError, AttributeError):
        from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

        lower = cpu_pipeline.dataflow_lower_passes(target)
        finalize = cpu_pipeline.finalize_passes(target)

    @tvm.transform.module_pass(opt_level=3)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = tvm.transform.Sequential(_fusion_passes(target))(mod)
        if database is not None:
            mod = MetaScheduleApplyDatabase(enable_warning=False)(mod)
        captured["scheduled"] = mod
        return tvm.transform.Sequential(lower + finalize)(mod)

    try:
        if database is not None:
            with target, database, tvm.transform.PassContext(opt_level=3):
                executable = relax.build(imported.mod, target=target, relax_pipeline=_pipeline)
        else:
            with target, tvm.transform.PassContext(opt_level=3):
                executable = relax.build(imported.mod, target=target, relax_pipeline=_pipeline)
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(f"TVM compile failed: {one_line(exc)}") from exc

    scheduled = captured["scheduled"]
    bound_calls = [name for name, _args in kernel_calls(scheduled)]
    try:
        traced = weight_origins(imported, target)
    except Exception as exc:  # noqa: BLE001 - weight shapes are provenance, not essential
        logger.warning("could not trace weights to kernels: %s", one_line(exc))
        traced = []
    if len(traced) == len(bound_calls) and all(
            _lead_op(a) == _lead_op(b) for (a, _), b in zip(traced, bound_calls)):
        # Same kernels in the same order. Full names may differ: ops on weights that are
        # folded once weights are constants (an expand_dims of a batch-norm scale) still
        # appear in the unbound kernel's name.
        per_call = [weight for _, weight in traced]
    else:  # should not happen; fall back to the first weight seen per kernel name
        logger.warning("weight tracing found calls %s, compiled module calls %s",
                       [name for name, _ in traced], bound_calls)
        by_name: dict[str, str | None] = {}
        for name, weight in traced:
            by_name.setdefault(name, weight)
        per_call = [by_name.get(name) for name in bound_calls]
    calls: list[KernelCall] = []
    unscheduled: list[str] = []
    for index, name in enumerate(bound_calls):
        func = scheduled[name]
        if not (func.attrs and _SCHEDULED in func.attrs and bool(func.attrs[_SCHEDULED])):
            if name not in unscheduled:
                unscheduled.append(name)
        weight = per_call[index]
        calls.append(KernelCall(
            index=index,
            name=name,
            scheduled=func,
            weight_name=imported.weight_names.get(weight) if weight else None,
            weight_shape=imported.weight_shapes.get(weight) if weight else None,
        ))
    return Compiled(
        executable=executable,
        calls=tuple(calls),
        unscheduled=tuple(unscheduled),
        build_s=time.perf_counter() - start,
    )
