"""Plan-level cost model for microcontrollers (kind ``mcu``).

Prices each layer with the executed-instruction model of :mod:`costmodels.mcu` (fitted on
instruction counts measured in QEMU with ``-icount``), in the storage format the plan implies
(dense, CSR / bitmask — whichever is smaller —, N:M, block), at the kept channel counts, for
int8. Latency is instructions × CPI / clock with the **assumed** CPI of the target spec
(``[compute] cpi``, labelled as an assumption there): QEMU has no timing model. Flash is the
exact int8 storage (values, indices, int32 bias, requantisation parameters); SRAM is the peak
of live int8 activations plus the largest kernel scratch buffer.

Only kernels are counted: the glue between layers (residual adds, pooling, requantisation of
non-layer ops) is not priced, which the model reports as its ``overhead`` of 0 instructions.
The instruction model has no kernel for attention, batched matmul, embedding, norm or softmax
(nothing measured in QEMU), so it prices no op of ``ModelGraph.ops`` (``priced_op_kinds`` is
empty): each is a coverage gap ``"<node (kind)>"``, never a zero.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

from costmodels.base import Cost, CostModel, FitReport, Sample
from costmodels.mcu import McuModelError, default_model, shape_from_layer
from costmodels.memory import layer_storage
from targets.mcu.ops import geometry, mcu_fmt, mcu_op, scratch_bytes

__all__ = ["McuPlanModel", "layer_shape"]


def layer_shape(row: pd.Series, kept_in: int, kept_out: int) -> dict[str, int]:
    """The MCU model's shape dict for a (possibly channel-pruned) layer-table row."""
    op = mcu_op(row)
    in_shape = list(row["in_shape"])
    if op == "linear":
        in_shape[-1] = kept_in
    else:
        in_shape[1] = kept_in
    groups = kept_out if row["kind"] == "depthwise" else int(row["groups"])
    return shape_from_layer(op, tuple(in_shape[1:]) if op != "linear" else tuple(in_shape), kept_out,
                            kernel=tuple(row["kernel"]), stride=tuple(row["stride"]) or 1,
                            padding=tuple(row["padding"]) or 0, groups=groups)


class McuPlanModel(CostModel):
    kind = "mcu"
    version = 1

    def __init__(self, target: Any, dtype: str = "int8") -> None:
        super().__init__(target)
        self.dtype = dtype
        self.insn = default_model()
        self.cpu = str(target.measure.get("qemu_cpu", "cortex-m4"))
        self.clock_hz = target.figure("compute", "clock_hz")
        self.cpi = target.figure("compute", "cpi")
        self.provenance.update(source="costmodels/data/mcu_model.json", relative_std=0.05,
                               cpi_assumed=self.cpi, clock_hz=self.clock_hz)

    def layer_instructions(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        storage = layer_storage(resolved, self.dtype)
        out = np.full(len(resolved), math.nan)
        gaps = []
        for i, (layer, r) in enumerate(resolved.iterrows()):
            fmt = mcu_fmt(str(r["pattern"]), str(storage.at[layer, "fmt"]))
            try:
                shape = layer_shape(r, int(r["kept_in"]), int(r["kept_out"]))
                out[i] = self.insn.predict(mcu_op(r), fmt, self.dtype, shape, float(r["weight_density"]), cpu=self.cpu,
                                           nnz=int(r["nnz"]))
            except (McuModelError, KeyError, ValueError):
                gaps.append(layer)
        return out, gaps

    def layer_latency(self, resolved: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        insn, gaps = self.layer_instructions(resolved)
        return insn * self.cpi / self.clock_hz, gaps

    def model_overhead_s(self) -> float:
        return 0.0

    def scratch_bytes(self, resolved: pd.DataFrame) -> int:
        """The largest kernel scratch buffer (im2col rows) of the plan's layers, in bytes."""
        best = 0
        for _, r in resolved.iterrows():
            op = mcu_op(r)
            kept_in, kept_out = int(r["kept_in"]), int(r["kept_out"])
            groups = kept_out if r["kind"] == "depthwise" else int(r["groups"])
            x_shape = list(r["in_shape"][1:])
            if op == "linear":
                x_shape = [kept_in]
                w_shape = (kept_out, kept_in)
            else:
                x_shape[0] = kept_in
                w_shape = (kept_out, kept_in // groups, *tuple(r["kernel"]))
            try:
                g = geometry(op, w_shape, tuple(x_shape), stride=tuple(r["stride"]) or 1,
                             padding=tuple(r["padding"]) or 0, groups=groups)
                best = max(best, int(scratch_bytes(g, self.dtype)))
            except (ValueError, KeyError, TypeError):
                continue
        return best

    def predict(self, graph: Any, plan: Any, *, dtype: str | None = None, allow_gaps: bool = False,
                resolved: pd.DataFrame | None = None, **kw: Any) -> Cost:
        cost = super().predict(graph, plan, dtype=dtype or self.dtype, allow_gaps=allow_gaps, resolved=resolved, **kw)
        insn = float(np.nansum(cost.layers["latency_s"].to_numpy())) * self.clock_hz / self.cpi
        return dataclasses.replace(cost, instructions=int(round(insn)))

    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "cpu": self.cpu, "instruction_model": self.insn.to_dict()
                if hasattr(self.insn, "to_dict") else None}

    def set_params(self, params: dict[str, Any]) -> None:
        self.dtype = str(params.get("dtype", self.dtype))
        self.cpu = str(params.get("cpu", self.cpu))
        if params.get("instruction_model") and hasattr(type(self.insn), "from_dict"):
            self.insn = type(self.insn).from_dict(params["instruction_model"])

    def refit(self, samples: list[Sample]) -> FitReport:
        """Add the measured per-layer rows of the samples (``extra['mcu_rows']``: instruction
        counts as ``targets.mcu`` measures them) to the instruction model and re-solve it.
        Raises :class:`CostModelError` for an empty list."""
        self._require_samples(samples)
        meas = np.array([s.latency_s for s in samples], dtype=float)
        before = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
        rows = [r for s in samples for r in (s.extra or {}).get("mcu_rows", [])]
        if rows:
            self.insn.refit(pd.DataFrame(rows), source="hwsearch search measurements")
        after = np.array([np.nansum(self.layer_latency(s.resolved)[0]) for s in samples])
        report = FitReport.of(before, after, meas, layer_rows=len(rows))
        self.provenance["fitted_on"] = len(samples)
        self.provenance.setdefault("history", []).append({
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "plans": len(samples),
            "layer_rows": len(rows), "mape_before": report.mape_before, "mape_after": report.mape_after})
        return report
