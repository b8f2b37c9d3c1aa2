"""Measurements to cost-model samples, and the refit of a target's cost model on them."""
from __future__ import annotations

import logging

import costmodels
from costmodels.base import FitReport, Sample
from costmodels.ops import op_table
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import ModelGraph
from hwsearch.searching.config import SearchConfig
from targets.spec import TargetSpec

__all__ = ["samples_from_records", "fit_cost_model"]

log = logging.getLogger(__name__)
_SAID: set[str] = set()  # one line per process about the device's predictor, not one per round


def _device_model(target: TargetSpec) -> costmodels.CostModel:
    """The kernel cost model when this device has a kernel predictor for ``target.runtime``
    (it prices a model before its first measurement), else ``costmodels.default_for(target)``;
    either way it says once which, and without a predictor the command that makes one."""
    if target.kind == "cpu" and target.runtime == "onnxruntime":
        from costmodels.kernel_cost import KernelModel

        cm = KernelModel(target)
        if cm.predictor is not None:
            _say_once(f"round 1 is priced by this device's kernel predictor ({cm.note})")
            return cm
        _say_once(f"{cm.note}; round 1 is priced by the analytical model until plans are measured")
    return costmodels.default_for(target)


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        log.info(line)


def samples_from_records(graph: ModelGraph, recs: list[dict], cfg: SearchConfig, glue: bool = False) -> list[Sample]:
    """The successful records of this model as refit samples; ``glue``: their op tables hold the
    graph's glue rows too (for a cost model that prices them, ``CostModel.prices_glue``)."""
    ops = op_table(graph, glue=glue)
    out = []
    for r in recs:
        if r.get("error") or not r.get("latency_s"):
            continue
        try:
            res = resolve(graph.table, graph.groups, Plan.from_dict(r["plan"]), channel_multiple=cfg.channel_multiple,
                          min_density=cfg.min_density)
        except PlanError:
            continue  # a record of another model or space: not this model's evidence
        # a sitting's latencies are brought to the scale of the dense baseline (the machine's
        # speed drifts between sittings; the dense model measured in each one says by how much)
        k = float(r.get("drift_factor") or 1.0)
        layer_s = {name: v * k for name, v in (r.get("layer_s") or {}).items()} or None
        out.append(Sample(res, float(r["latency_s"]) * k, layer_s,
                          {"mcu_rows": r["mcu_rows"]} if r.get("mcu_rows") else None, ops=ops))
    return out


def fit_cost_model(target: TargetSpec, graph: ModelGraph, recs: list[dict],
                   cfg: SearchConfig) -> tuple[costmodels.CostModel, FitReport | None]:
    """A fresh model refit on every successful record in ``recs`` (no report when there is
    none): ``--costmodel`` when given, else the device's kernel predictor when this device has one
    for the target's runtime (``hwsearch sweep``), else the target's analytical model. Deterministic: the same records give the same model, so a resumed search
    prices plans exactly as the interrupted one did."""
    cm = costmodels.load(cfg.costmodel_path, target) if cfg.costmodel_path else _device_model(target)
    samples = samples_from_records(graph, recs, cfg, glue=cm.prices_glue)
    if not samples:
        return cm, None
    return cm, cm.refit(samples)
