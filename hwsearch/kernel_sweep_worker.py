"""The kernel sweep's timing worker (:mod:`hwsearch.kernel_sweep`), run as a script in a fresh
process: ``python -I kernel_sweep_worker.py JOB``. It imports numpy and onnxruntime only (no
hwsearch: a fresh process must not spend seconds importing torch). It times the job's ONNX
graphs as a :mod:`targets.runtimes` sitting does — one global intra-op pool of ``threads``
threads, sequential execution, every graph optimisation; each graph run once untimed and its
run count ``n`` set so ``n`` runs last ``min_sample_ms``; then ``rounds`` rounds, each timing every
graph once (one untimed run, then ``n`` timed runs: one sample, seconds per run) in an order
rotated by one per round — and writes ``{key: {"samples": [...]}}`` (or ``{"error": ...}``) as
JSON to the job's ``result`` path.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(job_path: str) -> None:
    """Time a job's graphs in ONNX Runtime as a sitting does (see the module docstring)."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    job = json.loads(Path(job_path).read_text())
    _pybind_state.set_global_thread_pool_sizes(int(job["threads"]), 1)  # before the first session
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    runners = []
    for e in job["entries"]:
        try:
            so = ort.SessionOptions()
            so.use_per_session_threads = False
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sess = ort.InferenceSession(e["path"], so, providers=["CPUExecutionProvider"])
            feed = {i.name: (rng.integers(0, s["int_high"], s["shape"]).astype(np.int64) if s.get("int_high")
                             else rng.standard_normal(s["shape"]).astype(np.float32))
                    for i, s in zip(sess.get_inputs(), e["inputs"])}
            run = (lambda s=sess, f=feed: s.run(None, f))
            run()
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < job["min_sample_ms"] * 1e-3 or n < 2:
                run()
                n += 1
            runners.append((e["key"], run, n))
        except Exception as exc:  # noqa: BLE001 — one graph that fails is a record, not the end
            results[e["key"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    samples: dict[str, list[float]] = {k: [] for k, _, _ in runners}
    for rnd in range(int(job["rounds"])):
        shift = (rnd + int(job["pass"])) % max(1, len(runners))
        for key, run, n in runners[shift:] + runners[:shift]:
            run()
            t0 = time.perf_counter()
            for _ in range(n):
                run()
            samples[key].append((time.perf_counter() - t0) / n)
    results.update({k: {"samples": v} for k, v in samples.items()})
    Path(job["result"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
