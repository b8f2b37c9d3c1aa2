"""``build_library``: compile a model with the tuning database and export a shared library."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import BuildFailure, one_line

if TYPE_CHECKING:
    import torch

__all__ = ["build_library"]

logger = logging.getLogger(__name__)


def build_library(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    out_path: Path,
    work_dir: Path,
    tvm_target: dict[str, Any] | None = None,
    cross_compiler: str | None = None,
) -> Path:
    """Compile ``model`` for ``tvm_target`` and export it as a shared library at ``out_path``.

    Schedules come from ``<work_dir>/tuning_db`` when it exists (measure the model first to
    fill it); kernels without a record keep TVM's default schedule and are named in a warning.
    ``cross_compiler`` links for another architecture, e.g. ``"aarch64-linux-gnu-gcc"`` with
    ``tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"}``. The library loads with
    ``tvm.runtime.load_module`` and runs with ``relax.VirtualMachine``; weights are embedded.

    Returns ``out_path``. Raises :class:`~targets.tvm.ImportFailure` (model not exportable) or
    :class:`~targets.tvm.BuildFailure` (invalid target, compile or link error).
    """
    from ._compile import compile_model, make_target
    from ._database import database_dir, open_database
    from ._env import default_target
    from ._import import as_input_tuple, export_model, import_exported
    from ._rpc import exporter

    if cross_compiler:
        from targets.toolchains import cross_c_missing

        missing = cross_c_missing(cross_compiler)
        if missing:  # before the compile: a link without the target's C library cannot succeed
            raise BuildFailure(missing)
    target = make_target(default_target() if tvm_target is None else tvm_target)
    imported = import_exported(export_model(model, as_input_tuple(example_inputs)))
    work_dir = Path(work_dir)
    database = None
    if (database_dir(work_dir) / "database_workload.json").exists():
        database = open_database(work_dir)
    compiled = compile_model(imported, target, database)
    if compiled.unscheduled:
        logger.warning(
            "build_library: %d kernel(s) have no tuned schedule in %s and use TVM's default "
            "(slow) code: %s", len(compiled.unscheduled), database_dir(work_dir),
            ", ".join(compiled.unscheduled))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        compiled.executable.export_library(str(out_path), fcompile=exporter(cross_compiler))
    except Exception as exc:  # noqa: BLE001
        raise BuildFailure(
            f"exporting {out_path} failed: {one_line(exc)} — check that the C compiler "
            f"{cross_compiler or '(host default)'} exists and matches the target triple"
        ) from exc
    return out_path
