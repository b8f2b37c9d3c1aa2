"""Interleaved sittings in ONNX Runtime and torch; see the package docstring for the protocol.

The parent process exports each configuration (``<key>.onnx`` for ONNX Runtime, ``<key>.pt2``
for torch) and runs ``python -m targets.runtimes._sitting JOB PASS RUNTIME`` once per pass and
runtime; the worker writes its raw samples to a JSON file that the parent aggregates. A
configuration that cannot be exported, loaded or run is a :class:`SittingResult` with
``error`` set; the others are still measured.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.core.errors import SpecError
from targets.tvm._errors import one_line  # torch-style messages: the first line (imports no TVM)

__all__ = ["RUNTIMES", "SittingConfig", "SittingResult", "export_onnx", "measure_sitting", "median_ci",
           "runtime_versions"]

log = logging.getLogger(__name__)

#: Runtimes this module measures (TVM measures in ``targets.tvm``).
RUNTIMES = ("onnxruntime", "torch")
#: Version of the dict layout written by :meth:`SittingResult.to_dict`.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SittingConfig:
    """How a sitting times its configurations.

    Per pass (a fresh process per runtime): each configuration is loaded, run once (checked
    against the reference outputs), and its run count ``n`` set so that ``n`` runs last at least
    ``min_sample_ms``; then ``rounds`` rounds, each timing every configuration once as one
    untimed run followed by ``n`` timed runs (one sample = their mean), in an order rotated by
    one each round. ``passes`` passes alternate the order of the runtimes. ONNX Runtime's
    profiler then runs ``profile_runs`` runs per configuration (first pass only; not timed).
    ``threads``: intra-op threads of both runtimes (default: every core)."""

    passes: int = 3
    rounds: int = 15
    min_sample_ms: float = 5.0
    threads: int = 0
    profile_runs: int = 30
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.passes < 1 or self.rounds < 1 or self.min_sample_ms <= 0 or self.threads < 0:
            raise ValueError(f"SittingConfig: passes ({self.passes}) and rounds ({self.rounds}) must be >= 1, "
                             f"min_sample_ms ({self.min_sample_ms}) > 0, threads ({self.threads}) >= 0")

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


@dataclass(frozen=True)
class SittingResult:
    """One configuration in one runtime, measured in a sitting. Seconds throughout.

    ``latency_s``: median over all samples of all passes; ``latency_iqr_s``: their
    interquartile range. ``speedup``: the median over paired rounds of (the reference
    configuration's sample ÷ this one's), in this runtime; ``speedup_lo``/``_hi``: a
    distribution-free 95 % confidence interval of that median (:func:`median_ci`);
    ``speedup_p10``/``_p90``: the 10th/90th percentiles of the ratios (their spread).
    ``layer_s``: per-layer kernel time from the runtime's profiler (ONNX Runtime only), less the
    profiler's own per-node cost (:func:`_deprofile`). ``max_abs_err``: largest absolute difference
    from the reference outputs. ``error``: why it was not measured (then latencies are None)."""

    key: str
    runtime: str
    latency_s: float | None
    latency_iqr_s: float | None = None
    samples: int = 0
    speedup: float | None = None
    speedup_lo: float | None = None
    speedup_hi: float | None = None
    layer_s: dict[str, float] = field(default_factory=dict)
    max_abs_err: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    passes: int = 0
    rounds: int = 0
    threads: int = 0
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sitting_schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SittingResult:
        ver = data.get("sitting_schema_version", SCHEMA_VERSION)
        if ver != SCHEMA_VERSION:
            raise SpecError(f"sitting record schema_version {ver!r} is not {SCHEMA_VERSION}: re-measure it")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def no_measurable_change(self) -> bool:
        """True when the 95 % confidence interval of the speed-up over the reference includes 1.0."""
        return (self.speedup_lo is not None and self.speedup_hi is not None
                and self.speedup_lo <= 1.0 <= self.speedup_hi)


def median_ci(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free confidence interval of the median of ``values`` (order statistics of
    the binomial(n, 1/2) approximation; 95 % for ``z`` = 1.96): the sorted values at ranks
    n/2 ∓ z·√n/2. With few values it widens to the extremes."""
    v = np.sort(np.asarray(values, dtype=float))
    n = v.size
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return float(v[lo]), float(v[hi])


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes and libraries a sitting depends on."""
    out = {"python": platform.python_version()}
    for mod in ("onnxruntime", "torch", "onnx", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a missing runtime is simply not recorded
            pass
    return out


def _cpu() -> str:
    from targets.tvm._env import cpu_model

    return cpu_model()


def export_onnx(model: Any, example_inputs: tuple, path: Path) -> Path:
    """``model`` as ONNX at ``path`` through ``torch.onnx.export(dynamo=True)`` (the weights
    keep their parameter names: ``<layer>.weight``). Raises what the exporter raises."""
    import contextlib
    import io

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # the exporter prints its progress on stdout: keep ours clean
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(model, tuple(example_inputs), str(path), dynamo=True, verbose=False)
    return path


def _export_pt2(model: Any, example_inputs: tuple, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(torch.export.export(model, tuple(example_inputs)), str(path))
    return path


def measure_sitting(models: Mapping[str, Any], example_inputs: tuple, *, work_dir: Path,
                    runtimes: tuple[str, ...] = ("onnxruntime",), reference: str | None = None,
                    config: SittingConfig | None = None) -> dict[tuple[str, str], SittingResult]:
    """Time every model of ``models`` (key → ``nn.Module``, or the path of an ``.onnx`` file to
    time as it is, e.g. a shipped artefact: ONNX Runtime only, outputs not compared) in every
    runtime of ``runtimes`` in one sitting. ``reference``: the key whose samples the speed-ups divide (the dense
    model). Returns ``{(key, runtime): SittingResult}``; failures are results with ``error``."""
    import torch

    cfg = config or SittingConfig()
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ValueError(f"unknown runtimes {bad}; this module measures {', '.join(RUNTIMES)}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    base = {"passes": cfg.passes, "rounds": cfg.rounds, "threads": cfg.n_threads, "device": _cpu(),
            "versions": runtime_versions(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    inputs = [t.detach().cpu().numpy() for t in example_inputs]
    in_paths = []
    for i, x in enumerate(inputs):
        p = work_dir / f"input{i}.npy"
        np.save(p, x)
        in_paths.append(str(p))
    out: dict[tuple[str, str], SittingResult] = {}
    entries: dict[str, list[dict]] = {r: [] for r in runtimes}
    for key, model in models.items():
        if isinstance(model, (str, Path)):
            for rt in runtimes:
                if rt == "onnxruntime":
                    entries[rt].append({"key": key, "path": str(model), "expected": None})
                else:
                    out[(key, rt)] = SittingResult(key, rt, None, error=f"{model} is an ONNX file: onnxruntime only",
                                                   **base)
            continue
        try:
            with torch.no_grad():
                ref = model(*example_inputs)
            ref_path = work_dir / f"{key}.expected.npy"
            np.save(ref_path, (ref[0] if isinstance(ref, (tuple, list)) else ref).detach().numpy())
        except Exception as exc:  # noqa: BLE001 — a model that does not run is a record
            for rt in runtimes:
                out[(key, rt)] = SittingResult(key, rt, None, error=f"the model does not run: {one_line(exc, first=True)}", **base)
            continue
        for rt in runtimes:
            try:
                path = (export_onnx(model, example_inputs, work_dir / f"{key}.onnx") if rt == "onnxruntime"
                        else _export_pt2(model, example_inputs, work_dir / f"{key}.pt2"))
            except Exception as exc:  # noqa: BLE001
                out[(key, rt)] = SittingResult(key, rt, None, error=f"export for {rt} failed: {one_line(exc, first=True)}", **base)
                continue
            entries[rt].append({"key": key, "path": str(path), "expected": str(ref_path)})
    raw: dict[tuple[str, str], dict] = {}
    for p in range(cfg.passes):
        order = list(runtimes) if p % 2 == 0 else list(runtimes)[::-1]
        for rt in order:
            if not entries[rt]:
                continue
            res = _run_pass(work_dir, rt, p, entries[rt], in_paths, cfg)
            for key, r in res.items():
                acc = raw.setdefault((key, rt), {"samples": [], "error": None, "layer_s": {}, "max_abs_err": None})
                if r.get("error"):
                    acc["error"] = acc["error"] or r["error"]
                    continue
                acc["samples"].append(r["samples"])  # one list per pass, aligned by round
                if r.get("layer_s"):
                    acc["layer_s"], acc["node_sum_s"], acc["n_nodes"] = r["layer_s"], r.get("node_sum_s"), r.get("n_nodes")
                acc["max_abs_err"] = r.get("max_abs_err")
    for (key, rt), acc in raw.items():
        if acc["error"] or not acc["samples"]:
            out[(key, rt)] = SittingResult(key, rt, None, error=acc["error"] or "no samples", **base)
            continue
        flat = np.concatenate([np.asarray(s) for s in acc["samples"]])
        q1, med, q3 = np.percentile(flat, [25, 50, 75])
        layer_s = acc["layer_s"]
        if layer_s and acc.get("node_sum_s"):
            layer_s = _deprofile(layer_s, float(acc["node_sum_s"]), float(acc.get("n_nodes") or 0), float(med))
        sp = lo = hi = p10 = p90 = None
        ref_acc = raw.get((reference, rt)) if reference is not None else None
        if ref_acc and not ref_acc["error"] and len(ref_acc["samples"]) == len(acc["samples"]):
            ratios = np.concatenate([np.asarray(r) / np.asarray(s) for r, s in zip(ref_acc["samples"], acc["samples"])])
            sp = float(np.median(ratios))
            lo, hi = median_ci(ratios)
            p10, p90 = (float(v) for v in np.percentile(ratios, [10, 90]))
        out[(key, rt)] = SittingResult(key, rt, float(med), float(q3 - q1), int(flat.size), sp, lo, hi,
                                       layer_s, acc["max_abs_err"], speedup_p10=p10, speedup_p90=p90, **base)
    return out


def _deprofile(layer_s: dict[str, float], node_sum_s: float, n_nodes: float, latency_s: float) -> dict[str, float]:
    """Per-layer times from a profiled run brought to an unprofiled one. The profiler adds a
    roughly fixed cost to every node (a few µs here, as much as a small conv takes), so scaling
    the times in proportion would hand that cost to the layers and hide what pruning saves:
    the excess of the profiled node sum over the measured latency is taken off each node
    equally (each layer keeps at least 5 % of its profiled time), then, if the layers still
    sum to more than the latency, they are scaled down to it."""
    per_node = max(0.0, node_sum_s - latency_s) / n_nodes if n_nodes > 0 else 0.0
    out = {k: max(v - per_node, 0.05 * v) for k, v in layer_s.items()}
    total = sum(out.values())
    if total > latency_s > 0:
        out = {k: v * latency_s / total for k, v in out.items()}
    return out


def _run_pass(work_dir: Path, runtime: str, pass_idx: int, entries: list[dict], inputs: list[str],
              cfg: SittingConfig) -> dict[str, dict]:
    """One fresh worker process for one runtime; its per-key samples (or errors)."""
    job = work_dir / f"job-{runtime}-{pass_idx}.json"
    result = work_dir / f"result-{runtime}-{pass_idx}.json"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"runtime": runtime, "pass": pass_idx, "entries": entries, "inputs": inputs,
                               "config": asdict(cfg), "threads": cfg.n_threads, "result": str(result)}))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cfg.n_threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "targets.runtimes._sitting", str(job)], capture_output=True,
                              text=True, timeout=cfg.timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {e["key"]: {"error": f"{runtime} sitting timed out after {cfg.timeout_s:.0f} s"} for e in entries}
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        why = tail[-1][:300] if tail else f"exit status {proc.returncode}"
        return {e["key"]: {"error": f"{runtime} worker failed: {why}"} for e in entries}
    return json.loads(result.read_text())


# ---------------------------------------------------------------- the worker (a fresh process)

def _ort_runner(path: str, inputs: list[np.ndarray], profile_prefix: str | None = None):
    """An ONNX Runtime session and a call of it; its threads come from the process-wide pool
    that :func:`_worker` sizes before the first session."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # one thread pool for every session of the process (see _worker): a session's idle pool
    # would otherwise spin on the cores while the next configuration is being timed
    so.use_per_session_threads = False
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return sess, (lambda: sess.run(None, feed)[0])


def _torch_runner(path: str, inputs: list[np.ndarray], threads: int):
    import torch

    torch.set_num_threads(threads)
    mod = torch.export.load(path).module()
    xs = [torch.from_numpy(x) for x in inputs]

    def run():
        with torch.inference_mode():
            out = mod(*xs)
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    return None, run


#: ONNX Runtime kernels that consume a layer's weight (after its graph rewrites: fusions keep
#: the op name, the NCHWc transformer reports "Conv" under a new node name)
_WEIGHT_OPS = {"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"}


def _weight_owner(path: str) -> tuple[dict[str, str], list[str]]:
    """ONNX node name → layer, for nodes that consume a ``<layer>.weight`` initializer, and
    those layers in graph order."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    out, order = {}, []
    for node in graph.node:
        for name in node.input:
            if name in inits and name.endswith(".weight"):
                out[node.name] = name[: -len(".weight")]
                order.append(out[node.name])
                break
    return out, order


def _ort_layer_times(path: str, inputs: list[np.ndarray], runs: int,
                     prefix: str) -> tuple[dict[str, float], float, float]:
    """Median kernel time per layer from ONNX Runtime's profiler (``<node>_kernel_time`` events),
    the mean over runs of the sum of every node's kernel time (seconds), and the number of
    nodes timed per run."""
    sess, run = _ort_runner(path, inputs, profile_prefix=prefix)
    for _ in range(runs):
        run()
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    owner, order = _weight_owner(path)
    per: dict[str, list[float]] = {}
    all_nodes = 0.0
    n_events = 0
    weight_events: list[float] = []  # the weight kernels' times, in execution order
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        dur = float(e["dur"]) * 1e-6  # µs in the trace
        all_nodes += dur
        n_events += 1
        layer = owner.get(name[: -len("_kernel_time")])
        if layer is not None:
            per.setdefault(layer, []).append(dur)
        if str((e.get("args") or {}).get("op_name", "")) in _WEIGHT_OPS:
            weight_events.append(dur)
    if len(per) < len(order) and order and len(weight_events) == runs * len(order):
        # graph rewrites renamed nodes (the NCHWc transformer on 2-D convs): the weight kernels
        # run once each per inference, in graph order, so the k-th of a run is the k-th layer
        per = {}
        for i, dur in enumerate(weight_events):
            per.setdefault(order[i % len(order)], []).append(dur)
    # a layer's node runs once per inference: the median over the profiled runs
    return ({k: float(np.median(v)) for k, v in per.items()}, all_nodes / max(1, runs),
            n_events / max(1, runs))


def _worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    cfg = SittingConfig(**job["config"])
    rt, threads = job["runtime"], int(job["threads"])
    inputs = [np.load(p) for p in job["inputs"]]
    results: dict[str, dict] = {}
    runners = []
    if rt == "onnxruntime":
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(threads, 1)  # before the first session
    for e in job["entries"]:
        try:
            _, run = (_ort_runner(e["path"], inputs) if rt == "onnxruntime"
                      else _torch_runner(e["path"], inputs, threads))
            got = np.asarray(run())
            err = None
            if e["expected"] is not None:
                expected = np.load(e["expected"])
                err = (float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape
                       else math.inf)
                if not err < 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
                    results[e["key"]] = {"error": f"{rt} outputs differ from torch's (max abs error {err:.3g})"}
                    continue
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < cfg.min_sample_ms * 1e-3 or n < 3:
                run()
                n += 1
            runners.append((e["key"], run, max(1, n), err))
        except Exception as exc:  # noqa: BLE001 — one failed configuration does not end the sitting
            results[e["key"]] = {"error": f"{rt}: {one_line(exc, first=True)}"}
    samples: dict[str, list[float]] = {k: [] for k, _, _, _ in runners}
    for rnd in range(cfg.rounds):
        shift = (rnd + int(job["pass"])) % max(1, len(runners))
        for key, run, n, _ in runners[shift:] + runners[:shift]:
            run()  # untimed: wakes this configuration's threads and caches
            t0 = time.perf_counter()
            for _ in range(n):
                run()
            samples[key].append((time.perf_counter() - t0) / n)
    for key, _, _, err in runners:
        results[key] = {"samples": samples[key], "max_abs_err": err}
    if rt == "onnxruntime" and int(job["pass"]) == 0 and cfg.profile_runs > 0:
        for e in job["entries"]:
            if "samples" in results.get(e["key"], {}):
                try:
                    prefix = str(Path(job["result"]).parent / f"profile-{e['key']}")
                    layers, node_sum, n_nodes = _ort_layer_times(e["path"], inputs, cfg.profile_runs,
                                                                 prefix)
                    results[e["key"]]["layer_s"] = layers
                    results[e["key"]]["node_sum_s"] = node_sum
                    results[e["key"]]["n_nodes"] = n_nodes
                except Exception as exc:  # noqa: BLE001 — the total still stands without layers
                    log.warning("profiling %s failed: %s", e["key"], one_line(exc, first=True))
    Path(job["result"]).write_text(json.dumps(results))


if __name__ == "__main__":
    _worker(sys.argv[1])
