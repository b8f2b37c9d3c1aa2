"""A kernel-level latency predictor for one (device, runtime), fitted from a sweep of kernel
measurements on that device (:mod:`hwsearch.kernel_sweep`), stored in a versioned JSON file keyed
by a device fingerprint.

**What it predicts.** The seconds one layer's kernel takes in the runtime — conv1d, conv2d,
depthwise, grouped conv, linear (one row or over tokens), each with its fused epilogue — from
the features of :mod:`costmodels.kernel_features` (log-dimensions, log MACs, log bytes, epilogue
flags), plus the runtime's per-call overhead (``overhead_s``: one call of a model that does
nothing, measured in the same sweep).

**Why gradient-boosted trees on log-latency** (scikit-learn's ``HistGradientBoostingRegressor``):
kernel latency on a CPU is a product of factors (channels × positions × kernel size / a
efficiency that jumps with vector widths, cache sizes and the runtime's choice of algorithm), so
in log-space it is a sum — trees on log-dimensions and log-MACs fit that with few points and
generalise across shapes by the MACs/bytes features, which are monotone-ish in size; the steps
(odd channel counts, a kernel switching from direct to im2col+GEMM) are what trees model and a
smooth regression does not. It needs no GPU, trains in a second on hundreds of points, and its
bootstrap ensemble gives the disagreement that adaptive sampling uses. nn-Meter used random
forests for the same reasons; on this machine's 2,100-kernel sweep, 5-fold cross-validation gave
boosted trees a median error of 19.8 % per kernel against 22.4 % for a 300-tree random forest,
fitted 5× faster (``studies/zeroshot/README.md``).

**Stored format.** The file holds the sweep's measurements (feature rows and seconds), not a
pickled model: loading refits the trees (deterministic, ``random_state`` fixed; about a second),
so nothing executable is read from disk and a file stays readable across scikit-learn versions.
Header: ``schema_version``, ``kind``, the device ``fingerprint`` (CPU model, core count, runtime
and its version, threads), library ``versions``, ``date`` and the sweep's provenance. Loading a
file whose fingerprint or schema differs from this machine's raises :class:`PredictorMismatchError`
naming the difference and the fix (re-run the sweep). Files live in the cache directory
(``$HWSEARCH_CACHE``, default ``~/.cache/hwsearch``), one per device and runtime
(:func:`default_path`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costmodels.errors import CostModelFileError
from costmodels.kernel_features import FEATURES
from costmodels.ops import GLUE_KIND, OP_KINDS

__all__ = ["SCHEMA_VERSION", "FILE_KIND", "OP_TERMS", "KernelPredictor", "PredictorMismatchError", "device_fingerprint",
           "cache_dir", "default_path", "find_for_device", "SWEEP_COMMAND"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_KIND = "hwsearch-kernel-predictor"
#: The command that makes a predictor for this device (printed wherever one is missing).
SWEEP_COMMAND = "hwsearch sweep --runtime {runtime}"
#: The trees' settings (fixed: a file refits to the same model).
TREE_PARAMS = {"max_iter": 400, "learning_rate": 0.06, "max_leaf_nodes": 15, "min_samples_leaf": 4,
               "l2_regularization": 0.1, "random_state": 0}
#: The op kinds the sweep times (``ModelGraph.ops`` kinds), each priced as
#: ``a + b · MACs + c · bytes + d · other FLOPs`` seconds (:meth:`KernelPredictor.op_seconds`).
OP_TERMS = (*OP_KINDS, GLUE_KIND)
_FINGERPRINT_KEYS = ("cpu", "cores", "runtime", "runtime_version", "threads")
_LOADED: dict[tuple[str, int], tuple[Any, str]] = {}


class PredictorMismatchError(CostModelFileError):
    """A predictor file made on another device, runtime, runtime version or schema."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return str(onnxruntime.__version__)
    if runtime == "torch":
        import torch

        return str(torch.__version__)
    raise CostModelFileError(f"no kernel sweep for runtime {runtime!r}; valid: onnxruntime")


def device_fingerprint(runtime: str = "onnxruntime", threads: int | None = None) -> dict[str, Any]:
    """This machine as a predictor file names it: CPU model name, logical cores, runtime, its
    version, intra-op threads (default: every core, as the sittings use)."""
    cores = os.cpu_count() or 1
    return {"cpu": _cpu_model(), "cores": cores, "runtime": runtime, "runtime_version": _runtime_version(runtime),
            "threads": int(threads or cores)}


def cache_dir() -> Path:
    """``$HWSEARCH_CACHE`` (default ``~/.cache/hwsearch``), the cache of :mod:`hwsearch.zoo` too."""
    return Path(os.environ.get("HWSEARCH_CACHE", Path.home() / ".cache" / "hwsearch"))


def default_path(fingerprint: dict[str, Any]) -> Path:
    """Where the predictor of a device fingerprint lives in the cache:
    ``kernel-predictor-<runtime>-<hash of the fingerprint>.json``."""
    key = json.dumps({k: fingerprint[k] for k in _FINGERPRINT_KEYS}, sort_keys=True)
    return cache_dir() / f"kernel-predictor-{fingerprint['runtime']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"


def find_for_device(runtime: str) -> tuple[KernelPredictor | None, str]:
    """This device's predictor for ``runtime`` from the cache, and a one-line note: why there is
    none and the command that makes one, or where it was read. A file there that does not load
    (another schema) is reported in the note, not raised."""
    try:
        fp = device_fingerprint(runtime)
    except CostModelFileError as exc:
        return None, str(exc)
    path = default_path(fp)
    make = SWEEP_COMMAND.format(runtime=runtime)
    if not path.exists():
        others = sorted(p.name for p in cache_dir().glob(f"kernel-predictor-{runtime}-*.json"))
        extra = f" ({len(others)} for other devices or versions in {cache_dir()})" if others else ""
        return None, (f"no kernel predictor for this device ({fp['cpu']}, {fp['cores']} cores, {runtime} "
                      f"{fp['runtime_version']}){extra}; make one with `{make}` (under 30 minutes)")
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _LOADED:  # a search asks once per round: read and fit the file once per process
        try:
            _LOADED[key] = (KernelPredictor.load(path, runtime=runtime), f"kernel predictor {path}")
        except CostModelFileError as exc:
            _LOADED[key] = (None, str(exc))
    return _LOADED[key]


class KernelPredictor:
    """Seconds of a layer kernel from its features (:data:`costmodels.kernel_features.FEATURES`).

    ``rows``: ``N × len(FEATURES)`` feature rows of the measured kernels; ``latency_s``: their
    measured seconds (median of interleaved repeats); ``overhead_s``: the runtime's per-call
    seconds; ``fingerprint``: the device (:func:`device_fingerprint`); ``meta``: provenance
    (sweep time, repeats, spread, …). Fitting happens in the constructor (deterministic).
    Raises :class:`CostModelFileError` for rows of the wrong width or non-positive seconds.
    """

    def __init__(self, rows: np.ndarray | Sequence[Sequence[float]], latency_s: Sequence[float], *,
                 overhead_s: float, fingerprint: dict[str, Any], meta: dict[str, Any] | None = None,
                 op_coef: dict[str, Sequence[float]] | None = None) -> None:
        x = np.asarray(rows, dtype=float)
        y = np.asarray(latency_s, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(y) != len(x) or len(y) < 8:
            raise CostModelFileError(f"kernel predictor needs >= 8 rows of {len(FEATURES)} features and one latency "
                                     f"each, got rows {x.shape} and {len(y)} latencies; re-run the sweep")
        if not (np.isfinite(x).all() and np.isfinite(y).all() and (y > 0).all()):
            raise CostModelFileError("kernel predictor rows hold non-finite features or non-positive latencies; "
                                     "re-run the sweep")
        self.rows, self.latency_s = x, y
        self.overhead_s = float(overhead_s)
        self.fingerprint = dict(fingerprint)
        self.meta = dict(meta or {})
        self.op_coef = {str(k): [float(v) for v in c] for k, c in (op_coef or {}).items()}
        if any(len(c) != 4 or not all(math.isfinite(v) and v >= 0 for v in c) for c in self.op_coef.values()):
            raise CostModelFileError("kernel predictor op coefficients must be 4 non-negative numbers per kind; "
                                     "re-run the sweep")
        self._model = self._fit(x, np.log(y), TREE_PARAMS["random_state"])

    @staticmethod
    def _fit(x: np.ndarray, logy: np.ndarray, seed: int) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        # one OpenMP thread: on a loaded 2-core machine the trees' thread pool spins and a
        # 1-second fit took 40-90 s
        with threadpool_limits(1):
            return HistGradientBoostingRegressor(**(TREE_PARAMS | {"random_state": seed})).fit(x, logy)

    @staticmethod
    def _predict_log(model: Any, x: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return model.predict(x)

    @property
    def runtime(self) -> str:
        return str(self.fingerprint.get("runtime", "?"))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Seconds per kernel for ``(..., len(FEATURES))`` features; the result has the leading shape."""
        f = np.asarray(features, dtype=float)
        if f.shape[-1] != len(FEATURES):
            raise CostModelFileError(f"features have {f.shape[-1]} columns, the predictor {len(FEATURES)}")
        flat = f.reshape(-1, len(FEATURES))
        if not len(flat):
            return np.zeros(f.shape[:-1])
        return np.exp(self._predict_log(self._model, flat)).reshape(f.shape[:-1])

    def op_seconds(self, kind: str, macs: np.ndarray, nbytes: np.ndarray, flops_other: np.ndarray) -> np.ndarray:
        """Seconds of ops of ``kind`` from their work (arrays of one shape; MACs, bytes read +
        written, other FLOPs); NaN everywhere when the sweep did not time that kind."""
        c = self.op_coef.get(kind)
        if c is None:
            return np.full(np.shape(macs), math.nan)
        return c[0] + c[1] * np.asarray(macs, float) + c[2] * np.asarray(nbytes, float) + c[3] * np.asarray(flops_other, float)

    def ensemble_spread(self, features: np.ndarray, *, members: int = 8, seed: int = 0) -> np.ndarray:
        """Disagreement of ``members`` trees fitted on bootstrap resamples of the rows: the standard
        deviation of their log-predictions per feature row (what adaptive sampling maximises)."""
        rng = np.random.default_rng(seed)
        f = np.asarray(features, dtype=float).reshape(-1, len(FEATURES))
        logy = np.log(self.latency_s)
        preds = []
        for k in range(members):
            idx = rng.integers(0, len(logy), len(logy))
            preds.append(self._predict_log(self._fit(self.rows[idx], logy[idx], k), f))
        return np.std(np.stack(preds), axis=0)

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        import sklearn

        return {"schema_version": SCHEMA_VERSION, "kind": FILE_KIND, "fingerprint": self.fingerprint,
                "versions": {"python": platform.python_version(), "numpy": np.__version__,
                             "sklearn": sklearn.__version__},
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "model": {"type": "HistGradientBoostingRegressor on log(latency_s)", "params": TREE_PARAMS},
                "features": list(FEATURES), "overhead_s": self.overhead_s, "meta": self.meta,
                "ops": {"terms": ["1", "macs", "bytes", "flops_other"], "coef": self.op_coef},
                "rows": self.rows.tolist(), "latency_s": self.latency_s.tolist()}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the versioned JSON file (default: :func:`default_path` of its fingerprint)."""
        path = Path(path) if path is not None else default_path(self.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "predictor", runtime: str | None = None,
                  expect: dict[str, Any] | None = None) -> KernelPredictor:
        """A predictor from :meth:`to_dict`'s content, checked against ``expect`` (a fingerprint;
        default: this machine's for ``runtime``, default the file's runtime). Raises
        :class:`PredictorMismatchError` for another schema, device, runtime or version,
        :class:`CostModelFileError` for bad content."""
        runtime = runtime or str((data.get("fingerprint") or {}).get("runtime", "onnxruntime"))
        rerun = SWEEP_COMMAND.format(runtime=runtime)
        if data.get("kind") != FILE_KIND:
            raise CostModelFileError(f"{source} is not a kernel predictor (kind {data.get('kind')!r}); "
                                     f"make one with `{rerun}`")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PredictorMismatchError(f"{source} has schema_version {data.get('schema_version')!r}, this hwsearch "
                                         f"reads {SCHEMA_VERSION}: re-run the sweep (`{rerun}`)")
        fp = data.get("fingerprint") or {}
        if list(data.get("features", [])) != list(FEATURES):
            raise PredictorMismatchError(f"{source} was fitted on other features than this hwsearch computes: "
                                         f"re-run the sweep (`{rerun}`)")
        want = expect if expect is not None else device_fingerprint(runtime, fp.get("threads"))
        diff = [f"{k} {fp.get(k)!r} (this machine: {want.get(k)!r})" for k in _FINGERPRINT_KEYS
                if fp.get(k) != want.get(k)]
        if diff:
            raise PredictorMismatchError(f"{source} was made on another device or runtime: {'; '.join(diff)}; "
                                         f"re-run the sweep on this machine (`{rerun}`)")
        try:
            return cls(data["rows"], data["latency_s"], overhead_s=float(data["overhead_s"]), fingerprint=fp,
                       meta=data.get("meta") or {}, op_coef=(data.get("ops") or {}).get("coef") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise CostModelFileError(f"{source} is malformed ({exc}); re-run the sweep (`{rerun}`)") from None

    @classmethod
    def load(cls, path: str | Path, *, runtime: str | None = None,
             expect: dict[str, Any] | None = None) -> KernelPredictor:
        """Read and check a file written by :meth:`save` (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CostModelFileError(f"kernel predictor {path} does not exist; make one with "
                                     f"`{SWEEP_COMMAND.format(runtime='onnxruntime')}`") from None
        except json.JSONDecodeError as exc:
            raise CostModelFileError(f"kernel predictor {path} is not valid JSON ({exc}); re-run the sweep") from None
        return cls.from_dict(data, source=f"kernel predictor {path}", runtime=runtime, expect=expect)
