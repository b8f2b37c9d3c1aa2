"""Errors of the TVM backend and the helper that turns any exception into one readable line."""
from __future__ import annotations

import re

from hwsearch.core.errors import HwsearchError

__all__ = ["BuildFailure", "ImportFailure", "MeasureFailure", "TVMBackendError", "one_line",
           "user_frame"]


class TVMBackendError(HwsearchError):
    """A model could not be imported, compiled, exported or run by the TVM backend.

    ``measure`` turns these into ``MeasureResult.error``; ``build_library`` raises them."""


class ImportFailure(TVMBackendError):
    """torch.export or the Relax frontend rejected the model."""


class BuildFailure(TVMBackendError):
    """Compiling, scheduling or exporting failed."""


class MeasureFailure(TVMBackendError):
    """Running or timing failed (locally or on the RPC device)."""


_NOISE = re.compile(r"^(Traceback|\s*File |\s+at |\s*\d+: |note: run with|\s*$)")


def one_line(exc: BaseException, limit: int = 300, *, first: bool = False) -> str:
    """``"<Type>: <the most informative line of the message>"``, at most ``limit`` characters.

    TVM errors carry a C++/Python traceback before the message, so by default the last line
    that is not part of it is kept (usually ``Check failed: ...``); torch puts the message
    first and advice after it, so ``first=True`` keeps the first line instead."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _NOISE.match(ln)]
    if not lines:
        msg = text.splitlines()[0] if text else ""
    else:
        msg = lines[0] if first else lines[-1]
    # TVM repeats the error type inside the message ("InternalError: Check failed: ...").
    name = type(exc).__name__
    if not msg.startswith(name) and not re.match(r"^\w+(Error|Exception):", msg):
        msg = f"{name}: {msg}" if msg else name
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def user_frame(exc: BaseException) -> str | None:
    """``"file.py:12 in forward"`` — the last source location quoted in the message, if any."""
    found = _FRAME.findall(str(exc))
    if not found:
        return None
    path, line, func = found[-1]
    return f"{path}:{line} in {func}"
