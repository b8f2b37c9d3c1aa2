"""Cross toolchain and emulator: locating them, their versions, compile flags per core, the cached
kernel objects and one QEMU run with exact instruction counting."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CPUS", "CpuConfig", "KERNEL_DIR", "ICOUNT_SHIFT", "missing_tools", "tool_versions",
           "kernel_objects", "link_flags", "run_qemu", "QemuResult", "cache_dir"]

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).parent / "kernels"
GCC = "arm-none-eabi-gcc"
NM = "arm-none-eabi-nm"
QEMU = "qemu-system-arm"

#: -icount shift: one instruction = 2**7 ns of virtual time = 3.2 SysTick ticks at QEMU's 25 MHz
#: MPS2 system clock, enough to recover every instruction from the tick count exactly.
ICOUNT_SHIFT = 7
SYSTICK_NS = 40  # QEMU mps2: SYSCLK_FRQ = 25 MHz
HANDLER_INSNS = 5  # SysTick_Handler in hw_startup.c

INSTALL_HINT = ("apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")


@dataclass(frozen=True)
class CpuConfig:
    """One emulated core: the QEMU board and CPU, and the gcc flags of its MCU class."""

    name: str
    board: str
    qemu_cpu: str
    cflags: tuple[str, ...]


CPUS: dict[str, CpuConfig] = {
    # STM32F4 class: Cortex-M4F, single-precision FPv4
    "cortex-m4": CpuConfig("cortex-m4", "mps2-an386", "cortex-m4",
                           ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
    # STM32F746: Cortex-M7 with single-precision FPv5
    "cortex-m7": CpuConfig("cortex-m7", "mps2-an500", "cortex-m7",
                           ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16")),
}

COMMON_CFLAGS = ("-O2", "-std=gnu11", "-ffunction-sections", "-fdata-sections",
                 "-fno-tree-loop-distribute-patterns", "-Wall", "-Wextra")
KERNEL_SOURCES = ("hw_startup.c", "hw_kernels_s8.c", "hw_kernels_f32.c")
KERNEL_HEADERS = ("hw_kernels.h", "hw_kernels_tmpl.h", "hw_harness.h", "hw_link.ld")


def cpu_config(cpu: str) -> CpuConfig:
    try:
        return CPUS[cpu]
    except KeyError:
        raise ValueError(f"unknown cpu {cpu!r}; valid: {', '.join(CPUS)}") from None


def missing_tools() -> list[str]:
    """Names of the required executables that are not on PATH (empty when all are there)."""
    return [t for t in (GCC, NM, QEMU) if shutil.which(t) is None]


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """``{"gcc": ..., "qemu": ..., "python": ...}`` (first version lines; empty when missing)."""
    out = {"python": platform.python_version()}
    for key, cmd in (("gcc", [GCC, "-dumpfullversion"]), ("qemu", [QEMU, "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
            out[key] = text.strip().splitlines()[0] if text.strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            out[key] = ""
    return out


def cache_dir() -> Path:
    """Where compiled kernel objects are kept: ``$HWSEARCH_CACHE_DIR/mcu`` or ``~/.cache/hwsearch/mcu``."""
    root = os.environ.get("HWSEARCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "hwsearch")
    return Path(root) / "mcu"


def link_flags() -> list[str]:
    return ["--specs=nosys.specs", "-nostartfiles", "-T", str(KERNEL_DIR / "hw_link.ld"),
            "-Wl,--gc-sections"]


def kernel_objects(cpu: str) -> list[Path]:
    """Compile (once per source/flag/compiler version) the startup and kernel objects for ``cpu``.

    Raises ``RuntimeError`` with the compiler's message when a kernel does not compile.
    """
    cfg = cpu_config(cpu)
    h = hashlib.sha256()
    for name in KERNEL_SOURCES + KERNEL_HEADERS:
        h.update(name.encode())
        h.update((KERNEL_DIR / name).read_bytes())
    h.update(" ".join(cfg.cflags + COMMON_CFLAGS).encode())
    h.update(tool_versions().get("gcc", "").encode())
    dest = cache_dir() / f"{cpu}-{h.hexdigest()[:16]}"
    objs = [dest / (Path(s).stem + ".o") for s in KERNEL_SOURCES]
    if all(o.exists() for o in objs):
        return objs
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for src in KERNEL_SOURCES:
            cmd = [GCC, *cfg.cflags, *COMMON_CFLAGS, "-I", str(KERNEL_DIR), "-c",
                   str(KERNEL_DIR / src), "-o", str(tmp / (Path(src).stem + ".o"))]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                raise RuntimeError(f"compiling {src} for {cpu} failed:\n{res.stderr.strip()}")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not all(o.exists() for o in objs):  # lost a race and the winner is incomplete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("compiled MCU kernels for %s into %s", cpu, dest)
    return objs


@dataclass(frozen=True)
class QemuResult:
    """One emulator run. ``instructions`` counts the measured call alone (calibrated bracket
    overhead and SysTick handler instructions removed); ``error`` is set when anything failed."""

    status: int | None
    instructions: int | None
    output: bytes
    run_s: float
    error: str | None
    log: str


def _elapsed(w: int, v: int) -> int:
    # ticks since start; reading VAL == 0 happens after the wrap interrupt was already taken
    return w * (1 << 24) - (v if v else (1 << 24))


def decode_result(raw: bytes) -> tuple[int, int]:
    """``(status, instructions)`` from ``hw_result.bin`` (see ``hw_harness.h``)."""
    magic, status, *s, _nb = struct.unpack("<Ii6II", raw[:36])
    if magic != 0x31525748:
        raise ValueError("bad magic in hw_result.bin")
    e0, e1, e2 = _elapsed(s[0], s[1]), _elapsed(s[2], s[3]), _elapsed(s[4], s[5])
    scale = SYSTICK_NS / (1 << ICOUNT_SHIFT)  # instructions per tick
    calib = round((e1 - e0) * scale)
    insns = round((e2 - e1) * scale) - calib - HANDLER_INSNS * (s[4] - s[2])
    return status, insns


def run_qemu(elf: Path, cpu: str, *, timeout_s: float = 60.0) -> QemuResult:
    """Run ``elf`` (linked with the harness) on the board of ``cpu`` in ``elf``'s directory."""
    import time

    cfg = cpu_config(cpu)
    cwd = elf.parent
    for name in ("hw_result.bin", "hw_output.bin"):
        (cwd / name).unlink(missing_ok=True)
    cmd = [QEMU, "-M", cfg.board, "-cpu", cfg.qemu_cpu, "-icount", f"shift={ICOUNT_SHIFT}",
           "-semihosting-config", "enable=on,target=native", "-nographic", "-monitor", "none",
           "-serial", "none", "-kernel", elf.name]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        text = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
        return QemuResult(None, None, b"", time.perf_counter() - t0,
                          f"qemu timed out after {timeout_s:.0f} s", text)
    run_s = time.perf_counter() - t0
    text = (res.stdout + res.stderr).decode(errors="replace")
    rpath = cwd / "hw_result.bin"
    if res.returncode != 0 or not rpath.exists():
        first = text.strip().splitlines()[-1] if text.strip() else ""
        return QemuResult(None, None, b"", run_s, f"qemu exit status {res.returncode}: {first}", text)
    try:
        status, insns = decode_result(rpath.read_bytes())
    except (ValueError, struct.error) as exc:
        return QemuResult(None, None, b"", run_s, f"unreadable result file: {exc}", text)
    out = (cwd / "hw_output.bin").read_bytes() if (cwd / "hw_output.bin").exists() else b""
    err = None if status == 0 else f"kernel returned status {status} (unsupported format/shape)"
    return QemuResult(status, insns, out, run_s, err, text)
