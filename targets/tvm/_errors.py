"""Errors of the TVM backend and the helper that turns any exception into one readable line."""
from __future__ import annotations

import re

from hwsearch.errors import HwsearchError

__all__ = ["BuildFailure", "ImportFailure", "MeasureFailure", "TVMBackendError", "one_line"]


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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"<Type>: <the most informative line of the message>"``, at most ``limit`` characters.

    TVM errors carry a C++/Python traceback; this keeps the last line that is not part of it
    (usually ``Check failed: ...`` or the Python error text)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _NOISE.match(ln)]
    msg = lines[-1] if lines else (text.splitlines()[0] if text else "")
    # TVM repeats the error type inside the message ("InternalError: Check failed: ...").
    name = type(exc).__name__
    if not msg.startswith(name) and not re.match(r"^\w+(Error|Exception):", msg):
        msg = f"{name}: {msg}" if msg else name
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"
