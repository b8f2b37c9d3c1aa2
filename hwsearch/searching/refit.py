"""Measurements to cost-model samples, and the refit of a target's cost model on them."""
from __future__ import annotations

import costmodels
from costmodels.base import FitReport, Sample
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import ModelGraph
from hwsearch.searching.config import SearchConfig
from targets.spec import TargetSpec

__all__ = ["samples_from_records", "fit_cost_model"]


def samples_from_records(graph: ModelGraph, recs: list[dict], cfg: SearchConfig) -> list[Sample]:
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
                          {"mcu_rows": r["mcu_rows"]} if r.get("mcu_rows") else None, ops=graph.ops))
    return out


def fit_cost_model(target: TargetSpec, graph: ModelGraph, recs: list[dict],
                   cfg: SearchConfig) -> tuple[costmodels.CostModel, FitReport | None]:
    """A fresh analytical model refit on every successful record in ``recs`` (no report when
    there is none). Deterministic: the same records give the same model, so a resumed search
    prices plans exactly as the interrupted one did."""
    cm = (costmodels.load(cfg.costmodel_path, target) if cfg.costmodel_path
          else costmodels.default_for(target))
    samples = samples_from_records(graph, recs, cfg)
    if not samples:
        return cm, None
    return cm, cm.refit(samples)
