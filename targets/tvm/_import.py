"""PyTorch → Relax: ``torch.export`` then TVM's exported-program frontend.

Weights are kept apart (``keep_params_as_input=True`` + ``detach_params``) and then bound as
constants, so weight-only work (e.g. transposing a Linear weight) is folded at compile time as
in a deployment. Failures raise :class:`ImportFailure` with a one-line message and a remedy.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import ImportFailure, one_line, user_frame

if TYPE_CHECKING:
    import torch
    import tvm

__all__ = ["ImportedModel", "as_input_tuple", "export_model", "flatten_outputs",
           "import_exported", "run_reference"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedModel:
    """A model in Relax.

    ``mod``: the imported module in inference form (batch norm decomposed) with weights bound
    as constants (input: ``main``'s data inputs only); ``unbound``: the same module with
    weights as extra inputs of ``main`` (used to trace which weight each kernel consumes); ``weight_names``: Relax parameter
    name → torch parameter/buffer name (``"p_fc_weight"`` → ``"fc.weight"``);
    ``weight_shapes``: Relax parameter name → shape; ``num_inputs``: data inputs of ``main``.
    """

    mod: tvm.IRModule
    unbound: tvm.IRModule
    weight_names: dict[str, str]
    weight_shapes: dict[str, tuple[int, ...]]
    num_inputs: int


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple; a lone tensor becomes a 1-tuple (not its rows)."""
    if hasattr(example_inputs, "shape") and hasattr(example_inputs, "dtype"):
        return (example_inputs,)
    return tuple(example_inputs)


def export_model(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    """``torch.export.export(model.eval(), example_inputs)``.

    Returns the ``ExportedProgram``. Raises :class:`ImportFailure` when torch cannot export the
    model (data-dependent control flow, unsupported Python), naming the remedy.
    """
    import torch

    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs)
    try:
        with torch.no_grad():
            return torch.export.export(model.eval(), example_inputs)
    except Exception as exc:  # noqa: BLE001 - any export failure becomes a record
        where = user_frame(exc)
        raise ImportFailure(
            f"torch.export failed: {one_line(exc, first=True)}"
            f"{f' (at {where})' if where else ''} — make forward() traceable (no "
            "data-dependent Python control flow; use torch.cond/torch.where) or pass "
            "example_inputs that match forward()"
        ) from exc


def run_reference(model: torch.nn.Module,
                  example_inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Torch eager outputs of ``model.eval()`` on ``example_inputs``, flattened to arrays."""
    import torch

    with torch.no_grad():
        out = model.eval()(*example_inputs)
    return flatten_outputs(out)


def flatten_outputs(out: Any) -> list[np.ndarray]:
    """Nested tuples/lists/TVM arrays of torch or TVM tensors → flat list of numpy arrays."""
    if isinstance(out, np.ndarray):
        return [out]
    if hasattr(out, "detach"):  # torch.Tensor
        return [out.detach().cpu().numpy()]
    if hasattr(out, "numpy"):  # tvm.runtime.Tensor
        return [out.numpy()]
    if isinstance(out, (list, tuple)) or (hasattr(out, "__len__") and hasattr(out, "__getitem__")):
        flat: list[np.ndarray] = []
        for i in range(len(out)):
            flat.extend(flatten_outputs(out[i]))
        return flat
    return [np.asarray(out)]


def import_exported(exported_program: Any) -> ImportedModel:
    """Import an ``ExportedProgram`` into Relax and bind its weights.

    Raises :class:`ImportFailure` when TVM's frontend does not support an operator of the
    model (the message names it when TVM does).
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    try:
        unbound = from_exported_program(exported_program, keep_params_as_input=True)
        unbound, params = relax.frontend.detach_params(unbound)
    except Exception as exc:  # noqa: BLE001 - any import failure becomes a record
        raise ImportFailure(
            f"TVM Relax import failed: {one_line(exc)} — TVM's torch frontend has no "
            "converter for it; express that part of the model with supported operators"
        ) from exc
    main = unbound["main"]
    num_inputs = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs \
        else len(main.params) - len(params.get("main", ()))
    weight_vars = list(main.params[num_inputs:])
    values = list(params.get("main", ()))
    if len(weight_vars) != len(values):
        raise ImportFailure(
            f"TVM Relax import gave {len(weight_vars)} weight inputs but {len(values)} values "
            "— report this model to the hwsearch maintainers"
        )
    bindings = {v.name: t for v, t in zip(weight_vars, values)}
    # Inference form, as static_shape_tuning_pipeline prepares it: batch norm becomes a
    # scale and shift of constants that FoldConstant folds and FuseOps fuses into the conv.
    inference = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
    ])
    unbound = inference(unbound)
    mod = relax.transform.BindParams("main", bindings)(unbound)
    torch_names = _torch_names(exported_program)
    return ImportedModel(
        mod=mod,
        unbound=unbound,
        weight_names={name: torch_names.get(name, name) for name in bindings},
        weight_shapes={name: tuple(int(d) for d in t.shape) for name, t in bindings.items()},
        num_inputs=num_inputs,
    )


def _torch_names(exported_program: Any) -> dict[str, str]:
    """Placeholder name in the exported graph → torch parameter/buffer name."""
    names: dict[str, str] = {}
    try:
        for spec in exported_program.graph_signature.input_specs:
            target = getattr(spec, "target", None)
            arg_name = getattr(getattr(spec, "arg", None), "name", None)
            if target and arg_name:
                names[str(arg_name)] = str(target)
    except Exception as exc:  # noqa: BLE001 - names are a convenience only
        logger.debug("no torch parameter names: %s", exc)
    return names
