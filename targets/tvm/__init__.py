"""TVM measuring backend: compile a (pruned) PyTorch model with Apache TVM and time it.

``measure`` imports a model through ``torch.export`` into Relax, schedules its fused kernels
(``mode="quick"``: best of a few schedules sampled from MetaSchedule's design space;
``mode="tuned"``: MetaSchedule search), keeps every schedule in a persistent tuning database
(``<work_dir>/tuning_db``) so a kernel shape is scheduled once, compiles, checks the outputs
against torch, and times the whole model and each kernel with ``time_evaluator`` — on the
local CPU or through TVM RPC. ``build_library`` exports the compiled model as a shared library
(cross-compiled when asked). ``tune_more`` is one step of a tuning curve: tune every kernel of a
model for N more trials in its own database, then compile and time it.

Every failure of a model, target or device is a :class:`MeasureResult` with ``error`` set;
latencies are seconds.
"""
from __future__ import annotations

from ._config import EvaluatorConfig, RPCConfig
from ._database import record_count, workload_count
from ._env import default_target
from ._errors import BuildFailure, ImportFailure, MeasureFailure, TVMBackendError
from ._library import build_library
from ._measure import measure
from ._result import SCHEMA_VERSION, LayerTiming, MeasureResult
from ._tune import COST_MODELS
from ._tuning_curve import TuningStep, tune_more

__all__ = [
    "COST_MODELS",
    "SCHEMA_VERSION",
    "BuildFailure",
    "EvaluatorConfig",
    "ImportFailure",
    "LayerTiming",
    "MeasureFailure",
    "MeasureResult",
    "RPCConfig",
    "TVMBackendError",
    "TuningStep",
    "build_library",
    "default_target",
    "measure",
    "record_count",
    "tune_more",
    "workload_count",
]
