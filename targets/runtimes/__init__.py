"""Deployment runtimes on the host CPU, measured the way a user deploys: ONNX Runtime (CPU
execution provider) and torch (the exported program, as a reference), in *sittings*.

A sitting times several configurations of one model — the dense model and a round's plans —
interleaved in one fresh process: every round of a sitting times each configuration once
(after one discarded run), in an order that rotates between rounds, so a drift of the machine's
speed hits all configurations alike; ``passes`` sittings run in separate fresh processes. Each
configuration's latency is the median over every sample, and its speed-up over a reference
configuration (the dense model) the median of the per-round *paired* ratios, with a 95 %
confidence interval of that median (and the ratios' 10th–90th percentiles as their spread): a
speed-up whose interval includes 1.0 is no measurable change.

Per-layer times come from ONNX Runtime's own profiler (per-node kernel times), mapped to layers
by the weight each node consumes (``<layer>.weight``).

``RUNTIMES`` is the registry: runtime name → what measures it. TVM (``targets.tvm``) measures in
its own processes: its thread pool spins after each call and would slow the others.
"""
from __future__ import annotations

from ._sitting import (
    RUNTIMES,
    SittingConfig,
    SittingResult,
    export_onnx,
    measure_sitting,
    median_ci,
    runtime_versions,
)

__all__ = ["RUNTIMES", "SittingConfig", "SittingResult", "export_onnx", "measure_sitting", "median_ci",
           "runtime_versions"]
