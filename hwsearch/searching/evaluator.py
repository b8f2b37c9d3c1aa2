"""Accuracy and predicted cost of a plan: what every trial, seed and baseline is scored by."""
from __future__ import annotations

import costmodels
from hwsearch import prune, recalibrate, zoo
from hwsearch.core.plan import Plan
from hwsearch.graph import ModelGraph, analyze
from hwsearch.searching.config import SearchConfig
from targets.spec import TargetSpec

__all__ = ["Evaluator", "load_model_and_data"]


class Evaluator:
    """Accuracy and predicted cost of plans on one model, data set and target."""

    def __init__(self, graph: ModelGraph, data: zoo.Dataset, target: TargetSpec, cost_model: costmodels.CostModel,
                 cfg: SearchConfig) -> None:
        self.graph, self.data, self.target, self.cm, self.cfg = graph, data, target, cost_model, cfg
        self.budgets = cfg.budgets
        self._criterion_data = None
        if cfg.criterion != "magnitude" and data.x_train is not None:
            self._criterion_data = lambda: data.batches("train", 128, limit=4)
        self.bn_batches = None
        if cfg.bn_recalibration > 0 and data.x_train is not None and recalibrate.has_batchnorm(graph.model):
            self.bn_batches = recalibrate.calibration_batches(data, cfg.bn_recalibration)

    def decisions(self, plan: Plan) -> prune.Decisions:
        return prune.decide(self.graph, plan, criterion=self.cfg.criterion, data=self._criterion_data,
                            channel_multiple=self.cfg.channel_multiple, min_density=self.cfg.min_density)

    def accuracy(self, dec: prune.Decisions) -> float:
        """Validation accuracy of the plan: after a short fine-tune (``finetune_steps``), else
        with its BatchNorm statistics recalibrated (``bn_recalibration``; see
        :mod:`hwsearch.recalibrate`), else with the masked weights as they are."""
        if self.cfg.finetune_steps > 0 and self.data.x_train is not None:
            model = prune.apply(self.graph, dec, mode="mask")
            zoo.train(model, self.data, steps=self.cfg.finetune_steps, lr=1e-3)
            return zoo.evaluate(model, self.data)
        masked = prune.masked_state(self.graph, dec)
        if self.bn_batches is not None:
            model = recalibrate.masked_model(self.graph, masked)
            recalibrate.recalibrate_bn(model, self.bn_batches())
            return zoo.evaluate(model, self.data)
        return zoo.evaluate(self.graph.model, self.data, params=masked)

    def cost(self, plan: Plan, dec: prune.Decisions) -> costmodels.Cost:
        return self.cm.predict(self.graph, plan, resolved=dec.resolved)

    def budget_names(self) -> list[str]:
        """The names of :meth:`violations`' entries, in order."""
        return self.budgets.names()

    def violations(self, latency_s: float, flash_bytes: int, sram_bytes: int) -> list[float]:
        """Constraint values for Optuna (≤ 0 is feasible), relative to each budget."""
        return self.budgets.violations(latency_s, flash_bytes, sram_bytes)


def load_model_and_data(cfg: SearchConfig) -> tuple[ModelGraph, zoo.Dataset]:
    model, example = zoo.load_model(cfg.model)
    data = zoo.load_data(cfg.data)
    graph = analyze(model, example if example is not None else data.example_input)
    return graph, data
