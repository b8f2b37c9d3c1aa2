"""``tvm-local`` and ``tvm-rpc``: :func:`targets.tvm.measure` behind the backend contract."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ._base import GraphLike, MeasureBackend
from ._layer_timings import map_layer_timings
from ._result import MeasureResult, error_result

__all__ = ["TvmLocal", "TvmRpc", "from_tvm_result"]

INSTALL_HINT = "pip install -e '.[test]' (installs apache-tvm)"


class TvmLocal(MeasureBackend):
    """Apache TVM on this host's CPU: Relax from ``torch.export``, schedules sampled
    (``mode="quick"``) or tuned by MetaSchedule (``"tuned"``) into a tuning database under
    ``work_dir``, ``time_evaluator`` for the model and each kernel (``targets.tvm``).

    Options: ``tuning_trials`` (tuned mode, default 64), ``samples`` (schedules per kernel in
    quick mode, default 8), ``repeats`` (timed samples, default 10), ``min_repeat_ms`` (default
    20), ``cost_model`` (tuned mode's guide: ``"xgb"``, ``"random"``, default ``"auto"``). The
    spec's ``[measure] tvm_target`` is the Target JSON (default: this host)."""

    name = "tvm-local"
    runtime = "tvm"

    def available(self) -> str | None:
        try:
            import targets.tvm  # noqa: F401  (imports tvm)
        except Exception as exc:  # the TVM stack failed to import: a reason, not a crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"cannot import the TVM backend: {first} — {INSTALL_HINT}"
        return None

    def rpc(self, target: Any) -> Any:
        """The RPC settings of ``target`` (``None``: measure on this host)."""
        return None

    def measure(self, target: Any, graph: GraphLike, folded: Any, *, work_dir: Path, mode: str | None = None,
                resolved: Any = None, tuning_trials: int = 64, samples: int = 8, repeats: int = 10,
                min_repeat_ms: int = 20, cost_model: str = "auto", **opts: Any) -> MeasureResult:
        mode = mode or target.measure.get("mode", "quick")
        missing = self.available()
        if missing:
            return error_result(self.name, mode, missing, runtime=self.runtime)
        from targets import tvm as tvm_backend

        evaluator = tvm_backend.EvaluatorConfig(repeat=repeats, min_repeat_ms=min_repeat_ms)
        res = tvm_backend.measure(folded, graph.example_inputs, mode=mode, work_dir=Path(work_dir),
                                  tvm_target=dict(target.measure.get("tvm_target", {})) or None,
                                  trials=tuning_trials, samples=samples, rpc=self.rpc(target),
                                  evaluator=evaluator, cost_model=cost_model)
        return from_tvm_result(res.to_dict(), graph, folded)


class TvmRpc(TvmLocal):
    """:class:`TvmLocal` on a remote device through TVM RPC: the spec's ``rpc_host``,
    ``rpc_port``, ``rpc_key``, ``rpc_tracker``, ``rpc_timeout_s``, ``cross_compiler``,
    ``num_threads`` (see ``targets.tvm.RPCConfig.from_target``). A device that does not answer
    within ``rpc_timeout_s`` is a result with ``error`` set."""

    name = "tvm-rpc"

    def rpc(self, target: Any) -> Any:
        from targets.tvm import RPCConfig

        return RPCConfig.from_target(target)


def from_tvm_result(record: dict[str, Any], graph: GraphLike, folded: Any) -> MeasureResult:
    """A :class:`MeasureResult` from ``targets.tvm.MeasureResult.to_dict()``, its kernel timings
    mapped to ``graph``'s layers (none when it failed)."""
    layer_s = map_layer_timings(graph, folded, record.get("layers", [])) if record.get("error") is None else {}
    return replace(MeasureResult.from_dict(record, runtime="tvm"), layer_s=layer_s)
