"""Frozen settings for a measurement: how to time (:class:`EvaluatorConfig`) and where
(:class:`RPCConfig`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EvaluatorConfig", "RPCConfig"]


@dataclass(frozen=True)
class EvaluatorConfig:
    """How one function is timed with TVM's ``time_evaluator``.

    Exactly what runs, for one timed function:

    1. one untimed call (TVM's own warm-up, e.g. lazy initialisation);
    2. ``warmup + repeat`` *repeats*; a repeat is ``n`` back-to-back runs whose mean is one
       sample, where ``n`` starts at ``number`` and TVM raises it until a repeat lasts at least
       ``min_repeat_ms`` milliseconds;
    3. the first ``warmup`` repeats are discarded; median, interquartile range, min and max are
       taken over the remaining ``repeat`` samples (seconds per run).

    So at least ``1 + (warmup + repeat) * number`` runs happen, of which
    ``1 + warmup * n`` are discarded. With the defaults a function is timed for at least
    ``21 * 50 ms ≈ 1.05 s``.

    Raises ``ValueError`` at construction for a non-positive ``number``/``repeat`` or a negative
    ``min_repeat_ms``/``warmup``.
    """

    number: int = 10
    repeat: int = 20
    min_repeat_ms: int = 50
    warmup: int = 1

    def __post_init__(self) -> None:
        for name in ("number", "repeat"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvaluatorConfig.{name}={value!r} must be an int >= 1")
        for name in ("min_repeat_ms", "warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"EvaluatorConfig.{name}={value!r} must be an int >= 0")

    def to_dict(self) -> dict[str, int]:
        """The four fields as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RPCConfig:
    """Where to measure remotely through TVM RPC.

    ``tracker=False``: ``host:port`` is an RPC server (``python -m tvm.exec.rpc_server``) and
    ``key`` (optional) must match the server's key. ``tracker=True``: ``host:port`` is an RPC
    tracker (``python -m tvm.exec.rpc_tracker``) and a server registered under ``key``
    (required) is requested from it.

    ``timeout_s`` bounds connecting (and waiting for a free server on a tracker) in seconds;
    ``session_timeout_s`` lets the server end a session that lasts longer (seconds, 0 = never).
    ``cross_compiler`` is the C compiler that links the uploaded library when the device is
    not the host's architecture (e.g. ``"aarch64-linux-gnu-gcc"``); ``None`` uses the host's.
    ``num_threads`` sets the device runtime's thread pool size before timing (``None``: the
    runtime's default, one thread per core).
    """

    host: str
    port: int
    key: str | None = None
    tracker: bool = False
    timeout_s: float = 60.0
    session_timeout_s: float = 600.0
    priority: int = 1
    cross_compiler: str | None = None
    num_threads: int | None = None

    @classmethod
    def from_target(cls, target: Any) -> RPCConfig:
        """The RPC settings of a target spec (an object with a ``measure`` dict, or that dict).

        Reads ``rpc_host``, ``rpc_port``, ``rpc_key``, ``rpc_tracker`` (default true),
        ``cross_compiler``, ``num_threads``, ``rpc_timeout_s``. The address, which belongs to
        the lab rather than the device, falls back to TVM's ``TVM_TRACKER_HOST`` /
        ``TVM_TRACKER_PORT`` environment variables, then to ``127.0.0.1:9190``; an address
        where nothing listens gives an error record at measure time, not an exception here.
        """
        import os

        measure = getattr(target, "measure", target)
        if not isinstance(measure, dict):
            raise ValueError(f"RPCConfig.from_target needs a target spec or its [measure] dict, "
                             f"got {type(target).__name__}")
        tracker = bool(measure.get("rpc_tracker", True))
        key = measure.get("rpc_key") or None
        threads = measure.get("num_threads")
        return cls(
            host=str(measure.get("rpc_host") or os.environ.get("TVM_TRACKER_HOST", "127.0.0.1")),
            port=int(measure.get("rpc_port") or os.environ.get("TVM_TRACKER_PORT", 9190)),
            key=str(key) if key else ("default" if tracker else None),
            tracker=tracker,
            timeout_s=float(measure.get("rpc_timeout_s", 60.0)),
            cross_compiler=measure.get("cross_compiler") or None,
            num_threads=int(threads) if threads else None,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"RPCConfig.port={self.port!r} must be an int in 1..65535")
        if self.tracker and not self.key:
            raise ValueError("RPCConfig(tracker=True) needs key=<the server's --key> to request")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"RPCConfig.num_threads={self.num_threads!r} must be >= 1 or None")
        if self.timeout_s <= 0:
            raise ValueError(f"RPCConfig.timeout_s={self.timeout_s!r} must be > 0 seconds")

    @property
    def address(self) -> str:
        """``"rpc tracker host:port key=K"`` or ``"rpc server host:port"``: records' device."""
        kind = "tracker" if self.tracker else "server"
        key = f" key={self.key}" if self.key else ""
        return f"rpc {kind} {self.host}:{self.port}{key}"

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return asdict(self)
