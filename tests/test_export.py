"""Export bundles: every artefact reloads and matches the masked model; cross builds are ELF
of the device's machine; the plan pick follows the accuracy rule."""
from __future__ import annotations

import json

import pytest

from hwsearch import exporting
from hwsearch.core import records
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from targets.spec import get_target
from targets.toolchains import cross_c_missing

pytestmark = pytest.mark.slow


@pytest.fixture
def graph(resdw):
    model, x = resdw
    return analyze(model, x)


PLAN = Plan({"c1": LayerChoice("channel", 0.5), "fc": LayerChoice("unstructured", 0.5)})


def test_host_bundle_verifies(graph, tmp_path):
    m = exporting.bundle(graph, PLAN, get_target("host-x86"), tmp_path / "b", channel_multiple=4)
    assert "error" not in m["artifacts"], m["artifacts"]
    assert m["schema_version"] == 1 and m["plan"] == PLAN.to_dict()
    assert m["artifacts"]["fold_vs_mask_max_abs_err"] < 1e-5
    res = exporting.verify(tmp_path / "b")
    assert set(res) == {"pytorch", "onnx", "tvm_library"}
    assert all(v.startswith("ok (max abs err") for v in res.values()), res
    # outputs that do not match are caught
    import numpy as np
    np.save(tmp_path / "b" / "reference_output.npy", np.load(tmp_path / "b" / "reference_output.npy") + 1.0)
    assert all(v.startswith("FAILED") for v in exporting.verify(tmp_path / "b").values())


def test_aarch64_bundle_is_an_aarch64_shared_object(graph, tmp_path):
    why = cross_c_missing("aarch64-linux-gnu-gcc")
    if why:
        pytest.skip(why)
    m = exporting.bundle(graph, PLAN, get_target("cortex-a76"), tmp_path / "b", channel_multiple=4)
    assert "error" not in m["artifacts"], m["artifacts"]
    head = (tmp_path / "b" / m["artifacts"]["tvm_library"]).read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 0xB7  # EM_AARCH64
    assert head[16] == 3  # ET_DYN: a shared object
    assert exporting.verify(tmp_path / "b")["tvm_library"].startswith("ok (built only: AArch64")


def test_pick_plan_rule(tmp_path):
    d = tmp_path
    base = {"target": "host-x86@1", "backend": "tvm-local", "mode": "quick", "predicted_latency_s": 1.0,
            "versions": {}, "date": "x", "error": None}
    for key, plan, acc, lat in [("dense", {}, 0.90, 10e-6), ("a", {"x": 1}, 0.895, 6e-6), ("b", {"y": 1}, 0.80, 3e-6),
                                ("c", {"z": 1}, 0.899, 8e-6)]:
        records.append(d / "measurements.jsonl", dict(base, plan_key=Plan().key if key == "dense" else key,
                                                      plan=plan, accuracy=acc, latency_s=lat))
    assert exporting.pick_plan(d, max_drop=0.01)["plan_key"] == "a"      # fastest within 1 point of dense
    assert exporting.pick_plan(d, max_drop=0.2)["plan_key"] == "b"
    assert exporting.pick_plan(d, plan_key="c")["plan_key"] == "c"
    with pytest.raises(Exception, match="was not measured"):
        exporting.pick_plan(d, plan_key="nope")


def test_mcu_bundle_builds_and_runs_in_the_emulator(tmp_path):
    import targets.mcu as mcu
    from hwsearch.zoo import mnist1d_cnn_small

    why = mcu.available()
    if why:
        pytest.skip(why)
    model, x = mnist1d_cnn_small()
    g = analyze(model, x)
    plan = Plan({"pw": LayerChoice("channel", 0.5), "res1": LayerChoice("unstructured", 0.6)})
    m = exporting.bundle(g, plan, get_target("cortex-m7"), tmp_path / "b")
    assert "error" not in m["artifacts"], m["artifacts"]
    assert m["predicted"]["instructions"] > 0 and m["predicted"]["flash_bytes"] > 0 and m["predicted"]["sram_bytes"] > 0
    assert (tmp_path / "b" / "mcu_c" / "model.c").exists()
    res = exporting.verify(tmp_path / "b")
    assert res["mcu_c"].startswith("ok (arm-none-eabi-gcc build ran in QEMU cortex-m7"), res


def test_onnxruntime_bundle_ships_what_was_measured(graph, tmp_path):
    """A plan searched in ONNX Runtime ships as model.onnx (no TVM library), with the runtime
    and its version in the manifest; verify runs it in ONNX Runtime and times it against the
    dense model in one interleaved sitting."""
    m = exporting.bundle(graph, PLAN, get_target("host-x86+onnxruntime"), tmp_path / "b", channel_multiple=4)
    assert "error" not in m["artifacts"], m["artifacts"]
    assert m["runtime"] == "onnxruntime" and m["runtime_version"] and m["shipped_artifact"] == "model.onnx"
    assert "tvm_library" not in m["artifacts"] and (tmp_path / "b" / "dense.onnx").exists()
    assert "InferenceSession" in (tmp_path / "b" / "run_onnxruntime.py").read_text()
    res = exporting.verify(tmp_path / "b", passes=1)
    assert res["onnxruntime"].startswith("ok"), res
    assert res["latency"].startswith("ok: shipped") and "vs dense" in res["latency"], res
