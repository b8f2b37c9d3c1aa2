"""Contract suite of the per-plan measuring backends (``targets.measure``): every registered
backend runs the same assertions through a parametrised fixture, as optuna's
``optuna/testing/pytest_storages.py`` does for storages.

A backend added with ``targets.measure.register`` needs a target in :func:`_target_for` (the suite
fails until it has one). A backend whose toolchain is missing skips with its install command
(a failure under ``CI=true``, see ``tests/conftest.py``); the ``tvm-rpc`` case measures against a
port where nothing listens: an unreachable device must come back as a quick error result.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from hwsearch.core.errors import SpecError
from targets import measure
from targets.measure import RECORD_KEYS, MeasureResult
from targets.spec import get_target

BACKENDS = measure.names()
#: the keys of an error record as hwsearch.measure.measure_model wrote them before the registry
ERROR_RECORD_KEYS = ["latency_s", "latency_iqr_s", "repeats", "mode", "backend", "device", "versions", "layers",
                     "layer_s", "date", "error"]


class TinyNet(nn.Module):
    """conv1d → relu → linear on a (1, 1, 16) signal: two prunable layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Broken(nn.Module):
    """Has none of the tiny model's layers and fails in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _target_for(name: str) -> tuple[Any, bool]:
    """A target that ``name`` measures, and whether the tiny model must measure without error."""
    if name == "tvm-local":
        return get_target("host-x86"), True
    if name == "tvm-rpc":  # nothing listens on the port: an error record, quickly
        host = get_target("host-x86")
        rpc = {"backend": "tvm-rpc", "rpc_host": "127.0.0.1", "rpc_port": _free_port(), "rpc_tracker": False,
               "rpc_timeout_s": 2}
        return dataclasses.replace(host, measure={**host.measure, **rpc}), False
    if name == "mcu-qemu":
        return get_target("cortex-m4"), True
    pytest.fail(f"measuring backend {name!r} has no target in {__file__}::_target_for; add one")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, nn.Module, Any]:
    """(graph, folded model, resolved plan) of TinyNet with a 50 % unstructured conv and a dense
    head, folded."""
    from hwsearch import prune
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.graph import analyze

    torch.manual_seed(0)
    graph = analyze(TinyNet().eval(), torch.randn(1, 1, 16))
    dec = prune.decide(graph, Plan({"conv": LayerChoice("unstructured", 0.5)}))
    return graph, prune.apply(graph, dec, mode="fold"), dec.resolved


@pytest.fixture(scope="module", params=BACKENDS)
def measured(request: pytest.FixtureRequest, tiny, tmp_path_factory) -> tuple[str, MeasureResult, float, bool]:
    """Each backend measures the tiny model once: (name, result, seconds, must succeed)."""
    name = request.param
    backend = measure.get(name)
    target, expect_ok = _target_for(name)
    missing = backend.available()
    if expect_ok and missing is not None:
        pytest.skip(missing)
    graph, folded, resolved = tiny
    t0 = time.perf_counter()
    res = backend.measure(target, graph, folded, work_dir=tmp_path_factory.mktemp(name), resolved=resolved,
                          samples=1, repeats=2, min_repeat_ms=1)
    return name, res, time.perf_counter() - t0, expect_ok


def test_registry_finds_every_name_and_lists_them_for_a_wrong_one() -> None:
    assert {"tvm-local", "tvm-rpc", "mcu-qemu"} <= set(BACKENDS)
    for name in BACKENDS:
        backend = measure.get(name)
        assert isinstance(backend, measure.MeasureBackend) and backend.name == name and backend.runtime
    with pytest.raises(SpecError, match="unknown measuring backend 'nope'; valid: ") as err:
        measure.get("nope")
    assert all(name in str(err.value) for name in BACKENDS)
    with pytest.raises(ValueError, match="already registered"):
        measure.register("tvm-local", lambda: measure.get("mcu-qemu"))


@pytest.mark.parametrize("name", BACKENDS)
def test_available_is_none_or_names_an_install_command(name: str) -> None:
    why = measure.get(name).available()
    assert why is None or (isinstance(why, str) and ("pip install" in why or "apt-get install" in why)), why


@pytest.mark.slow
def test_a_tiny_folded_model_gives_a_latency_or_an_error(measured, tiny) -> None:
    name, res, seconds, expect_ok = measured
    graph = tiny[0]
    assert isinstance(res, MeasureResult) and res.backend == name
    assert (res.error is None and res.latency_s > 0) or (res.error and res.latency_s is None), res
    if not expect_ok:  # tvm-rpc without a server: an unreachable device is a record, and a quick one
        assert res.error and "127.0.0.1" in res.error and seconds < 30, (res.error, seconds)
        return
    assert res.ok, res.error
    assert res.repeats >= 1 and res.mode and res.device and res.date
    assert res.runtime_version, f"versions lack {res.runtime!r}: {res.versions}"
    assert set(res.layer_s) == set(graph.table.index) and all(v > 0 for v in res.layer_s.values())


@pytest.mark.slow
def test_to_dict_round_trips_the_record_fields(measured) -> None:
    _, res, _, _ = measured
    rec = res.to_dict()
    assert list(rec)[0] == "latency_s" and set(RECORD_KEYS) <= set(rec)
    back = MeasureResult.from_dict(json.loads(json.dumps(rec)), runtime=res.runtime)
    for key in ("latency_s", "error", "backend", "mode", "versions", "date", "device", "repeats", "layer_s"):
        assert getattr(back, key) == getattr(res, key), key
    assert back.spread == res.spread and back.details.keys() == res.details.keys()
    assert back.to_dict() == json.loads(json.dumps(rec))


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_a_model_that_fails_is_an_error_result(name: str, tiny, tmp_path: Path) -> None:
    target, _ = _target_for(name)
    graph, _, resolved = tiny
    res = measure.get(name).measure(target, graph, Broken(), work_dir=tmp_path, resolved=resolved,
                                    samples=1, repeats=2, min_repeat_ms=1)
    assert isinstance(res, MeasureResult) and res.error and res.latency_s is None and not res.ok
    assert res.to_dict()["error"] == res.error


def test_measure_model_gives_an_error_record_for_a_backend_it_does_not_have(tiny, tmp_path: Path) -> None:
    from hwsearch.measure import measure_model

    graph, folded, _ = tiny
    rec = measure_model(get_target("nvidia-a100"), graph, folded, work_dir=tmp_path)
    assert list(rec) == ERROR_RECORD_KEYS
    assert rec["backend"] == "cuda-2of4" and rec["latency_s"] is None
    assert "cannot run on this machine" in rec["error"]


def test_measure_result_refuses_unknown_spread_and_shadowing_details() -> None:
    kw: dict[str, Any] = {"latency_s": 1e-3, "mode": "quick", "backend": "x", "device": "d", "versions": {},
                          "date": "2026-01-01T00:00:00+00:00"}
    assert list(MeasureResult(**kw).to_dict()) == ERROR_RECORD_KEYS
    with pytest.raises(ValueError, match="unknown keys"):
        MeasureResult(**kw, spread={"latency_std_s": 1.0})
    with pytest.raises(ValueError, match="record keys"):
        MeasureResult(**kw, details={"error": "shadowed"})
