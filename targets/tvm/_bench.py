"""Figures for ``targets/tvm/README.md``: one small conv net, timed four ways on this host.

``python -m targets.tvm._bench --work-dir /tmp/hwsearch-tvm-bench --trials 64 --samples 8
--out bench.json`` measures torch eager (default threads and one thread), TVM untuned
(default schedules; a baseline only — ``measure`` never reports it), ``measure(mode="quick")``
and ``measure(mode="tuned")``, each TVM mode with a fresh tuning database of its own, and
writes the figures as JSON with the load average before and after (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class SmallConvNet(torch.nn.Module):
    """Three conv1d+ReLU layers and a Linear head on a (1, 1, 40) signal (MNIST-1D sized)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv1d(1, 32, 5, padding=2)
        self.c2 = torch.nn.Conv1d(32, 64, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(64 * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.flatten(1))


def _torch_eager(model: torch.nn.Module, x: torch.Tensor, repeat: int = 20) -> float:
    """Median seconds per call of torch eager, each sample the mean of ≥ 50 ms of calls."""
    import statistics

    samples = []
    with torch.no_grad():
        for _ in range(5):
            model(x)
        for _ in range(repeat):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.05:
                model(x)
                n += 1
            samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples)


def _untuned(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    from ._compile import compile_model, make_target
    from ._config import EvaluatorConfig
    from ._env import cpu_model, default_target
    from ._import import export_model, import_exported
    from ._timing import LocalDevice, time_model

    start = time.perf_counter()
    compiled = compile_model(import_exported(export_model(model, (x,))),
                             make_target(default_target()), None)
    stats, _ = time_model(compiled.executable, LocalDevice(cpu_model()), [x.numpy()],
                          EvaluatorConfig())
    return {"latency_s": stats.median_s, "latency_iqr_s": stats.iqr_s,
            "build_s": time.perf_counter() - start, "unscheduled": list(compiled.unscheduled)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    from ._measure import measure

    parser = argparse.ArgumentParser(prog="python -m targets.tvm._bench")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--modes", default="eager,untuned,quick,tuned")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    modes = args.modes.split(",")
    torch.manual_seed(0)
    model, x = SmallConvNet().eval(), torch.randn(1, 1, 40)
    figures: dict[str, Any] = {"model": "SmallConvNet (conv1d 1-32-64-64, linear 640-10), "
                                        "input (1, 1, 40)"}
    figures["loadavg_start"] = list(os.getloadavg())
    if "eager" in modes:
        figures["torch_threads"] = torch.get_num_threads()
        figures["torch_eager_s"] = _torch_eager(model, x)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # OpenMP spinning suffers most on a loaded machine
        figures["torch_eager_1thread_s"] = _torch_eager(model, x)
        torch.set_num_threads(threads)
    if "untuned" in modes:
        figures["untuned"] = _untuned(model, x)
    for mode in ("quick", "tuned"):
        if mode not in modes:
            continue
        work = args.work_dir / mode
        shutil.rmtree(work, ignore_errors=True)  # a fresh database: time the scheduling too
        start = time.perf_counter()
        result = measure(model, (x,), mode=mode, work_dir=work, trials=args.trials,
                         samples=args.samples)
        record = result.to_dict()
        record["wall_s"] = time.perf_counter() - start
        figures[mode] = record
        logger.info("%s: %s", mode, result.latency_s if result.ok else result.error)
    figures["loadavg_end"] = list(os.getloadavg())
    text = json.dumps(figures, indent=1)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
