"""``mcu-qemu``: every layer of a folded plan on the project's Cortex-M kernels in QEMU
(:func:`targets.mcu.plan.measure_plan_layers`) behind the backend contract."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._base import GraphLike, MeasureBackend
from ._provenance import utc_now, versions
from ._result import MeasureResult, error_result

__all__ = ["McuQemu", "plan_layers", "storage_formats"]

MODE = "icount"


def storage_formats(resolved: Any) -> dict[str, str]:
    """Each layer's int8 weight storage format (``StorageBytes.fmt`` of its pattern in
    :mod:`hwsearch.core.patterns`: ``csr`` or ``bitmask`` for unstructured, whichever is
    smaller), by layer name."""
    from hwsearch.core import patterns
    from hwsearch.core.plan import LayerChoice

    out = {}
    for layer, r in resolved.iterrows():
        choice = LayerChoice(str(r["pattern"]), float(r["ratio"]), int(r["n"]), int(r["m"]), tuple(r["block"]))
        st = patterns.get(str(r["pattern"])).storage(int(r["rows2d"]), int(r["cols2d"]), int(r["nnz"]), choice, 1)
        out[layer] = st.fmt
    return out


def plan_layers(folded: Any, resolved: Any, *, seed: int = 0) -> list[dict[str, Any]]:
    """The layers of ``folded`` (an ``nn.Module``, channels removed) named by ``resolved`` (the
    plan's resolved layer table), in its order, as :func:`~targets.mcu.plan.measure_plan_layers`
    takes them: the physically pruned weight and bias, the kernel op and format, the conv
    geometry, and a random input of the layer's shape (one ``torch.Generator`` seeded ``seed``,
    drawn layer after layer). Raises ``KeyError`` for a layer ``folded`` does not have."""
    import torch

    from targets.mcu.ops import mcu_fmt, mcu_op

    fmts = storage_formats(resolved)
    mods = dict(folded.named_modules())
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer, r in resolved.iterrows():
        mod = mods[layer]
        op = mcu_op(r)
        in_shape = list(r["in_shape"][1:])
        if op == "linear":
            in_shape = [int(mod.in_features)]
        else:
            in_shape[0] = int(mod.in_channels)
        d: dict[str, Any] = {"name": layer, "op": op, "weight": mod.weight.detach().numpy(),
                             "x": torch.randn(in_shape, generator=gen).numpy(),
                             "fmt": mcu_fmt(str(r["pattern"]), fmts[layer]), "n": int(r["n"]), "m": int(r["m"]),
                             "block": tuple(r["block"]),
                             "bias": mod.bias.detach().numpy() if mod.bias is not None else None}
        if op != "linear":
            d.update(stride=tuple(mod.stride), padding=tuple(mod.padding), groups=int(mod.groups))
        out.append(d)
    return out


class McuQemu(MeasureBackend):
    """Each layer of the folded model alone, int8, built with ``arm-none-eabi-gcc`` and run in
    ``qemu-system-arm`` (the spec's ``[measure] qemu_cpu`` and ``board``) with ``-icount``:
    exact executed-instruction counts. ``latency_s`` = Σ instructions × the spec's assumed
    ``[compute] cpi`` / ``clock_hz`` (kernels only, no glue between layers); ``mode`` is always
    ``icount``, ``repeats`` 1 (the counts repeat exactly). Needs the plan's ``resolved`` table
    (each layer's storage format); a layer that fails makes the whole result an error naming
    it, the other layers' counts kept in ``details["layer_instructions"]``. Takes no options."""

    name = "mcu-qemu"
    runtime = "qemu"

    def available(self) -> str | None:
        from targets import mcu

        return mcu.available()

    def measure(self, target: Any, graph: GraphLike, folded: Any, *, work_dir: Path, mode: str | None = None,
                resolved: Any = None, **opts: Any) -> MeasureResult:
        missing = self.available()
        if missing:
            return error_result(self.name, MODE, missing, runtime=self.runtime)
        if resolved is None:
            return error_result(self.name, MODE, "internal: the MCU backend needs the resolved plan",
                                runtime=self.runtime)
        from targets.mcu.plan import measure_plan_layers

        cpu = str(target.measure.get("qemu_cpu", "cortex-m4"))
        t0 = time.perf_counter()
        try:
            layers = plan_layers(folded, resolved)
            measured = measure_plan_layers(layers, cpu=cpu, work_dir=Path(work_dir) / "mcu")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            return error_result(self.name, MODE, f"cannot measure the folded model on {cpu}: "
                                f"{type(exc).__name__}: {exc}", runtime=self.runtime)
        return self._result(target, cpu, [d["name"] for d in layers], measured, time.perf_counter() - t0)

    def _result(self, target: Any, cpu: str, names: list[str], measured: list[Any], run_s: float) -> MeasureResult:
        """Sum the layers' counts into a latency through the spec's CPI and clock."""
        cpi, clock = target.figure("compute", "cpi"), target.figure("compute", "clock_hz")
        rows = [m.to_row() for m in measured]
        layer_insn, errors = {}, []
        for layer, m in zip(names, measured):
            if m.error or m.instructions is None:
                errors.append(f"{layer} ({m.op}, {m.fmt}): {m.error}")
            else:
                layer_insn[layer] = int(m.instructions)
        total = sum(layer_insn.values())
        tools = {k.split(".", 1)[1]: v for k, v in rows[0].items() if k.startswith("version.")} if rows else {}
        return MeasureResult(
            latency_s=total * cpi / clock if not errors else None, mode=MODE, backend=self.name,
            device=f"qemu-system-arm {target.measure.get('board')} ({cpu})", versions={**versions(), **tools},
            date=utc_now(), error="; ".join(errors)[:2000] if errors else None, repeats=1,
            layer_s={k: v * cpi / clock for k, v in layer_insn.items()}, runtime=self.runtime,
            details={"instructions": total if not errors else None, "layer_instructions": layer_insn,
                     "latency_note": f"instructions x assumed CPI {cpi:g} / clock {clock:g} Hz "
                                     "(QEMU has no timing model)",
                     "mcu_rows": rows, "run_s": run_s})
