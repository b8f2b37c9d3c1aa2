"""Which external toolchains this machine has, each answered with ``None`` or the reason it is
missing together with the Debian install command (one line a user can paste).

The cross C compilers are checked past ``PATH``: Debian's ``gcc-aarch64-linux-gnu`` only
*recommends* the target C library (``libc6-dev-arm64-cross``), so with
``--no-install-recommends`` the compiler is there but every link fails with
``cannot find crti.o``. :func:`cross_c_missing` tells the two apart.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

__all__ = ["CROSS_PACKAGES", "cross_c_missing"]

# compiler -> (Debian package of the compiler, Debian package of its C library)
CROSS_PACKAGES: dict[str, tuple[str, str]] = {
    "aarch64-linux-gnu-gcc": ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
}


@functools.lru_cache(maxsize=None)
def cross_c_missing(compiler: str = "aarch64-linux-gnu-gcc") -> str | None:
    """``None`` when ``compiler`` is on ``PATH`` *and* finds its target C library's start files
    (``crti.o``, which every shared-object link needs), else what is missing and the
    ``apt-get install`` line that brings it."""
    gcc_pkg, libc_pkg = CROSS_PACKAGES.get(compiler, (compiler, "the target's C library"))
    if shutil.which(compiler) is None:
        return f"{compiler} not found: apt-get install -y --no-install-recommends {gcc_pkg} {libc_pkg}"
    try:
        found = subprocess.run([compiler, "-print-file-name=crti.o"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{compiler} does not run ({exc}): apt-get install -y --reinstall {gcc_pkg}"
    # gcc echoes the bare name back when the file is on none of its search paths
    if not os.path.isabs(found) or not os.path.exists(found):
        return (f"{compiler} is installed but its C library is not (no crti.o, every link fails): "
                f"apt-get install -y --no-install-recommends {libc_pkg}")
    return None
