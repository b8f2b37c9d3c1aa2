"""Facts about the measuring host: CPU model, default TVM target, library versions, clock.

Also holds :func:`register_cpu_tensor_intrinsics`, which makes MetaSchedule usable in a fresh
process in ~3 s instead of ~35 s (see its docstring for why and when it is safe).
"""
from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import logging
import os
import platform
import sys
from typing import Any

__all__ = [
    "cpu_model",
    "default_target",
    "host_arch",
    "intrinsic_families",
    "register_cpu_tensor_intrinsics",
    "utc_now",
    "versions",
]

logger = logging.getLogger(__name__)

_INTRIN_PKG = "tvm.s_tir.tensor_intrin"


def cpu_model() -> str:
    """The CPU as ``/proc/cpuinfo`` names it plus the logical CPU count, e.g.
    ``"Intel(R) Xeon(R) Processor (2 logical CPUs)"``; ``platform.processor()`` off Linux."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        name = platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count() or 1} logical CPUs)"


def host_arch() -> str:
    """The host machine architecture as ``uname -m`` names it (``x86_64``, ``aarch64`` …)."""
    return platform.machine().lower()


def default_target() -> dict[str, Any]:
    """The TVM target JSON dict for this host: ``{"kind": "llvm", "num-cores": os.cpu_count()}``
    plus ``"mcpu"`` from LLVM's host detection when TVM exposes it (omitted otherwise)."""
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(os.cpu_count() or 1)}
    try:
        from tvm.target import codegen

        mcpu = str(codegen.llvm_get_system_cpu())
        if mcpu and mcpu != "generic" and bool(codegen.llvm_is_valid_cpu(mcpu, "")):
            target["mcpu"] = mcpu
    except Exception as exc:  # noqa: BLE001 - any failure just means "no mcpu"
        logger.debug("no host mcpu from LLVM: %s", exc)
    return target


def versions() -> dict[str, str]:
    """Versions of the libraries that produced a measurement: tvm, tvm-ffi, torch, numpy, python."""
    out: dict[str, str] = {"python": platform.python_version()}
    for key, dist in (("tvm", "apache-tvm"), ("tvm-ffi", "apache-tvm-ffi"), ("torch", "torch"),
                      ("numpy", "numpy")):
        try:
            from importlib.metadata import version

            out[key] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is reported as unknown
            out[key] = "unknown"
    return out


def utc_now() -> str:
    """Current time as ISO-8601 UTC with seconds, e.g. ``2026-11-21T13:05:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def register_cpu_tensor_intrinsics(families: tuple[str, ...] = ("x86", "arm_cpu")) -> None:
    """Register only the CPU tensor intrinsics (``families``: x86, ARM) instead of all of them.

    ``TuneContext`` and MetaSchedule's ``LocalBuilder`` workers ``import tvm.s_tir.tensor_intrin``,
    whose ``__init__`` registers every intrinsic family; the CUDA and ROCm ones alone take ~17 s
    on this machine (≈20 s in total, per process). For CPU (llvm) targets only the x86 and ARM
    families can be picked by the schedule rules, so this installs the package in
    ``sys.modules`` *without* running its ``__init__`` and imports just those submodules
    (x86 ≈ 0.1 s, arm_cpu ≈ 1.8 s; see :func:`intrinsic_families` for which a target needs).

    Only call it in processes this backend owns (the measuring worker, builder workers): a
    process that later tunes for CUDA would miss the CUDA intrinsics. A no-op when the package
    is already imported.
    """
    if _INTRIN_PKG in sys.modules:
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(_INTRIN_PKG)
    if spec is None:  # pragma: no cover - layout of a different TVM version
        return
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[_INTRIN_PKG] = pkg
    tvm.s_tir.tensor_intrin = pkg  # type: ignore[attr-defined]
    for family in families:
        try:
            importlib.import_module(f"{_INTRIN_PKG}.{family}")
        except Exception as exc:  # noqa: BLE001 - a family that fails to register is skipped
            logger.debug("tensor intrinsics %s not registered: %s", family, exc)


def intrinsic_families(target: dict[str, Any]) -> tuple[str, ...] | None:
    """CPU tensor-intrinsic families a Target JSON dict can use: ``("x86",)`` or
    ``("arm_cpu",)`` from its ``mtriple`` (or the host when it has none); ``None`` for a
    non-CPU target or an unknown architecture — then all intrinsics must be registered."""
    if target.get("kind") != "llvm":
        return None
    arch = str(target.get("mtriple") or host_arch()).lower()
    if arch.startswith(("x86_64", "amd64", "i686", "i386")):
        return ("x86",)
    if arch.startswith(("aarch64", "arm64", "arm", "thumb")):
        return ("arm_cpu",)
    return None
