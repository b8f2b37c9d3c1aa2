"""TVM measuring backend (targets.tvm): real TVM compiles and timings on the local CPU.

The module shares one work_dir, so the tiny model's kernels are sampled once (first test) and
reused by the later ones, which is itself under test. Slow tests are marked ``slow``.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from targets.toolchains import cross_c_missing
from targets.tvm import (
    EvaluatorConfig,
    MeasureResult,
    RPCConfig,
    build_library,
    default_target,
    measure,
    record_count,
    workload_count,
)

# Short timing so the file stays within minutes on 2 cores; the defaults are for real use.
FAST = EvaluatorConfig(number=5, repeat=7, min_repeat_ms=10, warmup=1)


class TinyNet(torch.nn.Module):
    """conv1d → relu → conv1d → relu → linear on a (1, 1, 40) signal."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv1d(1, 8, 5, padding=2)
        self.c2 = torch.nn.Conv1d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16 * 20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def _inputs() -> tuple[torch.Tensor]:
    return (torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tvm_work")


@pytest.fixture(scope="module")
def first(work_dir: Path) -> tuple[MeasureResult, float]:
    """Quick measurement of TinyNet in a fresh process, with its wall time in seconds."""
    torch.manual_seed(0)
    start = time.perf_counter()
    result = measure(TinyNet(), _inputs(), mode="quick", work_dir=work_dir, samples=4,
                     evaluator=FAST)
    return result, time.perf_counter() - start


# ---------------------------------------------------------------- quick mode, local CPU


@pytest.mark.slow
def test_quick_measure_gives_latency_and_layers(first: tuple[MeasureResult, float]) -> None:
    result, _ = first
    assert result.error is None, result.error
    assert result.latency_s is not None and math.isfinite(result.latency_s)
    assert 0 < result.latency_s < 0.1
    assert result.latency_min_s <= result.latency_s <= result.latency_max_s
    assert result.latency_iqr_s is not None and result.latency_iqr_s >= 0
    assert result.mode == "quick" and result.backend == "tvm-local"
    assert result.repeats == FAST.repeat and result.number == FAST.number
    assert result.tvm_target == default_target()
    assert result.versions["tvm"] and result.versions["torch"] and result.date
    # Three kernels: two fused conv1d+add+relu and one matmul+add (the flatten is a view).
    names = [layer.name for layer in result.layers]
    assert len(names) == 3 and all(n.startswith("fused_") for n in names), names
    assert [layer.call_index for layer in result.layers] == [0, 1, 2]
    assert [layer.weight_shape for layer in result.layers] == [(8, 1, 5), (16, 8, 3), (10, 320)]
    assert [layer.weight_name for layer in result.layers] == ["c1.weight", "c2.weight",
                                                              "fc.weight"]
    layer_sum = sum(layer.median_s for layer in result.layers)
    assert 0.1 < layer_sum / result.latency_s < 10, (layer_sum, result.latency_s)
    assert result.tune_s > 0 and result.build_s > 0


@pytest.mark.slow
def test_quick_outputs_match_torch(first: tuple[MeasureResult, float]) -> None:
    result, _ = first
    assert result.max_abs_err is not None and result.max_abs_err < 1e-4


@pytest.mark.slow
def test_second_measure_reuses_the_database(work_dir: Path,
                                            first: tuple[MeasureResult, float]) -> None:
    result, _ = first
    assert result.error is None, result.error
    workloads, records = workload_count(work_dir), record_count(work_dir)
    assert workloads == 3 and records == 3
    torch.manual_seed(1)  # other weights, same shapes: the schedules still apply
    again = measure(TinyNet(), _inputs(), mode="quick", work_dir=work_dir, samples=4,
                    evaluator=FAST)
    assert again.error is None, again.error
    assert workload_count(work_dir) == workloads and record_count(work_dir) == records
    assert any("3 of 3 kernel(s) reused" in note for note in again.notes), again.notes
    # no schedule sampled again (the wall time of the whole call is load-dependent: not asserted)
    assert again.tune_s < result.tune_s
    assert [layer.name for layer in again.layers] == [layer.name for layer in result.layers]


@pytest.mark.slow
def test_in_process_measure_agrees(work_dir: Path, first: tuple[MeasureResult, float]) -> None:
    result, _ = first
    torch.manual_seed(0)
    local = measure(TinyNet(), _inputs(), work_dir=work_dir, evaluator=FAST,
                    fresh_process=False, per_layer=False)
    assert local.error is None, local.error
    assert local.max_abs_err is not None and local.max_abs_err < 1e-4
    assert 0.2 < local.latency_s / result.latency_s < 5


class SharedKernelNet(torch.nn.Module):
    """Conv2d + batch norm, then two equal-shaped Linear heads (two outputs) that share one
    TVM kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return torch.relu(self.a(h)), torch.relu(self.b(h))


@pytest.mark.slow
def test_layers_name_the_weight_of_each_call(work_dir: Path) -> None:
    torch.manual_seed(0)
    model = SharedKernelNet().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    result = measure(model, (torch.randn(1, 3, 8, 8),), work_dir=work_dir, samples=2,
                     evaluator=FAST)
    assert result.error is None, result.error
    assert result.max_abs_err is not None and result.max_abs_err < 1e-4
    named = [(layer.weight_name, layer.weight_shape) for layer in result.layers
             if layer.weight_name]
    # TVM may run the two heads in either order
    assert named[0] == ("conv.weight", (8, 3, 3, 3))
    assert sorted(named[1:]) == [("a.weight", (8, 8)), ("b.weight", (8, 8))]
    # Inference form: batch norm is fused into the conv kernel, not a kernel of its own.
    assert not any("batch_norm" in layer.name for layer in result.layers)
    linear = [layer for layer in result.layers if layer.weight_name in ("a.weight", "b.weight")]
    assert linear[0].name == linear[1].name  # one kernel, two calls


def test_quick_sampling_seed_is_a_function_of_the_kernel_not_its_position() -> None:
    """The same kernel draws the same candidate schedules wherever it sits in a model (and in
    whichever database), so a plan measured by a search and again by a study runs the same code;
    a different kernel, or another seed, draws others."""
    from targets.tvm._compile import fuse, make_target, tuning_tasks
    from targets.tvm._import import export_model, import_exported
    from targets.tvm._quick import _rand_state

    target = make_target(default_target())

    def states(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> list[int]:
        mod = import_exported(export_model(model.eval(), (x,))).mod
        return [_rand_state(seed, t.dispatched[0]) for t in tuning_tasks(fuse(mod, target), target)]

    torch.manual_seed(0)
    two = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv1d(16, 16, 3, padding=1))
    one = torch.nn.Sequential(torch.nn.Conv1d(16, 16, 3, padding=1))   # other weights, same kernel
    in_two, in_one = states(two, torch.randn(1, 8, 20)), states(one, torch.randn(1, 16, 20))
    assert len(in_two) == 2 and len(set(in_two)) == 2 and len(in_one) == 1
    assert in_one[0] in in_two                       # first in one model, second in the other
    assert states(one, torch.randn(1, 16, 20), seed=1)[0] != in_one[0]


# ---------------------------------------------------------------- failures are records


def test_export_failure_is_an_error_record(work_dir: Path) -> None:
    result = measure(DataDependent(), _inputs(), work_dir=work_dir)
    assert isinstance(result, MeasureResult)
    assert result.latency_s is None and not result.ok
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("torch.export failed")
    assert "torch.cond" in result.error  # the remedy


class Unsupported(torch.nn.Module):
    """Exports fine, but TVM's torch frontend has no converter for bessel_j0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def test_relax_import_failure_is_an_error_record(work_dir: Path) -> None:
    result = measure(Unsupported(), _inputs(), work_dir=work_dir, fresh_process=False)
    assert result.latency_s is None
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("TVM Relax import failed") and "bessel_j0" in result.error


def test_invalid_target_is_an_error_record(work_dir: Path) -> None:
    result = measure(TinyNet(), _inputs(), work_dir=work_dir,
                     tvm_target={"kind": "no-such-kind"})
    assert result.latency_s is None
    assert result.error is not None and "\n" not in result.error
    assert "no-such-kind" in result.error and "invalid tvm_target" in result.error


def test_foreign_architecture_is_an_error_record(work_dir: Path) -> None:
    result = measure(TinyNet(), _inputs(), work_dir=work_dir,
                     tvm_target={"kind": "llvm", "mtriple": "riscv64-linux-gnu"})
    assert result.latency_s is None
    assert result.error is not None and "rpc=" in result.error


def test_invalid_arguments_raise(work_dir: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        measure(TinyNet(), _inputs(), work_dir=work_dir, mode="fast")
    with pytest.raises(ValueError, match="samples"):
        measure(TinyNet(), _inputs(), work_dir=work_dir, samples=0)


def test_worker_timeout_is_an_error_record(tmp_path: Path) -> None:
    result = measure(TinyNet(), _inputs(), work_dir=tmp_path, timeout_s=1)
    assert result.latency_s is None
    assert result.error is not None and "timed out" in result.error


# ---------------------------------------------------------------- library export


def _elf_machine(path: Path) -> int:
    """e_machine of an ELF file (little-endian), asserting the magic."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", header[:4]
    assert header[5] == 1  # little-endian
    return int.from_bytes(header[18:20], "little")


@pytest.mark.slow
def test_build_library_host(tmp_path: Path) -> None:
    import numpy as np
    import tvm
    from tvm import relax

    from targets.tvm._import import flatten_outputs

    torch.manual_seed(0)
    model = TinyNet().eval()
    out = build_library(model, _inputs(), out_path=tmp_path / "tiny.so", work_dir=tmp_path)
    assert out.exists()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out)), tvm.cpu())
    (got,) = flatten_outputs(vm["main"](tvm.runtime.tensor(_inputs()[0].numpy())))
    with torch.no_grad():
        want = model(*_inputs()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_build_library_aarch64_is_an_aarch64_elf(tmp_path: Path) -> None:
    why = cross_c_missing("aarch64-linux-gnu-gcc")
    if why:
        pytest.skip(why)
    out = build_library(TinyNet(), _inputs(), out_path=tmp_path / "tiny_aarch64.so",
                        work_dir=tmp_path,
                        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                        cross_compiler="aarch64-linux-gnu-gcc")
    EM_AARCH64 = 183
    assert _elf_machine(out) == EM_AARCH64


# ---------------------------------------------------------------- RPC on loopback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _wait_for_key(tracker_port: int, key: str, timeout_s: float) -> None:
    """Wait until a server has registered ``key`` with the tracker."""
    from tvm import rpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tracker = rpc.connect_tracker("127.0.0.1", tracker_port)
        try:
            servers = tracker.summary().get("server_info", [])
        finally:
            tracker.close()
        if any(str(info.get("key", "")).endswith(f":{key}") for info in servers):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no RPC server registered key {key!r} within {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End ``proc`` and its process group: TVM's tracker and server run their loops in a
    PopenWorker child that outlives a terminated parent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # whatever ignored SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rpc_tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A loopback RPC tracker with one server registered under key ``host``; yields the
    tracker port. Both processes are terminated at teardown."""
    logs = tmp_path_factory.mktemp("rpc_logs")
    tracker_port, server_port = _free_port(), _free_port()
    tracker = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
         "--port", str(tracker_port), "--port-end", str(tracker_port + 1)],
        stdout=open(logs / "tracker.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    server = None
    try:
        _wait_for_port(tracker_port, 30)
        server = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
             "--port", str(server_port), "--port-end", str(server_port + 1),
             "--tracker", f"127.0.0.1:{tracker_port}", "--key", "host"],
            stdout=open(logs / "server.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        _wait_for_key(tracker_port, "host", 60)
        yield tracker_port
    finally:
        if server is not None:
            _stop(server)
        _stop(tracker)


@pytest.mark.slow
def test_rpc_loopback_agrees_with_local(work_dir: Path, first: tuple[MeasureResult, float],
                                        rpc_tracker: int) -> None:
    local, _ = first
    cfg = RPCConfig("127.0.0.1", rpc_tracker, key="host", tracker=True, timeout_s=30)
    torch.manual_seed(0)
    remote = measure(TinyNet(), _inputs(), work_dir=work_dir, evaluator=FAST, rpc=cfg)
    assert remote.error is None, remote.error
    assert remote.backend == "tvm-rpc" and "127.0.0.1" in remote.device
    assert remote.latency_s is not None and remote.latency_s > 0
    assert remote.max_abs_err is not None and remote.max_abs_err < 1e-4
    assert len(remote.layers) == 3
    # Generous: the machine is shared and noisy; NOTES saw agreement within 10 %.
    assert 0.2 < remote.latency_s / local.latency_s < 5, (remote.latency_s, local.latency_s)


def test_rpc_unreachable_is_an_error_record(work_dir: Path) -> None:
    cfg = RPCConfig("127.0.0.1", _free_port(), timeout_s=5)
    start = time.perf_counter()
    result = measure(TinyNet(), _inputs(), work_dir=work_dir, rpc=cfg)
    assert time.perf_counter() - start < 5 + 10  # the timeout plus export and imports
    assert result.latency_s is None and result.backend == "tvm-rpc"
    assert result.error is not None and "cannot connect" in result.error


@pytest.mark.slow
def test_rpc_unknown_key_is_an_error_record(work_dir: Path, rpc_tracker: int) -> None:
    cfg = RPCConfig("127.0.0.1", rpc_tracker, key="no-such-board", tracker=True, timeout_s=10)
    result = measure(TinyNet(), _inputs(), work_dir=work_dir, rpc=cfg)
    assert result.latency_s is None
    assert result.error is not None and "no-such-board" in result.error


# ---------------------------------------------------------------- tuned mode


class OneLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(256, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.slow
def test_tuned_mode_small_budget_beats_untuned(tmp_path: Path) -> None:
    """8 MetaSchedule trials on one Linear; the applied schedules must beat TVM's default
    (untuned) code, and a second tuned measure must not tune again."""
    from targets.tvm._compile import compile_model, make_target
    from targets.tvm._import import export_model, import_exported
    from targets.tvm._timing import LocalDevice, time_model

    torch.manual_seed(0)
    model, inputs = OneLinear(), (torch.randn(1, 256),)
    tuned = measure(model, inputs, mode="tuned", trials=8, work_dir=tmp_path, evaluator=FAST)
    assert tuned.error is None, tuned.error
    assert tuned.mode == "tuned" and tuned.tune_s > 0
    assert tuned.max_abs_err is not None and tuned.max_abs_err < 1e-4
    assert any("tuned 1 kernel(s) with 8 trials" in note for note in tuned.notes), tuned.notes
    assert workload_count(tmp_path) == 1

    target = make_target(default_target())
    untuned = compile_model(import_exported(export_model(model, inputs)), target, None)
    assert untuned.unscheduled  # TVM's default code: the baseline, never reported by measure
    stats, _ = time_model(untuned.executable, LocalDevice("host"), [inputs[0].numpy()], FAST)
    assert tuned.latency_s < stats.median_s, (tuned.latency_s, stats.median_s)

    again = measure(model, inputs, mode="tuned", trials=8, work_dir=tmp_path, evaluator=FAST,
                    per_layer=False)
    assert again.error is None, again.error
    assert workload_count(tmp_path) == 1
    assert not any("tuned" in note for note in again.notes), again.notes
