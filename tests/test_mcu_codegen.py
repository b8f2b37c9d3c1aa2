"""C export: the tree compiles with arm-none-eabi-gcc and model_run matches the host reference."""
from __future__ import annotations

import json

import numpy as np
import pytest

from targets import mcu
from targets.mcu import prune_to_format
from targets.mcu.codegen import ExportLayer, build, export_c

NO_TOOLS = mcu.available()
needs_emulator = pytest.mark.skipif(NO_TOOLS is not None, reason=NO_TOOLS or "")


def _model(rng: np.random.Generator) -> list[ExportLayer]:
    def r(*s):
        return rng.standard_normal(s).astype(np.float32) * 0.3
    return [
        ExportLayer("conv2d", prune_to_format("conv2d", r(16, 4, 3, 3), "block", 0.5), r(16), fmt="block",
                    padding=1, relu=True),
        ExportLayer("dwconv2d", prune_to_format("dwconv2d", r(16, 1, 3, 3), "csr", 0.6), r(16), fmt="csr",
                    padding=1, stride=2, relu=True),
        ExportLayer("conv2d", prune_to_format("conv2d", r(24, 16, 1, 1), "nm", 0.5), None, fmt="nm", relu=True),
        ExportLayer("linear", prune_to_format("linear", r(10, 24 * 16), "bitmask", 0.3), r(10), fmt="bitmask"),
    ]


def test_export_writes_the_tree(tmp_path) -> None:
    rng = np.random.default_rng(0)
    exp = export_c(_model(rng), rng.standard_normal((4, 8, 8)), tmp_path / "c", dtype="int8")
    names = {p.name for p in exp.files}
    assert {"model.h", "model.c", "weights.c", "weights.h", "hw_kernels.h", "hw_kernels_s8.c",
            "manifest.json"} <= names
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [lay["fmt"] for lay in man["layers"]] == ["block", "csr", "nm", "bitmask"]
    assert man["weight_bytes"] == sum(lay["weight_bytes"] for lay in man["layers"])
    # ping-pong plan: two buffers of the largest activation (16 x 8 x 8 after the first conv)
    assert man["activation_buffer_elems"] == 16 * 8 * 8
    assert "int model_run(" in (tmp_path / "c" / "model.h").read_text()


def test_export_rejects_bad_input(tmp_path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="valid: dense"):
        export_c([ExportLayer("linear", rng.standard_normal((4, 8)), fmt="coo")], rng.standard_normal(8), tmp_path)
    with pytest.raises(ValueError, match="after a linear"):
        export_c([ExportLayer("linear", rng.standard_normal((16, 8))),
                  ExportLayer("conv1d", rng.standard_normal((4, 4, 3)))], rng.standard_normal(8), tmp_path)


@needs_emulator
@pytest.mark.slow
@pytest.mark.parametrize("dtype,cpu", [("int8", "cortex-m4"), ("fp32", "cortex-m7")])
def test_export_compiles_and_runs(tmp_path, dtype: str, cpu: str) -> None:
    rng = np.random.default_rng(1)
    exp = export_c(_model(rng), rng.standard_normal((4, 8, 8)), tmp_path / dtype, dtype=dtype)
    res = build(exp.out_dir, cpu, run=True)
    assert res.ok, res.error
    assert res.instructions and res.instructions > 10_000
    if dtype == "int8":
        assert res.max_abs_err == 0.0
    assert res.text_bytes and res.text_bytes > res.weight_bytes
    only = build(exp.out_dir, cpu)  # compile only
    assert only.ok and only.instructions is None


@needs_emulator
def test_build_of_a_broken_tree_is_an_error(tmp_path) -> None:
    rng = np.random.default_rng(2)
    exp = export_c([ExportLayer("linear", rng.standard_normal((4, 8)))], rng.standard_normal(8), tmp_path)
    (exp.out_dir / "model.c").write_text("int model_run(void) { return }\n")
    res = build(exp.out_dir)
    assert not res.ok and "build failed" in (res.error or "")


def _seq_model():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU()),
                      nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 6 * 6, 10)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 1.5)
        m[6].weight[:, ::3] = 0  # pruned columns
    return m, torch.randn(1, 3, 6, 6)


def test_layers_from_sequential_match_torch(tmp_path) -> None:
    import torch

    from targets.mcu.codegen import layers_from_sequential

    m, x = _seq_model()
    layers = layers_from_sequential(m, formats={2: "csr"})
    assert [(lay.op, lay.relu) for lay in layers] == [("conv2d", True), ("dwconv2d", True), ("linear", False)]
    exp = export_c(layers, x[0].numpy(), tmp_path / "seq", dtype="fp32")
    assert [lay["fmt"] for lay in exp.manifest["layers"]] == ["dense", "dense", "csr"]
    ref = np.load(tmp_path / "seq" / "test" / "reference_output.npy")
    with torch.no_grad():
        assert np.allclose(ref, m(x).numpy()[0], atol=1e-5)  # BN folded, flatten order kept


def test_unsupported_module_is_named() -> None:
    import torch.nn as nn

    from targets.mcu.codegen import layers_from_sequential

    with pytest.raises(ValueError, match="MaxPool2d is not exportable"):
        layers_from_sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)))


@needs_emulator
@pytest.mark.slow
def test_sequential_int8_export_runs(tmp_path) -> None:
    from targets.mcu.codegen import layers_from_sequential

    m, x = _seq_model()
    exp = export_c(layers_from_sequential(m), x[0].numpy(), tmp_path / "q", dtype="int8")
    res = build(exp.out_dir, "cortex-m4", run=True)
    assert res.ok and res.max_abs_err == 0.0, res.error
