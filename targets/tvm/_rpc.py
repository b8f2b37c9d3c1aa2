"""TVM RPC: a :class:`RemoteDevice` that uploads compiled code to a server (directly or via a
tracker) and runs it there.

Connecting is bounded by ``RPCConfig.timeout_s``: TVM's own connect retries refused
connections for 60 s and a tracker request waits for a free server indefinitely, so both run
in a helper thread that is abandoned (and reported as an error) when the time is up.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._config import RPCConfig
from ._errors import MeasureFailure, one_line

__all__ = ["RemoteDevice", "check_reachable", "connect", "exporter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def exporter(cross_compiler: str | None) -> Any:
    """The ``fcompile`` for ``export_library``: ``tvm.support.cc.cross_compiler(cc)`` when a
    cross compiler is named, else ``None`` (the host's default C compiler)."""
    if not cross_compiler:
        return None
    from tvm.support import cc

    return cc.cross_compiler(cross_compiler)


class RemoteDevice:
    """The CPU behind an RPC session. ``load`` exports a library (with ``cfg.cross_compiler``
    when set) under ``upload_dir``, uploads it and loads it remotely."""

    backend = "tvm-rpc"

    def __init__(self, session: Any, cfg: RPCConfig, upload_dir: Path) -> None:
        self.session = session
        self.cfg = cfg
        self.dev = session.cpu(0)
        self.description = cfg.address
        self.upload_dir = Path(upload_dir)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        if cfg.num_threads:
            try:
                # affinity mode 0 (default), then the thread count of the device's pool
                session.get_function("runtime.config_threadpool")(0, int(cfg.num_threads))
            except Exception as exc:  # noqa: BLE001
                raise MeasureFailure(
                    f"cannot set {cfg.num_threads} threads on {cfg.address}: {one_line(exc)} — "
                    "leave RPCConfig.num_threads=None"
                ) from exc

    def load(self, executable: Any, tag: str) -> Any:
        """Export ``executable`` to ``<upload_dir>/<tag>.so``, upload and ``load_module`` it."""
        path = self.upload_dir / f"{tag}.so"
        try:
            executable.export_library(str(path), fcompile=exporter(self.cfg.cross_compiler))
        except Exception as exc:  # noqa: BLE001
            raise MeasureFailure(
                f"exporting {tag} for {self.cfg.address} failed: {one_line(exc)} — set "
                "RPCConfig.cross_compiler to a compiler for the device (e.g. "
                "'aarch64-linux-gnu-gcc')"
            ) from exc
        try:
            self.session.upload(str(path))
            return self.session.load_module(path.name)
        except Exception as exc:  # noqa: BLE001
            raise MeasureFailure(
                f"uploading/loading {tag} on {self.cfg.address} failed: {one_line(exc)}"
            ) from exc

    def tensor(self, array: np.ndarray) -> Any:
        """``array`` copied to the remote CPU."""
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(array), device=self.dev)


def _bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``fn`` in a daemon thread; raise :class:`MeasureFailure` if it takes > timeout_s."""
    box: dict[str, Any] = {}

    def _run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=_run, name=f"hwsearch-rpc-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise MeasureFailure(f"{what} did not answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_reachable(cfg: RPCConfig) -> None:
    """Fail fast (within ``cfg.timeout_s``) when the device cannot be reached: for a tracker,
    ask it which keys it serves; for a server, open and drop one session. Raises
    :class:`MeasureFailure` like :func:`connect`."""
    _open_session(cfg, probe=True)


def connect(cfg: RPCConfig, upload_dir: Path) -> RemoteDevice:
    """Open a session as ``cfg`` says, within ``cfg.timeout_s`` seconds.

    Raises :class:`MeasureFailure` with the address and a remedy when the server or tracker is
    unreachable, has no server under ``cfg.key``, or does not answer in time."""
    return RemoteDevice(_open_session(cfg), cfg, upload_dir)


def _open_session(cfg: RPCConfig, *, probe: bool = False) -> Any:
    """An RPC session as ``cfg`` says (see :func:`connect`); with ``probe`` and a tracker, only
    check that the tracker answers and serves ``cfg.key`` (returns ``None``)."""
    from tvm import rpc

    session_timeout = float(cfg.session_timeout_s or 0)

    def _direct() -> Any:
        return rpc.connect(cfg.host, cfg.port, key=cfg.key or "",
                           session_timeout=session_timeout)

    def _via_tracker() -> Any:
        tracker = rpc.connect_tracker(cfg.host, cfg.port)
        try:
            summary = tracker.summary()
            # server_info keys read "server:<key>"
            keys = sorted({str(info.get("key", "")).split(":", 1)[-1]
                           for info in summary.get("server_info", ())})
            if cfg.key not in keys:
                raise MeasureFailure(
                    f"tracker {cfg.host}:{cfg.port} has no server with key {cfg.key!r} "
                    f"(registered: {keys or 'none'}) — start one with python -m "
                    f"tvm.exec.rpc_server --tracker {cfg.host}:{cfg.port} --key {cfg.key}"
                )
            if probe:
                return None
            return tracker.request(cfg.key, priority=cfg.priority,
                                   session_timeout=session_timeout, max_retry=1)
        finally:
            tracker.close()

    what = cfg.address
    try:
        return _bounded(_via_tracker if cfg.tracker else _direct, cfg.timeout_s, what)
    except MeasureFailure as exc:
        if "did not answer" in str(exc):
            raise MeasureFailure(
                f"{exc} — check that the {'tracker' if cfg.tracker else 'RPC server'} runs "
                "there and is reachable, or raise RPCConfig.timeout_s"
            ) from exc
        raise
    except Exception as exc:  # noqa: BLE001
        if "cannot find server that matches key" in str(exc):
            remedy = ("that server only accepts sessions handed out by its tracker or another "
                      "--key; use RPCConfig(tracker=True, key=<its key>) with the tracker's "
                      "address, or the server's key")
        else:
            remedy = (f"start python -m tvm.exec.{'rpc_tracker' if cfg.tracker else 'rpc_server'}"
                      " there or fix host/port")
        raise MeasureFailure(f"cannot connect to {what}: {one_line(exc)} — {remedy}") from exc
